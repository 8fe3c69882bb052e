"""Aggregation transports: turn this rank's client updates into the new global model.

Two transports, one collective step each, on one flat buffer:

* ``allreduce`` (sum path): each rank adds ``w * v`` of its clients into one buffer with
  ``sum w`` and the loss sums appended; one all-reduce; every rank applies the same
  result, so there is no broadcast. Valid when the strategy's aggregate is a weighted
  mean (``strategy.is_weighted_mean``).
* ``gather``: each rank fills one row per hosted client; rows are gathered on rank 0,
  which runs ``strategy.aggregate`` on the individual updates and broadcasts the aggregate
  (plus the round's metrics) in one buffer; every rank then applies ``server_update``.

Both give the same model for weighted-mean strategies, up to float summation order.

Whatever the transport, an update with a NaN or Inf entry never reaches the global model:
on the sum path the hosting rank drops it before adding it in (no one else ever sees it);
on the gather path rank 0 drops the row. Rejected, dropped-out and late (straggler) clients
are counted in the round's result. A round in which fewer than ``min_clients`` updates
arrive leaves the global model and the server state unchanged.
"""

from __future__ import annotations

import logging

import torch

from fl.runtime.comm import Comm
from fl.errors import ConfigError
from fl.privacy.dp_fedavg import DPFedAvg
from fl.strategies.base import Strategy
from fl.types import ClientUpdate, RoundResult

log = logging.getLogger(__name__)

TRANSPORTS = ("auto", "allreduce", "gather")

# The per-round tail appended to every buffer (sum path) or row (gather path).
# STOP: how many ranks were asked to stop (SIGTERM), so all ranks agree after the same round.
# UNCLIPPED: DP clients whose update was within the clip norm (adaptive clipping).
WEIGHT, LOSS_SUM, SEEN, CLIENTS, REJECTED, DROPPED, LATE, STOP, UNCLIPPED = range(9)
_EXTRA = 9


def choose_transport(requested: str, strategy: Strategy) -> str:
    """``auto`` picks all-reduce for weighted-mean strategies, gather otherwise."""
    if requested not in TRANSPORTS:
        raise ConfigError("strategy.transport", requested, f"must be one of {', '.join(TRANSPORTS)}")
    if requested == "auto":
        return "allreduce" if strategy.is_weighted_mean else "gather"
    if requested == "allreduce" and not strategy.is_weighted_mean:
        raise ConfigError("strategy.transport", requested,
                          f"{type(strategy).__name__} needs every client update; use gather or auto")
    return requested


def is_finite(update_vector: torch.Tensor) -> bool:
    return bool(torch.isfinite(update_vector).all())


class Aggregator:
    """Collects this rank's updates for one round, then runs the transport's collective."""

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device, min_clients: int = 1,
                 privacy: DPFedAvg | None = None) -> None:
        """``dim``: the flat model's length; client vectors have ``strategy.vector_dim(dim)``."""
        self.strategy, self.comm, self.dim, self.device = strategy, comm, dim, device
        self.vdim = strategy.vector_dim(dim)
        self.min_clients = max(1, min_clients)
        self.privacy = privacy

    def add(self, update: ClientUpdate) -> None:
        raise NotImplementedError

    def drop(self, client_id: int, late: bool = False) -> None:
        """Client ``client_id`` was sampled but sends nothing (it failed, or missed the deadline)."""
        raise NotImplementedError

    def finish(self, global_flat: torch.Tensor, round_idx: int, stop: bool = False) -> RoundResult:
        """Collective: all ranks call it once per round, even with no clients of their own.
        ``stop``: this rank was asked to stop; the result's ``stop`` is True if any rank was."""
        raise NotImplementedError

    def _tail(self, update: ClientUpdate) -> torch.Tensor:
        t = torch.zeros(_EXTRA, device=self.device)
        t[WEIGHT] = self.strategy.client_weight(update)
        t[LOSS_SUM] = update.loss_sum.float()
        t[SEEN] = float(update.num_seen)
        t[CLIENTS] = 1.0
        return t

    def _client_vector(self, update: ClientUpdate) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The client's vector and tail (clipped, weight 1 under DP); ``None`` when non-finite."""
        v = self.strategy.client_vector(update)
        if not is_finite(v):
            log.warning("client %d sent a non-finite update: rejected", update.client_id)
            return None
        tail = self._tail(update)
        if self.privacy is not None:
            v, tail[UNCLIPPED] = self.privacy.clip(v)
            tail[WEIGHT] = 1.0
        return v, tail

    def _result(self, round_idx: int, global_flat: torch.Tensor, total: torch.Tensor, nbytes: int,
                failed: bool = False, unclipped_fraction: float | None = None) -> RoundResult:
        """Apply the server step to ``total`` = [aggregate, tail] unless too few clients arrived
        (or the round ``failed``); adapt the DP clip norm only for a round that is applied."""
        tail = total[-_EXTRA:].tolist()
        clients = int(round(tail[CLIENTS]))
        skipped = failed or clients < self.min_clients
        if not skipped and self.privacy is not None and unclipped_fraction is not None:
            self.privacy.adapt(unclipped_fraction)
        new_global = global_flat if skipped else self.strategy.server_update(global_flat, total[:-_EXTRA])
        return RoundResult(round_idx, new_global, clients, int(round(tail[WEIGHT])),
                           tail[LOSS_SUM] / tail[SEEN] if tail[SEEN] else float("nan"), nbytes,
                           rejected=int(round(tail[REJECTED])), dropped=int(round(tail[DROPPED])),
                           late=int(round(tail[LATE])), skipped=skipped, stop=tail[STOP] > 0)


class SumAggregator(Aggregator):
    """The all-reduce transport (see module docstring). With ``privacy`` (DP-FedAvg) each
    update is clipped and weighted 1, and the sum is noised once and divided by the expected
    cohort size (see :mod:`fl.privacy.dp_fedavg`)."""

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device, min_clients: int = 1,
                 privacy: DPFedAvg | None = None) -> None:
        super().__init__(strategy, comm, dim, device, min_clients, privacy)
        self.buf = torch.zeros(self.vdim + _EXTRA, device=device)

    def add(self, update: ClientUpdate) -> None:
        out = self._client_vector(update)
        if out is None:
            self.buf[self.vdim + REJECTED] += 1
            return
        v, tail = out
        self.buf[:self.vdim].add_(v, alpha=float(tail[WEIGHT]))
        self.buf[self.vdim:] += tail

    def drop(self, client_id: int, late: bool = False) -> None:
        self.buf[self.vdim + (LATE if late else DROPPED)] += 1

    def finish(self, global_flat: torch.Tensor, round_idx: int, stop: bool = False) -> RoundResult:
        self.buf[self.vdim + STOP] = float(stop)
        total = self.comm.all_reduce_sum(self.buf)
        nbytes = total.numel() * total.element_size() * self.comm.world_size
        weight = total[self.vdim + WEIGHT]
        fraction = None
        if self.privacy is not None:
            total[:self.vdim], fraction = self.privacy.noised_sum(total[:self.vdim],
                                                                  float(total[self.vdim + UNCLIPPED]), round_idx)
        elif weight > 0:
            total[:self.vdim] /= weight
        return self._result(round_idx, global_flat, total, nbytes, unclipped_fraction=fraction)


class GatherAggregator(Aggregator):
    """The gather-to-rank-0 transport (see module docstring).

    ``rows_per_rank`` must be the same on every rank: the largest number of clients any
    rank hosts this round. Unused rows stay zero (``CLIENTS`` = 0).
    """

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device, rows_per_rank: int,
                 min_clients: int = 1) -> None:
        super().__init__(strategy, comm, dim, device, min_clients)
        self.rows = torch.zeros(rows_per_rank, self.vdim + _EXTRA, device=device)
        self.used = 0

    def add(self, update: ClientUpdate) -> None:
        row = self.rows[self.used]
        row[:self.vdim] = self.strategy.client_vector(update)
        row[self.vdim:] = self._tail(update)
        self.used += 1

    def drop(self, client_id: int, late: bool = False) -> None:
        self.rows[self.used, self.vdim + (LATE if late else DROPPED)] = 1
        self.used += 1

    def finish(self, global_flat: torch.Tensor, round_idx: int, stop: bool = False) -> RoundResult:
        self.rows[0, self.vdim + STOP] = float(stop)
        gathered = self.comm.gather_rows(self.rows)
        # Rank 0 aggregates; the *aggregate* is broadcast and every rank applies server_update,
        # so server state (optimizer moments, control variates) stays identical on all ranks.
        adim = self.strategy.aggregate_dim(self.dim)
        out = torch.zeros(adim + _EXTRA, device=self.device)
        if gathered is not None:  # rank 0
            out[adim:] = self._aggregate_rows(gathered, out[:adim])
        self.comm.broadcast(out)
        nbytes = self.rows.numel() * self.rows.element_size() * self.comm.world_size
        nbytes += out.numel() * out.element_size() * (self.comm.world_size - 1)
        return self._result(round_idx, global_flat, out, nbytes)

    def _aggregate_rows(self, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` with the strategy's aggregate of the good rows; return the summed tail."""
        present = rows[:, self.vdim + CLIENTS] > 0
        finite = torch.isfinite(rows).all(dim=1)
        good = rows[present & finite]
        tail = good[:, self.vdim:].sum(0)
        tail[REJECTED] = int((present & ~finite).sum())
        tail[DROPPED] = rows[:, self.vdim + DROPPED].sum()
        tail[LATE] = rows[:, self.vdim + LATE].sum()
        tail[STOP] = rows[:, self.vdim + STOP].sum()
        if tail[REJECTED]:
            log.warning("%d non-finite client update(s) rejected", int(tail[REJECTED]))
        if len(good) >= self.min_clients:
            out.copy_(self.strategy.aggregate(good[:, :self.vdim], good[:, self.vdim + WEIGHT]))
        return tail


def make_aggregator(transport: str, strategy: Strategy, comm: Comm, dim: int, device: torch.device,
                    rows_per_rank: int, min_clients: int = 1, privacy: DPFedAvg | None = None) -> Aggregator:
    if transport == "allreduce":
        return SumAggregator(strategy, comm, dim, device, min_clients, privacy)
    return GatherAggregator(strategy, comm, dim, device, rows_per_rank, min_clients)
