"""Train steps, loops, checkpoints and logging shared by every trained model."""
