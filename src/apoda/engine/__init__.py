"""The training loop and what it leans on: checkpoints, data parallelism, logs."""
