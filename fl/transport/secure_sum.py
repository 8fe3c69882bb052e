"""The secure-aggregation transport (``secagg=masking``): the all-reduce path on masked integers.

A round, as this transport runs it (Bonawitz et al. 2017, semi-honest setting):

1. *Advertise keys*: every sampled client makes fresh X25519 key pairs (one for masks, one
   for encrypting shares); one all-gather gives every rank the round's public keys.
2. *Share keys* (``recover``): each client splits its mask key and a fresh self-mask seed
   t-of-n with Shamir's scheme and sends share j, sealed with AES-GCM under a key agreed with
   cohort member j, through one all-gather. Ranks see only ciphertexts.
3. *Masked input*: each client that finishes encodes ``[w * v, its tail]`` in fixed point
   (:class:`fl.secagg.masking.FixedPoint`), or, with ``compression/uplink=quantize``, its
   stochastic codes times ``w`` as integers (a scale shared by the cohort; the ring's sum of codes
   needs only ``log2(n w_max (2^bits - 1))`` bits per entry instead of 48), adds its pairwise masks with every other client of the
   round, including clients on the same rank (the guarantee is per client, not per rank),
   and, with ``recover``, its self mask. The hosting rank adds its clients' masked inputs.
4. *Sum*: one all-reduce of that int64 buffer, modulo 2^48. Beside the masked part travels a
   clear part: the rank-level counters and one flag per sampled client saying whether it
   sent, which the paper's server knows too.
5. *Unmask* (``recover``): every surviving client opens the shares sent to it and reveals,
   for each client of the round, the share of its self-mask seed if that client sent, or of
   its mask key if it did not, never both. One all-gather; every rank rebuilds the secrets
   from t shares and removes the self masks of the survivors and the dangling pairwise masks
   of the missing clients. Without ``recover``, or with fewer than t survivors, a round with a
   missing client fails: the global model and server state stay unchanged, the missing
   clients are named in the log, and the round counts as skipped.

Under DP-FedAvg each client also adds its share of the Gaussian noise (the update pipeline's
:class:`~fl.transport.pipeline.NoiseShare`), so nobody sees the noiseless sum. The
transport hands the server step the decoded sum; the division happens there. Ranks exchange only masked vectors, public keys, sealed shares, the revealed
shares and the clear counters.
"""

from __future__ import annotations

import logging
import math
import secrets

import torch

from fl.engine.server import Combined
from fl.transport.counters import WIDTH, Counters
from fl.transport.pipeline import Pipeline
from fl.transport.plain import Aggregator
from fl.runtime.comm import Comm
from fl.privacy.dp_fedavg import DPFedAvg
from fl.compression.codecs import Quantize
from fl.compression.uplink import Uplink
from fl.secagg.masking import RING_BITS, ClientKeys, FixedPoint, combine, ring, seal, self_mask, split, unseal
from fl.strategies.base import Strategy
from fl.types import ClientUpdate

log = logging.getLogger(__name__)


class SecureSumAggregator(Aggregator):
    """Masked all-reduce of one round (see module docstring). Construct it on every rank
    before any client trains: the constructor runs the key-advertisement (and, with
    ``recover``, the share-keys) collectives."""

    def __init__(self, strategy: Strategy, comm: Comm, dim: int, device: torch.device, cohort: list[int],
                 hosted: list[int], round_idx: int, frac_bits: int, min_clients: int = 1,
                 privacy: DPFedAvg | None = None, recover: bool = False, threshold: float = 0.5,
                 uplink: Uplink | None = None, pipeline: Pipeline | None = None) -> None:
        super().__init__(strategy, comm, dim, device, min_clients, privacy, uplink, round_idx, pipeline)
        if self.uplink.active and not isinstance(self.uplink.codec, Quantize):
            raise ValueError(f"secure aggregation sums quantized integers or fixed point, not {self.uplink.codec.name}")
        self.fixed, self.round_idx, self.recover = FixedPoint(frac_bits), round_idx, recover
        self.cohort, self.hosted = sorted(cohort), hosted
        self.slot = {cid: i for i, cid in enumerate(self.cohort)}
        self.t = min(len(self.cohort), int(threshold * len(self.cohort)) + 1)
        self.keys = {cid: ClientKeys() for cid in hosted}      # mask keys
        self.enc = {cid: ClientKeys() for cid in hosted} if recover else {}  # share-encryption keys
        self.seeds = {cid: secrets.token_bytes(32) for cid in hosted} if recover else {}  # self-mask seeds
        self.publics: dict[int, bytes] = {}
        self.enc_publics: dict[int, bytes] = {}
        for part in comm.all_gather_object({cid: (k.public, self.enc[cid].public if recover else b"")
                                            for cid, k in self.keys.items()}):
            for cid, (mask_pub, enc_pub) in part.items():
                self.publics[cid], self.enc_publics[cid] = mask_pub, enc_pub
        self.protocol_bytes = (64 if recover else 32) * len(self.publics)
        self.inbox: dict[tuple[int, int], bytes] = {}
        if recover:
            self._share_keys()
        self.length = self.vdim + WIDTH  # the masked part: weighted vector (or codes) and the clients' counters
        self.code_bits = 0  # quantized: the ring bits the round's code sums need (set in combine)
        # Clear part: the rank's counters (rejected, dropped, late, stop) and one "sent" flag per client.
        self.buf = torch.zeros(self.length + WIDTH + len(self.cohort), dtype=torch.int64)

    def _share_keys(self) -> None:
        """Each hosted client splits its mask key and self-mask seed t-of-n and sends share j,
        encrypted, to cohort member j (its own share it keeps)."""
        n, out = len(self.cohort), {}
        for u in self.hosted:
            s_shares, b_shares = split(self.keys[u].private, n, self.t), split(self.seeds[u], n, self.t)
            for v, s_share, b_share in zip(self.cohort, s_shares, b_shares, strict=True):
                payload = s_share.to_bytes(_SHARE, "big") + b_share.to_bytes(_SHARE, "big")
                out[(u, v)] = payload if u == v else seal(self.enc[u].agree(self.enc_publics[v]), u, v,
                                                          self.round_idx, payload)
        for part in self.comm.all_gather_object({k: c for k, c in out.items() if k[0] != k[1]}):
            self.inbox.update({k: c for k, c in part.items() if k[1] in self.keys})
            self.protocol_bytes += sum(len(c) for c in part.values())
        self.inbox.update({k: c for k, c in out.items() if k[0] == k[1]})

    def _count(self, counters: Counters) -> None:
        """Counters that travel in the clear (none reveals a client's update)."""
        self.buf[self.length:self.length + WIDTH] += counters.encode(dtype=torch.int64)

    noise_shares = True  # under DP each client adds its share of the noise (fl.transport.pipeline.NoiseShare)

    def add(self, update: ClientUpdate) -> None:
        out = self.pipeline.client(self.strategy.client_vector(update), self._counters(update), update.client_id)
        if out is None:
            self._count(Counters(rejected=1))
            return
        v, counters = out
        if self.uplink.active:  # clip -> noise share -> rotate -> quantize (in combine) -> mask
            self.pending.append((update.client_id, v, counters))
            return
        x = torch.cat([v.double() * float(counters.weight), counters.encode(v.device, torch.float64)]).cpu()
        largest = float(x.abs().max())
        if largest * len(self.cohort) >= self.fixed.limit:
            log.warning("client %d: an entry of magnitude %.3g does not fit secagg.frac_bits=%d for %d clients "
                        "(at most %.3g each): rejected", update.client_id, largest, self.fixed.frac_bits,
                        len(self.cohort), self.fixed.limit / len(self.cohort))
            self._count(Counters(rejected=1))
            return
        self._mask(update.client_id, self.fixed.encode(x), RING_BITS)

    def _mask(self, cid: int, encoded: torch.Tensor, bits: int) -> None:
        """Mask client ``cid``'s ring vector and add it in; its message is ``bits`` per entry of
        the vector part (the counters always take the full ring)."""
        masked = encoded.add_(self.keys[cid].mask(cid, self.publics, self.round_idx, self.length))
        if self.recover:
            masked.add_(self_mask(self.seeds[cid], self.round_idx, self.length))
        ring(self.buf[:self.length].add_(ring(masked)))
        self.buf[self.length + WIDTH + self.slot[cid]] = 1
        head = self.uplink.head if bits < RING_BITS else 0  # the entries carried as codes
        self._count(Counters(uplink_bytes=-(-head * bits // 8) + (self.length - head) * RING_BITS // 8))

    def _send_quantized(self) -> None:
        """Collective: the cohort's scale and largest weight; each held client's codes, times its
        weight, masked. The ring needs only ``code_bits`` bits for the sum of the codes: the sum
        modulo 2^48 taken modulo 2^code_bits is the same exact integer, so a message of
        ``code_bits`` per entry would do, and is what is counted."""
        codec = self.uplink.codec
        assert isinstance(codec, Quantize)
        self.scale = self.uplink.scale(self.comm, [x for _, x, _ in self.pending])
        weight = self.comm.all_reduce_max(max((float(c.weight) for _, _, c in self.pending), default=0.0))
        self.code_bits = max(1, math.ceil(math.log2(len(self.cohort) * max(weight, 1.0) * codec.levels + 1)))
        head = self.uplink.head
        for cid, x, counters in self.pending:
            w = float(counters.weight)
            if w != round(w):
                raise ValueError(f"secure aggregation of quantized updates needs integer weights, got {w}")
            codes = codec.codes(x[:head], self.uplink.key(cid), self.scale).double().mul_(w).round_().long().cpu()
            rest = self.fixed.encode(torch.cat([x[head:].double() * w, counters.encode(x.device, torch.float64)]).cpu())
            self._mask(cid, torch.cat([codes, rest]), self.code_bits)
        self.pending.clear()

    def drop(self, client_id: int, late: bool = False) -> None:
        self._count(Counters(late=1) if late else Counters(dropped=1))

    def combine(self, round_idx: int, stop: bool = False) -> Combined:
        if self.uplink.active:
            self._send_quantized()
        self.uplink.flush()
        self._count(Counters(stop=int(stop)))
        total = self.comm.all_reduce_sum(self.buf.to(self.device)).cpu()
        nbytes = total.numel() * total.element_size() * self.comm.world_size + self.protocol_bytes
        clear = Counters.decode(total[self.length:self.length + WIDTH].double())
        sent = total[self.length + WIDTH:].tolist()
        survivors = [cid for cid, s in zip(self.cohort, sent, strict=True) if s]
        missing = [cid for cid, s in zip(self.cohort, sent, strict=True) if not s]
        failed = bool(missing) and (not self.recover or len(survivors) < self.t)
        aggregate, masked = torch.zeros(self.vdim, dtype=torch.float64), Counters()
        if failed:
            if self.comm.is_main:
                why = (f"only {len(survivors)} sent, fewer than the threshold of {self.t}" if self.recover else
                       "secagg.dropout=fail")
                log.warning("round %d: secure aggregation failed: client(s) %s of the %d sampled sent no masked input "
                            "after key agreement (dropped, late or rejected) and their masks cannot be removed (%s); "
                            "the global model is unchanged", round_idx + 1, missing, len(self.cohort), why)
            masked = Counters(clients=len(survivors))
        else:
            masked_sum = total[:self.length]
            if self.recover and survivors:
                masked_sum = masked_sum - self._unmask(survivors, missing)
                nbytes += self.reveal_bytes
            out = self.fixed.decode(ring(masked_sum))
            aggregate, masked = out[:self.vdim], Counters.decode(out[self.vdim:])
            if self.uplink.active:  # exact integer sums of weighted codes, modulo 2^code_bits
                head = self.uplink.head
                codes = ring(masked_sum)[:head].bitwise_and((1 << self.code_bits) - 1)
                summed = self.uplink.codec.dequantize(codes.double(), masked.weight, self.scale)  # type: ignore[attr-defined]
                aggregate = torch.cat([summed, aggregate[head:]])
        counters = masked.replace(rejected=clear.rejected, dropped=clear.dropped, late=clear.late, stop=clear.stop,
                                  uplink_bytes=clear.uplink_bytes)
        return Combined(aggregate, counters, nbytes, failed=failed, summed=True)  # float64: divided in the server step

    def _unmask(self, survivors: list[int], missing: list[int]) -> torch.Tensor:
        """Collective: survivors reveal their share of each survivor's self-mask seed and of each
        missing client's mask key (never both for one client); every rank rebuilds the secrets
        from ``t`` shares and returns the masks to take out of the sum."""
        gone, alive = set(missing), set(survivors)
        reveal = {}
        for v in (c for c in self.hosted if c in alive):
            for u in self.cohort:
                payload = self.inbox[(u, v)] if u == v else unseal(
                    self.enc[v].agree(self.enc_publics[u]), u, v, self.round_idx, self.inbox[(u, v)])
                share = payload[:_SHARE] if u in gone else payload[_SHARE:]
                reveal[(u, v)] = int.from_bytes(share, "big")
        revealed: dict[tuple[int, int], int] = {}
        for part in self.comm.all_gather_object(reveal):
            revealed.update(part)
        self.reveal_bytes = _SHARE * len(revealed)
        correction = torch.zeros(self.length, dtype=torch.int64)
        helpers = survivors[:self.t]
        for u in self.cohort:
            secret = combine({self.slot[v] + 1: revealed[(u, v)] for v in helpers})
            if u not in gone:
                ring(correction.add_(self_mask(secret, self.round_idx, self.length)))
                continue
            keys = ClientKeys(private=secret)
            for v in survivors:  # v added +m towards a larger id, -m towards a smaller one
                m = keys.pair_mask(u, v, self.publics[v], self.round_idx, self.length)
                ring(correction.add_(m) if v < u else correction.sub_(m))
        return correction


_SHARE = 66  # bytes of one share: an element of the field of 2^521 - 1
