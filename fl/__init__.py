"""fl: federated learning on torch.distributed."""

__version__ = "0.1.0"
