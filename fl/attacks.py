"""Malicious clients, to test defenses against (``attack=NAME``).

A fixed set of clients, ``round(fraction * num_clients)`` of them drawn from the run seed,
is malicious for the whole run. Model poisoning replaces what such a client sends after
honest local training; data poisoning changes what it trains on:

* ``sign_flip``: sends ``-factor * delta`` (Damaskinos et al. 2018; Li et al. 2019, RSA);
* ``scale``: sends ``factor * delta``, a boosted update (Bhagoji et al. 2019);
* ``gaussian``: sends ``N(0, std^2)`` noise instead of an update (Blanchard et al. 2017);
* ``label_flip``: trains on labels ``y -> C - 1 - y`` (Tolpegin et al. 2020);
* ``nan_update``: sends an update full of NaN, as a crashed or buggy client would.

The transforms are pure functions on tensors; :class:`Attack` applies them to the
malicious clients only. Evaluation always uses the clients' true labels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from fl.data.federation import ClientShard
from fl.runtime.seeding import generator
from fl.types import ClientUpdate

ATTACKS = ("none", "sign_flip", "scale", "gaussian", "label_flip", "nan_update")


def malicious_clients(seed: int, num_clients: int, fraction: float) -> frozenset[int]:
    """The ``round(fraction * num_clients)`` malicious client ids, fixed by the seed."""
    count = round(fraction * num_clients)
    perm = torch.randperm(num_clients, generator=generator(seed, "malicious"))
    return frozenset(perm[:count].tolist())


def sign_flip(delta: torch.Tensor, factor: float) -> torch.Tensor:
    return delta * -factor


def scale(delta: torch.Tensor, factor: float) -> torch.Tensor:
    return delta * factor


def gaussian(delta: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    return torch.randn(delta.shape, generator=g, device=delta.device, dtype=delta.dtype) * std


def flip_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return num_classes - 1 - y


@dataclass(frozen=True)
class Attack:
    """The run's attack: its kind, parameters and malicious clients."""

    name: str
    malicious: frozenset[int]
    seed: int
    factor: float = 1.0
    std: float = 1.0
    num_classes: int = 0

    def is_malicious(self, client_id: int) -> bool:
        return self.name != "none" and client_id in self.malicious

    def training_shard(self, client_id: int, shard: ClientShard) -> ClientShard:
        """The data the client trains on: flipped labels for a label-flipping client."""
        if self.name != "label_flip" or not self.is_malicious(client_id):
            return shard
        data = shard.data.with_labels(flip_labels(shard.data.y, self.num_classes))
        return dataclasses.replace(shard, data=data)

    def poison(self, update: ClientUpdate, round_idx: int) -> ClientUpdate:
        """What the client sends instead of ``update`` (unchanged for honest clients)."""
        cid = update.client_id
        if not self.is_malicious(cid) or self.name == "label_flip":
            return update
        d = update.delta
        if self.name == "sign_flip":
            d = sign_flip(d, self.factor)
        elif self.name == "scale":
            d = scale(d, self.factor)
        elif self.name == "gaussian":
            d = gaussian(d, self.std, generator(self.seed, "attack", round_idx, cid, device=d.device))
        elif self.name == "nan_update":
            d = torch.full_like(d, float("nan"))
        return dataclasses.replace(update, delta=d)
