"""Frozen records passed between the stages of a round."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class ClientUpdate:
    """What one client's local training produced.

    ``delta`` is ``local_weights - global_weights`` as a flat tensor (length = the flat
    model). ``num_samples`` is the client's training-set size (the FedAvg weight);
    ``loss_sum`` / ``num_seen`` give the mean training loss over its local steps.
    """

    client_id: int
    delta: torch.Tensor
    num_samples: int
    loss_sum: torch.Tensor
    num_seen: int
    num_steps: int
    extra: torch.Tensor | None = None  # a strategy's additional payload (e.g. SCAFFOLD's control delta)


@dataclass(frozen=True)
class LocalTraining:
    """Local work per client: ``epochs`` passes, or exactly ``steps`` mini-batches when set."""

    epochs: int
    steps: int | None
    batch_size: int


@dataclass(frozen=True)
class ClientTask:
    """One client's job in one round: who, when, how much local work, with which optimizer.

    ``seed`` is the run seed; the client's random streams derive from (seed, round, client).
    """

    client_id: int
    round_idx: int
    seed: int
    plan: LocalTraining
    make_optimizer: OptimizerFactory
    store: Any = None  # fl.training.store.ClientStore: per-client state across rounds
    dp: Any = None  # fl.privacy.dp_sgd.LocalDP: DP-SGD local training (privacy=dp_sgd_local)
    augment: Any = None  # fl.data.augment.Augment: random crops and flips of training batches
    objective: str = "classification"  # or "regression": the loss (fl.training.objective)


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may check before any work (see ``Strategy.check``)."""

    num_clients: int
    clients_per_round: int
    make_optimizer: OptimizerFactory
    seed: int = 0


@dataclass(frozen=True)
class RoundResult:
    """The outcome of aggregation, identical on every rank.

    ``num_clients`` counts the updates aggregated; ``rejected`` the non-finite ones refused,
    ``dropped`` the sampled clients that failed, ``late`` those that missed the round
    deadline. ``skipped``: too few updates arrived, so the global model is unchanged.
    """

    round: int
    new_global: torch.Tensor
    num_clients: int
    num_samples: int
    train_loss: float
    collective_bytes: int  # what entered the ranks' collectives (all-reduce, gather, broadcast)
    rejected: int = 0
    dropped: int = 0
    late: int = 0
    skipped: bool = False
    uplink_bytes: int = 0    # the clients' messages, exactly as serialized (fl.compression.uplink)
    downlink_bytes: int = 0  # what the round's clients received from the server (fl.compression.downlink)
    stop: bool = False  # some rank was asked to stop (SIGTERM): checkpoint and leave after this round
