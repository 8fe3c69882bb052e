"""Aggregation strategies, chosen with ``strategy=NAME``."""

from fl.strategies.base import Strategy
from fl.strategies.fedavg import FedAvg

__all__ = ["Strategy", "FedAvg"]
