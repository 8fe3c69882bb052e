"""The engine: round loop, checkpoints, evaluation, metrics, run directories."""
