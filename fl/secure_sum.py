"""The secure-aggregation transport (``secagg=masking``): the all-reduce path on masked integers.

A round, as this transport runs it (Bonawitz et al. 2017, without the recovery phase):

1. *Advertise keys*: every sampled client makes a fresh X25519 key pair; one all-gather
   gives every rank the round's public keys (32 bytes per client).
2. *Masked input*: each client that finishes encodes ``[w * v, its tail]`` in fixed point
   (:class:`fl.secagg.FixedPoint`) and adds its pairwise masks with every other client of
   the round, including clients on the same rank: the guarantee is per client, not per
   rank. The hosting rank adds the masked inputs of its clients into one int64 buffer.
3. *Sum*: one all-reduce of that buffer, modulo 2^48. Beside the masked part travels a
   clear part: the rank-level counters and one flag per sampled client saying whether it
   sent, which the server of the paper knows too.
4. *Unmask*: if every sampled client sent, the masks cancel and the decoded sum is the
   aggregate. If one did not (dropped, late, or rejected as non-finite or out of range),
   its masks cannot be removed; the round fails: the global model and server state stay
   unchanged, the missing clients are named in the log, and the round counts as skipped.

Under DP-FedAvg each client also adds its share of the Gaussian noise, so nobody sees the
noiseless sum. Ranks exchange only masked vectors, public keys and the clear counters.
"""

from __future__ import annotations

import logging

import torch

from fl.aggregation import _EXTRA, CLIENTS, DROPPED, LATE, REJECTED, STOP, UNCLIPPED, WEIGHT, \
    Aggregator
from fl.comm import Comm
from fl.privacy import DPFedAvg
from fl.secagg import ClientKeys, FixedPoint, ring
from fl.strategies.base import Strategy
from fl.types import ClientUpdate, RoundResult

log = logging.getLogger(__name__)


class SecureSumAggregator(Aggregator):
    """Masked all-reduce of one round (see module docstring). Construct it on every rank
    before any client trains: the constructor is the key-advertisement collective."""

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device, cohort: list[int],
                 hosted: list[int], round_idx: int, frac_bits: int, min_clients: int = 1,
                 privacy: DPFedAvg | None = None) -> None:
        super().__init__(strategy, comm, dim, device, min_clients, privacy)
        self.fixed, self.round_idx = FixedPoint(frac_bits), round_idx
        self.cohort = sorted(cohort)
        self.slot = {cid: i for i, cid in enumerate(self.cohort)}
        self.keys = {cid: ClientKeys() for cid in hosted}
        self.publics: dict[int, bytes] = {}
        for part in comm.all_gather_object({cid: k.public for cid, k in self.keys.items()}):
            self.publics.update(part)
        self.length = self.vdim + _EXTRA
        # Clear part: the rank counters (REJECTED, DROPPED, LATE, STOP) and one "sent" flag per client.
        self.buf = torch.zeros(self.length + _EXTRA + len(self.cohort), dtype=torch.int64)
        self.key_bytes = 32 * len(self.publics) * comm.world_size

    def add(self, update: ClientUpdate) -> None:
        out = self._client_vector(update)
        if out is None:
            self.buf[self.length + REJECTED] += 1
            return
        v, tail = out
        x = torch.cat([v.double() * float(tail[WEIGHT]), tail.double()]).cpu()
        if self.privacy is not None:
            noise, count_noise = self.privacy.noise_share(self.vdim, self.round_idx, update.client_id)
            x[:self.vdim] += noise
            x[self.vdim + UNCLIPPED] += count_noise
        largest = float(x.abs().max())
        if largest * len(self.cohort) >= self.fixed.limit:
            log.warning("client %d: an entry of magnitude %.3g does not fit secagg.frac_bits=%d for %d clients "
                        "(at most %.3g each): rejected", update.client_id, largest, self.fixed.frac_bits,
                        len(self.cohort), self.fixed.limit / len(self.cohort))
            self.buf[self.length + REJECTED] += 1
            return
        masked = ring(self.fixed.encode(x).add_(self.keys[update.client_id].mask(
            update.client_id, self.publics, self.round_idx, self.length)))
        ring(self.buf[:self.length].add_(masked))
        self.buf[self.length + _EXTRA + self.slot[update.client_id]] = 1

    def drop(self, client_id: int, late: bool = False) -> None:
        self.buf[self.length + (LATE if late else DROPPED)] += 1

    def finish(self, global_flat: torch.Tensor, round_idx: int, stop: bool = False) -> RoundResult:
        self.buf[self.length + STOP] = int(stop)
        total = self.comm.all_reduce_sum(self.buf.to(self.device)).cpu()
        nbytes = total.numel() * total.element_size() * self.comm.world_size + self.key_bytes
        counters = total[self.length:self.length + _EXTRA].double()
        sent = total[self.length + _EXTRA:]
        missing = [cid for cid, s in zip(self.cohort, sent.tolist(), strict=True) if not s]
        out = torch.zeros(self.length, dtype=torch.float64)
        fraction = None
        if missing:
            if self.comm.is_main:
                log.warning("round %d: secure aggregation failed: client(s) %s of the %d sampled sent no masked input "
                            "after key agreement (dropped, late or rejected), so their masks cannot be removed; "
                            "the global model is unchanged", round_idx + 1, missing, len(self.cohort))
            out[self.vdim + CLIENTS] = len(self.cohort) - len(missing)
        else:
            out = self.fixed.decode(ring(total[:self.length]))
            if self.privacy is not None:
                fraction = float(out[self.vdim + UNCLIPPED]) / self.privacy.expected_clients
                out[:self.vdim] /= self.privacy.expected_clients
            elif out[self.vdim + WEIGHT] > 0:
                out[:self.vdim] /= out[self.vdim + WEIGHT]
        for s in (REJECTED, DROPPED, LATE, STOP):
            out[self.vdim + s] = counters[s]
        result = out.to(device=global_flat.device, dtype=global_flat.dtype)
        return self._result(round_idx, global_flat, result, nbytes, failed=bool(missing), unclipped_fraction=fraction)
