"""The federation: which samples each client trains and evaluates on.

A client is a :class:`ClientShard`: a data tensor pair plus index tensors for its
training part and its local held-out part. In simulation all shards index one shared
training tensor; with per-site data (``data=folder``) each shard has its own tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fl.data import partition as P
from fl.data.datasets import TensorData
from fl.data.stream import StreamData
from fl.runtime.seeding import derive_seed


@dataclass(frozen=True)
class ClientShard:
    """One client's data: ``data`` and index tensors into it (on the data's device; a
    :class:`~fl.data.stream.StreamData` keeps labels and indices on the CPU)."""

    data: "TensorData | StreamData"
    train_idx: torch.Tensor
    holdout_idx: torch.Tensor

    @property
    def num_train(self) -> int:
        return int(self.train_idx.numel())

    @property
    def num_holdout(self) -> int:
        return int(self.holdout_idx.numel())


def partition_indices(labels: torch.Tensor, num_clients: int, partitioner: Callable, seed: int,
                      target: str = "partition") -> list[torch.Tensor]:
    """The partitioner's split of ``labels`` (see :mod:`fl.data.partition` for the contract), checked."""
    parts = partitioner(labels.cpu(), num_clients, derive_seed(seed, "partition"))
    return P.check_parts(parts, num_clients, len(labels), target)


def simulated_clients(
    train: TensorData, parts: list[torch.Tensor], holdout_fraction: float, seed: int
) -> list[ClientShard]:
    """Shards over one shared training tensor (already on the training device)."""
    device = train.y.device
    shards = []
    for cid, idx in enumerate(parts):
        tr, ho = P.holdout_split(idx, holdout_fraction, derive_seed(seed, "holdout", cid))
        shards.append(ClientShard(train, tr.to(device), ho.to(device)))
    return shards


def rotate_labels(y: torch.Tensor, group: int, num_groups: int, num_classes: int) -> torch.Tensor:
    """Group ``group``'s labelling: ``(y + group * (num_classes // num_groups)) mod num_classes``.

    Group 0 keeps the true labels; every other group sees every class under another name,
    so groups disagree on every input (a concept shift that no single model can fit).
    """
    return (y + group * (num_classes // num_groups)) % num_classes


def with_label_groups(shards: list[ClientShard], num_groups: int, num_classes: int) -> list[ClientShard]:
    """Client ``c`` joins group ``c % num_groups``; each group trains and evaluates on its own labelling."""
    if num_groups == 1:
        return shards
    base = shards[0].data
    data = [base] + [base.with_labels(rotate_labels(base.y, g, num_groups, num_classes))
                     for g in range(1, num_groups)]
    return [ClientShard(data[c % num_groups], s.train_idx, s.holdout_idx) for c, s in enumerate(shards)]


def site_client(data: TensorData, holdout_fraction: float, seed: int, cid: int) -> ClientShard:
    """A shard over a site's own data (``data=folder``): all of it, split into train/held-out."""
    idx = torch.arange(len(data))
    tr, ho = P.holdout_split(idx, holdout_fraction, derive_seed(seed, "holdout", cid))
    return ClientShard(data, tr.to(data.y.device), ho.to(data.y.device))


def summary(shards: dict[int, ClientShard], num_classes: int, num_groups: int = 1) -> dict:
    """Per-client sample counts and training-label histograms (for ``partition.json``); for a
    regression target (float labels) the target's mean instead of a histogram."""
    clients = {}
    for cid in sorted(shards):
        s = shards[cid]
        y = s.data.y[s.train_idx].cpu()
        clients[str(cid)] = {"num_train": s.num_train, "num_holdout": s.num_holdout}
        if y.is_floating_point():
            clients[str(cid)]["target_mean"] = float(y.double().mean()) if len(y) else None
        else:
            clients[str(cid)]["label_counts"] = torch.bincount(y, minlength=num_classes).tolist()
        if num_groups > 1:
            clients[str(cid)]["label_group"] = cid % num_groups
    sizes = torch.tensor([c["num_train"] for c in clients.values()], dtype=torch.float64)
    return {
        "num_clients": len(clients),
        "num_train_total": int(sizes.sum()),
        "num_train_min": int(sizes.min()),
        "num_train_max": int(sizes.max()),
        "clients": clients,
    }
