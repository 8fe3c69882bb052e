"""Malicious clients, to test defenses against (``attack=NAME``, or ``attack._target_`` of your own).

A fixed set of clients, ``round(fraction * num_clients)`` of them drawn from the run seed,
is malicious for the whole run. Model poisoning replaces what such a client sends after
honest local training; data poisoning changes what it trains on:

* ``sign_flip``: sends ``-factor * delta`` (Damaskinos et al. 2018; Li et al. 2019, RSA);
* ``scale``: sends ``factor * delta``, a boosted update (Bhagoji et al. 2019);
* ``gaussian``: sends ``N(0, std^2)`` noise instead of an update (Blanchard et al. 2017);
* ``label_flip``: trains on labels ``y -> C - 1 - y`` (Tolpegin et al. 2020);
* ``nan_update``: sends an update full of NaN, as a crashed or buggy client would.

The transforms are pure functions on tensors; each attack class (built from the ``attack``
group, see :class:`NoAttack` for the contract) names one, and :class:`Adversary` applies it to
the malicious clients only. Evaluation always uses the clients' true labels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from fl.data.federation import ClientShard
from fl.errors import ConfigError
from fl.runtime.seeding import generator
from fl.types import ClientUpdate


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


def _positive(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(key, value, "must be a number > 0")


@dataclass(frozen=True)
class NoAttack:
    """Every client is honest (``attack=none``). The base of the attacks, and their contract:

    an attack is built from the ``attack`` group's keys and checks them there; ``fraction`` of
    the clients (fixed by the seed) are malicious. For them fl calls ``labels(y, num_classes)``
    on the labels they train on (data poisoning) and ``delta(update, g)`` on what they send
    (model poisoning; ``g`` is a generator seeded per (seed, round, client)). ``uses_labels``
    declares that it needs class labels (refused with regression targets).
    """

    fraction: float = 0.0
    uses_labels: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 <= self.fraction < 1:
            raise ConfigError("attack.fraction", self.fraction, "must be a number in [0, 1)")

    @property
    def changes_data(self) -> bool:
        return type(self).labels is not NoAttack.labels

    @property
    def changes_updates(self) -> bool:
        return type(self).delta is not NoAttack.delta

    def labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return y

    def delta(self, delta: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return delta


@dataclass(frozen=True)
class _Scaled(NoAttack):
    """A model-poisoning attack with a multiplier ``factor`` > 0."""

    fraction: float = 0.2
    factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("attack.factor", self.factor)


@dataclass(frozen=True)
class SignFlip(_Scaled):
    """Sends ``-factor * delta`` (``attack=sign_flip``)."""

    def delta(self, delta: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return sign_flip(delta, float(self.factor))


@dataclass(frozen=True)
class Scale(_Scaled):
    """Sends ``factor * delta``, a boosted update (``attack=scale``)."""

    factor: float = 10.0

    def delta(self, delta: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return scale(delta, float(self.factor))


@dataclass(frozen=True)
class Gaussian(NoAttack):
    """Sends ``N(0, std^2)`` noise instead of an update (``attack=gaussian``)."""

    fraction: float = 0.2
    std: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("attack.std", self.std)

    def delta(self, delta: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return gaussian(delta, float(self.std), g)


@dataclass(frozen=True)
class LabelFlip(NoAttack):
    """Trains on labels ``y -> C - 1 - y`` (``attack=label_flip``)."""

    fraction: float = 0.2
    uses_labels: ClassVar[bool] = True

    def labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return flip_labels(y, num_classes)


@dataclass(frozen=True)
class NanUpdate(NoAttack):
    """Sends an update full of NaN, as a crashed or buggy client would (``attack=nan_update``)."""

    fraction: float = 0.2

    def delta(self, delta: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return torch.full_like(delta, float("nan"))


@dataclass(frozen=True)
class Adversary:
    """The run's attack applied to its malicious clients (honest clients pass through unchanged)."""

    attack: NoAttack
    malicious: frozenset[int]
    seed: int
    num_classes: int = 0

    def is_malicious(self, client_id: int) -> bool:
        return client_id in self.malicious

    def training_shard(self, client_id: int, shard: ClientShard) -> ClientShard:
        """The data the client trains on: poisoned labels for a malicious client of a data attack."""
        if not (self.attack.changes_data and self.is_malicious(client_id)):
            return shard
        data = shard.data.with_labels(self.attack.labels(shard.data.y, self.num_classes))
        return dataclasses.replace(shard, data=data)

    def poison(self, update: ClientUpdate, round_idx: int) -> ClientUpdate:
        """What the client sends instead of ``update`` (unchanged for honest clients)."""
        delta = self.poisoned(update.delta, update.client_id, round_idx)
        return update if delta is update.delta else dataclasses.replace(update, delta=delta)

    def poisoned(self, delta: torch.Tensor, client_id: int, round_idx: int) -> torch.Tensor:
        """The model delta client ``client_id`` sends in ``round_idx`` (``delta`` itself when honest);
        the attack's randomness comes from (seed, round, client)."""
        if not (self.attack.changes_updates and self.is_malicious(client_id)):
            return delta
        g = generator(self.seed, "attack", round_idx, client_id, device=delta.device)
        return self.attack.delta(delta, g)
