"""Data defined outside ``fl``, as a user's own package would return it (see fl.data.component)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from fl.attacks import NoAttack


def blobs(n: int = 400, features: int = 6, classes: int = 3, seed: int = 0, as_dataset: bool = False):
    """Gaussian blobs as feature vectors: ((x, y), (x, y)) tensors, or two map-style Datasets."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, features, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, features, generator=g)
    cut = n * 3 // 4
    train, test = (x[:cut], y[:cut]), (x[cut:], y[cut:])
    if as_dataset:
        return TensorDataset(*train), TensorDataset(*test)
    return train, test


def not_data():
    return "nothing useful"


def linear(n: int = 400, features: int = 5, noise: float = 0.1, seed: int = 0):
    """A real-valued target, y = x . w + noise, as ((x, y), (x, y)) float tensors (data.task=regression)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(features, generator=g)
    x = torch.randn(n, features, generator=g)
    y = x @ w + noise * torch.randn(n, generator=g)
    cut = n * 3 // 4
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


class Blocks:
    """A partitioner of one's own: contiguous blocks of the dataset, in order (a site per range);
    client 0 takes the fraction ``first`` of it, the others share the rest equally."""

    uses_labels = False

    def __init__(self, first: float = 0.25) -> None:
        self.first = first

    def __call__(self, labels: torch.Tensor, num_clients: int, seed: int) -> list[torch.Tensor]:
        cut = int(self.first * len(labels))
        rest = torch.tensor_split(torch.arange(cut, len(labels)), num_clients - 1)
        return [torch.arange(cut), *rest]


def overlapping(labels: torch.Tensor, num_clients: int, seed: int) -> list[torch.Tensor]:
    """Breaks the contract: every client gets every sample."""
    return [torch.arange(len(labels)) for _ in range(num_clients)]


class Silent(NoAttack):
    """An attack of one's own: malicious clients send a zero update (they train, then withhold it)."""

    def delta(self, delta: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return torch.zeros_like(delta)
