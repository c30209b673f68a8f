"""Training: config, train state and step, the loop, checkpoints and logging."""
