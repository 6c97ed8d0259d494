"""The training loop and what it leans on: the run's data and loaders, data parallelism, logs.
Checkpoint files are `apoda.checkpoints`; the outputs beside the loop's, `apoda.run_outputs`."""
