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

Transports only move and combine numbers. Each client's vector first passes through the
round's update pipeline (:mod:`fl.transport.pipeline`: attack, norm bound, NaN/Inf rejection,
DP clip, compression's client side); the sum path hands the server step the *sum* and the
counters, and the server step (:func:`fl.engine.server.server_step`, the same for every
transport) runs the pipeline's server sides (DP noise, inverse rotation), the division and
``server_update``. An update with a NaN or Inf entry never reaches the global model: the
hosting rank refuses it (and rank 0 checks every gathered row again). Rejected, dropped-out and
late (straggler) clients are counted in the round's result.
"""

from __future__ import annotations

import logging

import torch

from fl.compression.uplink import Uplink
from fl.runtime.comm import Comm
from fl.errors import ConfigError
from fl.privacy.dp_fedavg import DPFedAvg
from fl.strategies.base import Strategy
from fl.strategies.norm_bound import clip_to_norm
from fl.engine.server import Combined, server_step
from fl.transport.counters import WIDTH, Counters
from fl.transport.pipeline import Pipeline
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


class Aggregator:
    """Collects this rank's updates for one round, then runs the transport's collective.

    Each update goes through ``pipeline`` (default: :meth:`Pipeline.standard` of the strategy's
    transforms, ``privacy`` and ``uplink``) and is then encoded as the client would send it:
    what the server decodes is what is combined. Codecs with a shared scale hold the vectors until
    :meth:`combine`, which reduces the scale over the ranks first. The round's ``uplink_bytes``
    counter sums the messages' exact bytes.
    """

    header_bytes = WIDTH * 4  # a message's counters (weight, loss, ...) as float32
    noise_shares = False      # DP noise: added once to the sum (True: a share by each client)

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device, min_clients: int = 1,
                 privacy: DPFedAvg | None = None, uplink: Uplink | None = None, round_idx: int = 0,
                 pipeline: Pipeline | None = None) -> None:
        """``dim``: the flat model's length; client vectors have ``strategy.vector_dim(dim)``."""
        self.strategy, self.comm, self.dim, self.device = strategy, comm, dim, device
        self.vdim = strategy.vector_dim(dim)
        self.min_clients = max(1, min_clients)
        if pipeline is None:
            uplink = uplink or Uplink(None, 0, round_idx, self.vdim)
            pipeline = Pipeline.standard(uplink, strategy.transforms(), privacy, round_idx, self.noise_shares)
        self.pipeline, self.uplink = pipeline, pipeline.uplink
        self.privacy = None if pipeline.dp is None else pipeline.dp.privacy
        self.pending: list[tuple[int, torch.Tensor, Counters]] = []

    def add(self, update: ClientUpdate) -> None:
        out = self.pipeline.client(self.strategy.client_vector(update), self._counters(update), update.client_id)
        if out is None:
            self._count(Counters(rejected=1.0))
            return
        v, counters = out
        self.pending.append((update.client_id, v, counters))
        if not self.uplink.codec.shared_scale:
            self._send_pending(0.0)

    def drop(self, client_id: int, late: bool = False) -> None:
        """Client ``client_id`` was sampled but sends nothing (it failed, or missed the deadline)."""
        self._count(Counters(late=1.0) if late else Counters(dropped=1.0))

    def combine(self, round_idx: int, stop: bool = False) -> Combined:
        """Collective: all ranks call it once per round, even with no clients of their own.
        ``stop``: this rank was asked to stop; the counters' ``stop`` is > 0 if any rank was."""
        raise NotImplementedError

    def finish(self, global_flat: torch.Tensor, round_idx: int, stop: bool = False) -> RoundResult:
        """Collective: :meth:`combine`, then the server step (:func:`fl.engine.server.server_step`)."""
        return server_step(self.strategy, self.pipeline, self.min_clients, round_idx, global_flat,
                           self.combine(round_idx, stop))

    def _count(self, counters: Counters) -> None:
        raise NotImplementedError

    def _accept(self, x: torch.Tensor, counters: Counters) -> None:
        """Add in one client's decoded vector (its head in the coded space) with its counters."""
        raise NotImplementedError

    def _flush(self) -> None:
        """Collective when the codec shares a scale: encode the held vectors with the cohort's scale.
        Then wait for this rank's error-feedback residual files (before the round's collective)."""
        if self.uplink.codec.shared_scale:
            self._send_pending(self.uplink.scale(self.comm, [x for _, x, _ in self.pending]))
        self.uplink.flush()

    def _send_pending(self, scale: float) -> None:
        for cid, x, counters in self.pending:
            decoded, nbytes = self.uplink.send(cid, x, scale)
            if self.privacy is not None and self.uplink.active:  # the server's clip: sensitivity stays C
                decoded = clip_to_norm(decoded, self.privacy.clip_norm)
            self._accept(decoded, counters.replace(uplink_bytes=float(nbytes + self.header_bytes)))
        self.pending.clear()

    def _counters(self, update: ClientUpdate) -> Counters:
        return Counters(weight=self.strategy.client_weight(update), loss_sum=update.loss_sum,
                        seen=float(update.num_seen), clients=1.0)


class SumAggregator(Aggregator):
    """The all-reduce transport (see module docstring): the weighted sum of the round's vectors."""

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device, min_clients: int = 1,
                 privacy: DPFedAvg | None = None, uplink: Uplink | None = None, round_idx: int = 0,
                 pipeline: Pipeline | None = None) -> None:
        super().__init__(strategy, comm, dim, device, min_clients, privacy, uplink, round_idx, pipeline)
        # Compressed: float64, and quantized codes (without DP's per-client clip of the decoded vector)
        # are summed as exact integers, so the sum does not depend on the order, nor on the world size.
        self.dtype = torch.float64 if self.uplink.active else torch.float32
        self.codes = self.uplink.codec.integer and self.privacy is None
        # Compressed, without DP's clip of each decoded vector: a message is added into the sum as
        # it decodes, without a dense copy where the codec can (random-k, top-k).
        self.direct = self.uplink.active and self.privacy is None
        self.scale = 0.0
        self.buf = torch.zeros(self.vdim + WIDTH, device=device, dtype=self.dtype)

    def _count(self, counters: Counters) -> None:
        self.buf[self.vdim:] += counters.encode(self.device, self.dtype)

    def _accept(self, x: torch.Tensor, counters: Counters) -> None:
        self.buf[:self.vdim].add_(x, alpha=float(counters.weight))  # in the buffer's dtype, without a copy
        self._count(counters)

    def _send_pending(self, scale: float) -> None:
        if not self.codes:
            return self._send_direct(scale) if self.direct else super()._send_pending(scale)
        self.scale = scale
        head = self.uplink.head
        weights = [float(c.weight) for _, _, c in self.pending]
        # This rank's weighted sum of codes is an integer below 2^24 when the weights are integers
        # and small enough: float32 adds it up exactly, and it enters the float64 buffer once.
        levels = self.uplink.codec.levels  # type: ignore[attr-defined]
        exact32 = all(w == round(w) for w in weights) and sum(abs(w) for w in weights) * levels < 2 ** 24
        local = torch.zeros(head, device=self.device) if exact32 and len(self.pending) > 1 else self.buf[:head]
        for (cid, x, counters), weight in zip(self.pending, weights):
            nbytes = self.uplink.add_codes(cid, x, scale, local, weight)  # codes added as they are drawn
            self.buf[head:self.vdim].add_(x[head:].to(self.dtype), alpha=weight)
            self._count(counters.replace(uplink_bytes=float(nbytes + self.header_bytes)))
        if local.dtype != self.dtype:
            self.buf[:head].add_(local)
        self.pending.clear()

    def _send_direct(self, scale: float) -> None:
        head = self.uplink.head
        for cid, x, counters in self.pending:
            enc, nbytes = self.uplink.transmit(cid, x, scale)
            weight = float(counters.weight)
            self.uplink.codec.add_decoded(self.buf[:head], enc, self.uplink.key(cid), weight)
            self.buf[head:self.vdim].add_(x[head:].to(self.dtype), alpha=weight)
            self._count(counters.replace(uplink_bytes=float(nbytes + self.header_bytes)))
        self.pending.clear()

    def combine(self, round_idx: int, stop: bool = False) -> Combined:
        self._flush()
        self._count(Counters(stop=float(stop)))
        total = self.comm.all_reduce_sum(self.buf)
        nbytes = total.numel() * total.element_size() * self.comm.world_size
        counters = Counters.decode(total[self.vdim:])
        summed, head = total[:self.vdim], self.uplink.head
        if self.codes:  # the weighted sum of decoded vectors, from the weighted sum of codes (in place)
            self.uplink.codec.dequantize(summed[:head], counters.weight, self.scale, in_place=True)  # type: ignore[attr-defined]
        return Combined(summed.to(torch.float32), counters, nbytes, summed=True)


class GatherAggregator(Aggregator):
    """The gather-to-rank-0 transport (see module docstring).

    ``rows_per_rank`` must be the same on every rank: the largest number of clients any
    rank hosts this round. Unused rows stay zero (``clients`` = 0).
    """

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device, rows_per_rank: int,
                 min_clients: int = 1, uplink: Uplink | None = None, round_idx: int = 0,
                 pipeline: Pipeline | None = None) -> None:
        super().__init__(strategy, comm, dim, device, min_clients, None, uplink, round_idx, pipeline)
        self.rows = torch.zeros(rows_per_rank, self.vdim + WIDTH, device=device)
        self.used = 0

    def _accept(self, x: torch.Tensor, counters: Counters) -> None:
        """Rank 0 gets every individual update, decoded and rotated back (robust aggregators need
        them one by one)."""
        row = self.rows[self.used]
        row[:self.vdim] = self.uplink.back(x)
        row[self.vdim:] = counters.encode(self.device)
        self.used += 1

    def _count(self, counters: Counters) -> None:
        self.rows[self.used, self.vdim:] = counters.encode(self.device)
        self.used += 1

    def combine(self, round_idx: int, stop: bool = False) -> Combined:
        self._flush()
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
        if rejected:
            log.warning("%d non-finite client update(s) rejected", rejected)
        counters = Counters.decode(good[:, self.vdim:].sum(0)).replace(
            rejected=float(rejected + column("rejected").sum()), dropped=float(column("dropped").sum()),
            late=float(column("late").sum()), stop=float(column("stop").sum()),
            uplink_bytes=float(column("uplink_bytes").sum()))
        if len(good) >= self.min_clients:
            out.copy_(self.strategy.aggregate(good[:, :self.vdim], good[:, self.vdim + Counters.index("weight")]))
        return counters


def make_aggregator(transport: str, strategy: Strategy, comm: Comm, dim: int, device: torch.device,
                    rows_per_rank: int, min_clients: int = 1, privacy: DPFedAvg | None = None,
                    uplink: Uplink | None = None, round_idx: int = 0, pipeline: Pipeline | None = None) -> Aggregator:
    if transport == "allreduce":
        return SumAggregator(strategy, comm, dim, device, min_clients, privacy, uplink, round_idx, pipeline)
    return GatherAggregator(strategy, comm, dim, device, rows_per_rank, min_clients, uplink, round_idx, pipeline)
