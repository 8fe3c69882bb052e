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
arrive leaves the global model and the server state unchanged (the server step,
:func:`fl.engine.server.server_step`, is the same for every transport).
"""

from __future__ import annotations

import logging

import torch

from fl.runtime.comm import Comm
from fl.errors import ConfigError
from fl.privacy.dp_fedavg import DPFedAvg
from fl.strategies.base import Strategy
from fl.engine.server import Combined, server_step
from fl.transport.counters import WIDTH, Counters
from fl.types import ClientUpdate, RoundResult

log = logging.getLogger(__name__)

TRANSPORTS = ("auto", "allreduce", "gather")


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

    def combine(self, round_idx: int, stop: bool = False) -> Combined:
        """Collective: all ranks call it once per round, even with no clients of their own.
        ``stop``: this rank was asked to stop; the counters' ``stop`` is > 0 if any rank was."""
        raise NotImplementedError

    def finish(self, global_flat: torch.Tensor, round_idx: int, stop: bool = False) -> RoundResult:
        """Collective: :meth:`combine`, then the server step (:func:`fl.engine.server.server_step`)."""
        return server_step(self.strategy, self.privacy, self.min_clients, round_idx, global_flat,
                           self.combine(round_idx, stop))

    def _counters(self, update: ClientUpdate) -> Counters:
        return Counters(weight=self.strategy.client_weight(update), loss_sum=update.loss_sum,
                        seen=float(update.num_seen), clients=1.0)

    def _client_vector(self, update: ClientUpdate) -> tuple[torch.Tensor, Counters] | None:
        """The client's vector and counters (clipped, weight 1 under DP); ``None`` when non-finite."""
        v = self.strategy.client_vector(update)
        if not is_finite(v):
            log.warning("client %d sent a non-finite update: rejected", update.client_id)
            return None
        counters = self._counters(update)
        if self.privacy is not None:
            v, unclipped = self.privacy.clip(v)
            counters = counters.replace(weight=1.0, unclipped=unclipped)
        return v, counters


class SumAggregator(Aggregator):
    """The all-reduce transport (see module docstring). With ``privacy`` (DP-FedAvg) each
    update is clipped and weighted 1, and the sum is noised once and divided by the expected
    cohort size (see :mod:`fl.privacy.dp_fedavg`)."""

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device, min_clients: int = 1,
                 privacy: DPFedAvg | None = None) -> None:
        super().__init__(strategy, comm, dim, device, min_clients, privacy)
        self.buf = torch.zeros(self.vdim + WIDTH, device=device)

    def _count(self, counters: Counters) -> None:
        self.buf[self.vdim:] += counters.encode(self.device)

    def add(self, update: ClientUpdate) -> None:
        out = self._client_vector(update)
        if out is None:
            self._count(Counters(rejected=1.0))
            return
        v, counters = out
        self.buf[:self.vdim].add_(v, alpha=float(counters.weight))
        self._count(counters)

    def drop(self, client_id: int, late: bool = False) -> None:
        self._count(Counters(late=1.0) if late else Counters(dropped=1.0))

    def combine(self, round_idx: int, stop: bool = False) -> Combined:
        self._count(Counters(stop=float(stop)))
        total = self.comm.all_reduce_sum(self.buf)
        nbytes = total.numel() * total.element_size() * self.comm.world_size
        counters = Counters.decode(total[self.vdim:])
        aggregate, fraction = total[:self.vdim], None
        if self.privacy is not None:
            aggregate, fraction = self.privacy.noised_sum(aggregate, counters.unclipped, round_idx)
        elif counters.weight > 0:
            aggregate = aggregate / counters.weight
        return Combined(aggregate, counters, nbytes, unclipped_fraction=fraction)


class GatherAggregator(Aggregator):
    """The gather-to-rank-0 transport (see module docstring).

    ``rows_per_rank`` must be the same on every rank: the largest number of clients any
    rank hosts this round. Unused rows stay zero (``clients`` = 0).
    """

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device, rows_per_rank: int,
                 min_clients: int = 1) -> None:
        super().__init__(strategy, comm, dim, device, min_clients)
        self.rows = torch.zeros(rows_per_rank, self.vdim + WIDTH, device=device)
        self.used = 0

    def add(self, update: ClientUpdate) -> None:
        row = self.rows[self.used]
        row[:self.vdim] = self.strategy.client_vector(update)
        row[self.vdim:] = self._counters(update).encode(self.device)
        self.used += 1

    def drop(self, client_id: int, late: bool = False) -> None:
        self.rows[self.used, self.vdim:] = (Counters(late=1.0) if late else Counters(dropped=1.0)).encode(self.device)
        self.used += 1

    def combine(self, round_idx: int, stop: bool = False) -> Combined:
        self.rows[0, self.vdim + Counters.index("stop")] = float(stop)
        gathered = self.comm.gather_rows(self.rows)
        # Rank 0 aggregates; the *aggregate* is broadcast and every rank applies server_update,
        # so server state (optimizer moments, control variates) stays identical on all ranks.
        adim = self.strategy.aggregate_dim(self.dim)
        out = torch.zeros(adim + WIDTH, device=self.device)
        if gathered is not None:  # rank 0
            out[adim:] = self._aggregate_rows(gathered, out[:adim]).encode(self.device)
        self.comm.broadcast(out)
        nbytes = self.rows.numel() * self.rows.element_size() * self.comm.world_size
        nbytes += out.numel() * out.element_size() * (self.comm.world_size - 1)
        return Combined(out[:adim], Counters.decode(out[adim:]), nbytes)

    def _aggregate_rows(self, rows: torch.Tensor, out: torch.Tensor) -> Counters:
        """Fill ``out`` with the strategy's aggregate of the good rows; return the summed counters."""
        def column(name: str) -> torch.Tensor:
            return rows[:, self.vdim + Counters.index(name)]

        present = column("clients") > 0
        finite = torch.isfinite(rows).all(dim=1)
        good = rows[present & finite]
        rejected = int((present & ~finite).sum())
        counters = Counters.decode(good[:, self.vdim:].sum(0)).replace(
            rejected=float(rejected), dropped=float(column("dropped").sum()), late=float(column("late").sum()),
            stop=float(column("stop").sum()))
        if rejected:
            log.warning("%d non-finite client update(s) rejected", rejected)
        if len(good) >= self.min_clients:
            out.copy_(self.strategy.aggregate(good[:, :self.vdim], good[:, self.vdim + Counters.index("weight")]))
        return counters


def make_aggregator(transport: str, strategy: Strategy, comm: Comm, dim: int, device: torch.device,
                    rows_per_rank: int, min_clients: int = 1, privacy: DPFedAvg | None = None) -> Aggregator:
    if transport == "allreduce":
        return SumAggregator(strategy, comm, dim, device, min_clients, privacy)
    return GatherAggregator(strategy, comm, dim, device, rows_per_rank, min_clients)
