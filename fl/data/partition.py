"""Partitioners: split a labelled dataset's indices over clients.

Pure functions: labels and a seed in, one index tensor per client out. Every rank
computes the same partition from the same seed, so no data or indices cross ranks.

The ``partition`` group builds one of the classes below from its ``_target_`` (or your own).
The contract: a class is constructed with the group's keys (``label_groups`` excepted: it is
fl's) and checks them there, so a bad value is refused before any work (a function gets them
as keyword arguments with each call). It is then called as
``partitioner(labels, num_clients, seed)`` with the training labels (``[N]``, on the CPU),
and returns ``num_clients`` int64 index tensors into ``0..N-1``, disjoint (fl checks this).
``uses_labels = False`` declares that it ignores the labels, so it also splits regression
targets; a partitioner without the attribute is taken to read class labels.

    train.py partition._target_=my_lab.splits.BySite +partition.column=3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from fl.errors import ConfigError


def iid(num_samples: int, num_clients: int, seed: int) -> list[torch.Tensor]:
    """Uniformly random, near-equal split (sizes differ by at most one)."""
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return [p.clone() for p in torch.tensor_split(perm, num_clients)]


def dirichlet(
    labels: torch.Tensor, num_clients: int, alpha: float, seed: int, min_samples: int = 2, max_tries: int = 1000
) -> list[torch.Tensor]:
    """Label skew: each class is split over clients by proportions drawn from Dir(alpha).

    Small ``alpha`` gives few classes per client; large ``alpha`` approaches IID. Draws
    are repeated (deterministically) until every client has ``min_samples`` samples, the
    usual practice (e.g. Hsu et al. 2019; NIID-Bench).
    """
    rng = np.random.default_rng(seed)
    y = labels.cpu().numpy()
    classes = np.unique(y)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props) * len(idx)).astype(np.int64)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        sizes = [sum(len(c) for c in p) for p in parts]
        if min(sizes) >= min_samples:
            return [torch.from_numpy(np.sort(np.concatenate(p))).long() for p in parts]
    raise ConfigError(
        "partition.alpha", alpha,
        f"no Dirichlet draw in {max_tries} tries gave every one of {num_clients} clients {min_samples} samples; "
        "raise alpha or lower fl.num_clients",
    )


def shards(labels: torch.Tensor, num_clients: int, shards_per_client: int, seed: int) -> list[torch.Tensor]:
    """McMahan et al. 2017's pathological non-IID split.

    Sort by label, cut into ``num_clients * shards_per_client`` equal shards, give each
    client ``shards_per_client`` random shards (so about that many classes each).
    """
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise ConfigError(
            "partition.shards_per_client", shards_per_client,
            f"fl.num_clients * shards_per_client = {num_shards} exceeds the {len(labels)} training samples",
        )
    order = torch.sort(labels.cpu(), stable=True).indices
    pieces = torch.tensor_split(order, num_shards)
    assignment = torch.randperm(num_shards, generator=torch.Generator().manual_seed(seed))
    return [
        torch.sort(torch.cat([pieces[s] for s in assignment[c * shards_per_client:(c + 1) * shards_per_client]])).values
        for c in range(num_clients)
    ]


@dataclass(frozen=True)
class IID:
    """Uniformly random, near-equal split (``partition=iid``)."""

    uses_labels: ClassVar[bool] = False

    def __call__(self, labels: torch.Tensor, num_clients: int, seed: int) -> list[torch.Tensor]:
        return iid(len(labels), num_clients, seed)


@dataclass(frozen=True)
class Dirichlet:
    """Label skew by Dir(``alpha``) proportions per class (``partition=dirichlet``)."""

    alpha: float = 0.5
    min_samples: int = 2
    uses_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ConfigError("partition.alpha", self.alpha, "must be a number > 0")
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) or self.min_samples < 1:
            raise ConfigError("partition.min_samples", self.min_samples, "must be an integer >= 1")

    def __call__(self, labels: torch.Tensor, num_clients: int, seed: int) -> list[torch.Tensor]:
        return dirichlet(labels, num_clients, float(self.alpha), seed, self.min_samples)


@dataclass(frozen=True)
class Shards:
    """McMahan et al. 2017's pathological split into label-sorted shards (``partition=shards``)."""

    shards_per_client: int = 2
    uses_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.shards_per_client, bool) or not isinstance(self.shards_per_client, int) \
                or self.shards_per_client < 1:
            raise ConfigError("partition.shards_per_client", self.shards_per_client, "must be an integer >= 1")

    def __call__(self, labels: torch.Tensor, num_clients: int, seed: int) -> list[torch.Tensor]:
        return shards(labels, num_clients, self.shards_per_client, seed)


def check_parts(parts: object, num_clients: int, num_samples: int, target: str) -> list[torch.Tensor]:
    """A partitioner's result, checked against the contract (ConfigError naming ``partition._target_``)."""
    def refuse(why: str) -> ConfigError:
        return ConfigError("partition._target_", target, why)

    if not isinstance(parts, (list, tuple)) or len(parts) != num_clients:
        raise refuse(f"must return a list of fl.num_clients={num_clients} index tensors, not "
                     f"{len(parts) if isinstance(parts, (list, tuple)) else type(parts).__name__}")
    out = [torch.as_tensor(p).long().reshape(-1) for p in parts]
    joined = torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)
    if len(joined) and (int(joined.min()) < 0 or int(joined.max()) >= num_samples):
        raise refuse(f"returned indices outside 0..{num_samples - 1}")
    if len(torch.unique(joined)) != len(joined):
        raise refuse("returned a sample for more than one client: the clients' indices must be disjoint")
    return out


def holdout_split(indices: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split one client's indices into (train, held-out) by seed; held-out is non-empty when
    ``fraction > 0`` and the client has at least two samples."""
    n = len(indices)
    n_hold = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_hold = min(max(n_hold, 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return indices[perm[n_hold:]], indices[perm[:n_hold]]
