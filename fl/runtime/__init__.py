"""The distributed runtime: torchrun environment, communicator, signals, random streams."""
