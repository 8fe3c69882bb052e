"""The server step of a round, the same whatever transport combined the updates.

A transport hands over what it combined (the sum of the round's vectors, or on the gather path
the strategy's aggregate of the individual rows) and the round's :class:`Counters`. The step
skips the round when it failed or fewer than ``min_clients`` updates arrived (the global model
and the server state stay unchanged); otherwise it runs the update pipeline's server sides on a
sum, in reverse order (compression's inverse rotation, DP's noise) and divides it (by the summed
weights, or DP's fixed denominator), adapts the DP clip norm (adaptive clipping) and applies
``strategy.server_update``. It returns the round's :class:`~fl.types.RoundResult`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl.strategies.base import Strategy
from fl.transport.counters import Counters
from fl.transport.pipeline import Pipeline
from fl.types import RoundResult


@dataclass(frozen=True)
class Combined:
    """What a transport produces (identical on every rank): ``aggregate``, the weighted *sum* of
    the vectors when ``summed`` (the server step finishes it) or the final aggregate; the summed
    counters; the bytes that entered collectives; whether the round ``failed`` (secure aggregation
    could not remove a mask)."""

    aggregate: torch.Tensor
    counters: Counters
    nbytes: int
    failed: bool = False
    summed: bool = False


def server_step(strategy: Strategy, pipeline: Pipeline | None, min_clients: int, round_idx: int,
                global_flat: torch.Tensor, combined: Combined) -> RoundResult:
    """The new global model and the round's result (identical on every rank)."""
    c = combined.counters
    clients = int(round(c.clients))
    skipped = combined.failed or clients < max(1, min_clients)
    aggregate = combined.aggregate
    if not skipped and combined.summed:
        if pipeline is None:
            aggregate = aggregate / c.weight if c.weight > 0 else aggregate
        else:
            aggregate = pipeline.server(aggregate, c, round_idx)
            dp = pipeline.dp
            if dp is not None and dp.unclipped_fraction is not None:
                dp.privacy.adapt(dp.unclipped_fraction)
    new_global = global_flat if skipped else strategy.server_update(global_flat, aggregate.to(global_flat))
    return RoundResult(round_idx, new_global, clients, int(round(c.weight)),
                       c.loss_sum / c.seen if c.seen else float("nan"), combined.nbytes,
                       rejected=int(round(c.rejected)), dropped=int(round(c.dropped)), late=int(round(c.late)),
                       skipped=skipped, uplink_bytes=int(round(c.uplink_bytes)), stop=c.stop > 0)
