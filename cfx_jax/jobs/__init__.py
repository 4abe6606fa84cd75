"""What `python -m train` runs on top of the library: the train-and-evaluate job, the
leaderboard, the causal study, and the classifier and in-painter stages they share."""
