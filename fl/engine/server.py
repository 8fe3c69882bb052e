"""The server step of a round, the same whatever transport combined the updates.

A transport hands over the combined aggregate and the round's :class:`Counters`. The step
skips the round when it failed or fewer than ``min_clients`` updates arrived (the global model
and the server state stay unchanged), otherwise adapts the DP clip norm (adaptive clipping) and
applies ``strategy.server_update``; it returns the round's :class:`~fl.types.RoundResult`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl.privacy.dp_fedavg import DPFedAvg
from fl.strategies.base import Strategy
from fl.transport.counters import Counters
from fl.types import RoundResult


@dataclass(frozen=True)
class Combined:
    """What a transport produces: the aggregate (identical on every rank), the summed counters,
    the bytes that entered collectives, whether the round ``failed`` (secure aggregation could not
    remove a mask) and, under adaptive DP clipping, the noised unclipped fraction."""

    aggregate: torch.Tensor
    counters: Counters
    nbytes: int
    failed: bool = False
    unclipped_fraction: float | None = None


def server_step(strategy: Strategy, privacy: DPFedAvg | None, min_clients: int, round_idx: int,
                global_flat: torch.Tensor, combined: Combined) -> RoundResult:
    """The new global model and the round's result (identical on every rank)."""
    c = combined.counters
    clients = int(round(c.clients))
    skipped = combined.failed or clients < max(1, min_clients)
    if not skipped and privacy is not None and combined.unclipped_fraction is not None:
        privacy.adapt(combined.unclipped_fraction)
    new_global = global_flat if skipped else strategy.server_update(global_flat, combined.aggregate.to(global_flat))
    return RoundResult(round_idx, new_global, clients, int(round(c.weight)),
                       c.loss_sum / c.seen if c.seen else float("nan"), combined.nbytes,
                       rejected=int(round(c.rejected)), dropped=int(round(c.dropped)), late=int(round(c.late)),
                       skipped=skipped, uplink_bytes=int(round(c.uplink_bytes)), stop=c.stop > 0)
