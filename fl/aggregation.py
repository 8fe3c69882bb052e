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
"""

from __future__ import annotations

import torch

from fl.comm import Comm
from fl.errors import ConfigError
from fl.strategies.base import Strategy
from fl.types import ClientUpdate, RoundResult

TRANSPORTS = ("auto", "allreduce", "gather")
_EXTRA = 4  # weight, loss_sum, num_seen, clients (sum path) / valid flag (gather rows)


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


class Aggregator:
    """Collects this rank's updates for one round, then runs the transport's collective."""

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device) -> None:
        """``dim``: the flat model's length; client vectors have ``strategy.vector_dim(dim)``."""
        self.strategy, self.comm, self.dim, self.device = strategy, comm, dim, device
        self.vdim = strategy.vector_dim(dim)

    def add(self, update: ClientUpdate) -> None:
        raise NotImplementedError

    def finish(self, global_flat: torch.Tensor, round_idx: int) -> RoundResult:
        """Collective: all ranks call it once per round, even with no clients of their own."""
        raise NotImplementedError

    def _result(self, round_idx: int, new_global: torch.Tensor, tail: torch.Tensor, nbytes: int) -> RoundResult:
        weight, loss_sum, seen, clients = tail.tolist()
        return RoundResult(round_idx, new_global, int(round(clients)), int(round(weight)),
                           loss_sum / seen if seen else float("nan"), nbytes)


class SumAggregator(Aggregator):
    """The all-reduce transport (see module docstring)."""

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device) -> None:
        super().__init__(strategy, comm, dim, device)
        self.buf = torch.zeros(self.vdim + _EXTRA, device=device)

    def add(self, update: ClientUpdate) -> None:
        w = self.strategy.client_weight(update)
        self.buf[:self.vdim].add_(self.strategy.client_vector(update), alpha=w)
        self.buf[self.vdim:] += torch.stack([
            torch.tensor(w, device=self.device), update.loss_sum.float(),
            torch.tensor(float(update.num_seen), device=self.device), torch.ones((), device=self.device),
        ])

    def finish(self, global_flat: torch.Tensor, round_idx: int) -> RoundResult:
        total = self.comm.all_reduce_sum(self.buf)
        nbytes = total.numel() * total.element_size() * self.comm.world_size
        tail = total[self.vdim:]
        if tail[0] <= 0:  # no client trained (cannot happen with validated configs)
            return self._result(round_idx, global_flat, tail, nbytes)
        new_global = self.strategy.server_update(global_flat, total[:self.vdim] / tail[0])
        return self._result(round_idx, new_global, tail, nbytes)


class GatherAggregator(Aggregator):
    """The gather-to-rank-0 transport (see module docstring).

    ``rows_per_rank`` must be the same on every rank: the largest number of clients any
    rank hosts this round. Unused rows stay zero, with a zero ``valid`` flag.
    """

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device, rows_per_rank: int) -> None:
        super().__init__(strategy, comm, dim, device)
        self.rows = torch.zeros(rows_per_rank, self.vdim + _EXTRA, device=device)
        self.used = 0

    def add(self, update: ClientUpdate) -> None:
        row = self.rows[self.used]
        row[:self.vdim] = self.strategy.client_vector(update)
        row[self.vdim:] = torch.stack([
            torch.tensor(self.strategy.client_weight(update), device=self.device), update.loss_sum.float(),
            torch.tensor(float(update.num_seen), device=self.device), torch.ones((), device=self.device),
        ])
        self.used += 1

    def finish(self, global_flat: torch.Tensor, round_idx: int) -> RoundResult:
        gathered = self.comm.gather_rows(self.rows)
        # Rank 0 aggregates; the *aggregate* is broadcast and every rank applies server_update,
        # so server state (optimizer moments, control variates) stays identical on all ranks.
        out = torch.zeros(self.vdim + _EXTRA, device=self.device)
        if gathered is not None:  # rank 0
            valid = gathered[gathered[:, -1] > 0]
            out[self.vdim:] = valid[:, self.vdim:].sum(0)
            if len(valid):
                out[:self.vdim] = self.strategy.aggregate(valid[:, :self.vdim], valid[:, self.vdim])
        self.comm.broadcast(out)
        nbytes = self.rows.numel() * self.rows.element_size() * self.comm.world_size
        nbytes += out.numel() * out.element_size() * (self.comm.world_size - 1)
        tail = out[self.vdim:]
        new_global = self.strategy.server_update(global_flat, out[:self.vdim]) if tail[-1] > 0 else global_flat
        return self._result(round_idx, new_global, tail, nbytes)


def make_aggregator(
    transport: str, strategy: Strategy, comm: Comm, dim: int, device: torch.device, rows_per_rank: int
) -> Aggregator:
    if transport == "allreduce":
        return SumAggregator(strategy, comm, dim, device)
    return GatherAggregator(strategy, comm, dim, device, rows_per_rank)
