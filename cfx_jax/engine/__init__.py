"""What every trained model shares: device mesh, checkpoints, preemption, logging, one loop."""
