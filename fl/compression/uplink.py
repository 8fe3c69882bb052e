"""The client side of compression: what a hosting rank does to each client's vector before it
is added in (all-reduce), put in a row (gather) or masked (secure aggregation).

For a client ``c`` of round ``r`` with update ``v`` (clipped first under DP):

1. error feedback (codecs that keep a residual): ``u = v + e_c``, ``e_c`` what ``c`` did not send
   the last time it was sampled (zero at first);
2. into the coded space (the rotation, when the codec rotates);
3. encode, with the cohort's shared scale when the codec needs one (one max-reduction over the
   ranks, so a rank holds its clients' vectors until every client of the round has trained);
4. what the server decodes is what is aggregated; ``e_c <- u - decoded`` is saved for ``c`` in
   a :class:`~fl.training.store.ClientStore` of its own, which is crash-consistent: a resumed
   round reads the residuals written before it, so resuming stays exact. Where only this rank
   ever hosts ``c`` (one rank, or per-site data) the residual stays in memory and is written when
   a checkpoint is (``fl.residual_memory_mb``); otherwise its file is written by the store's
   writer thread while the rank goes on with its next clients, and :meth:`Uplink.flush` (the
   transports call it before the round's collective) waits for it.

The message's exact byte count (:attr:`fl.compression.codecs.Encoded.nbytes`) plus the
counters' header is what the client sends; the round's ``uplink_bytes`` sums it over clients.
"""

from __future__ import annotations

import torch

from fl.compression.codecs import Codec, Encoded, Key, NoCompression
from fl.runtime.comm import Comm
from fl.training.store import ClientStore


class Uplink:
    """Compression of one round's client vectors (``dim`` entries each) on one rank."""

    def __init__(self, codec: Codec | None, seed: int, round_idx: int, dim: int, residuals: ClientStore | None = None,
                 head: int | None = None) -> None:
        """``dim``: a client vector's length; only its first ``head`` entries (default: all) are
        compressed. The rest (a strategy's scalars: FedNova's step count, a cluster id) travel as
        float32."""
        self.codec = codec or NoCompression()
        self.seed, self.round_idx, self.dim = int(seed), int(round_idx), int(dim)
        self.head = self.dim if head is None else int(head)
        self.residuals = residuals
        self.unsent: dict[int, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return not isinstance(self.codec, NoCompression)

    def key(self, cid: int) -> Key:
        return Key(self.seed, self.round_idx, cid)

    def prepare(self, cid: int, v: torch.Tensor) -> torch.Tensor:
        """Steps 1-2: ``v`` plus the client's residual, its head in the coded space."""
        if not self.active:
            return v
        head = v[:self.head]
        if self.codec.keeps_residual and self.residuals is not None:
            state = self.residuals.load(cid, self.round_idx, v.device)
            # u = e + v (v + e bit for bit) in a tensor of its own (the loaded residual's): the codec
            # may turn it into the new residual in place
            head = head.clone() if state is None else state["residual"].to(head).add_(head)
            self.unsent[cid] = head
        coded = self.codec.forward(head, self.key(cid))
        return coded if self.head == len(v) else torch.cat([coded, v[self.head:]])

    def scale(self, comm: Comm, vectors: list[torch.Tensor]) -> float:
        """Collective (codecs with a shared scale): the largest head entry over the round's cohort."""
        key = Key(self.seed, self.round_idx)
        local = max((self.codec.local_scale(x[:self.head], key) for x in vectors), default=0.0)
        return comm.all_reduce_max(local)

    def encode(self, cid: int, x: torch.Tensor, scale: float = 0.0) -> tuple[Encoded, int]:
        """Step 3: the message of the head and the bytes of the whole vector's message."""
        enc = self.codec.encode(x[:self.head], self.key(cid), scale)
        return enc, enc.nbytes + 4 * (len(x) - self.head)

    def add_codes(self, cid: int, x: torch.Tensor, scale: float, out: torch.Tensor, weight: float) -> int:
        """Step 3 for a quantizer, without building the message: ``out += weight *`` the head's
        integer codes; returns the bytes of the whole vector's message."""
        self.codec.add_codes(out, x[:self.head], self.key(cid), scale, weight)  # type: ignore[attr-defined]
        return self.codec.message_bytes(self.head) + 4 * (len(x) - self.head)  # type: ignore[attr-defined]

    def transmit(self, cid: int, x: torch.Tensor, scale: float = 0.0) -> tuple[Encoded, int]:
        """Steps 3-4 without decoding: the head's message and the whole vector's bytes; the
        client's new residual is saved. ``x``'s head may be consumed (it can be the residual's
        storage): read the message, and ``x``'s tail, only."""
        enc, nbytes = self.encode(cid, x, scale)
        if cid in self.unsent and self.residuals is not None:
            residual = self.codec.residual(self.unsent.pop(cid), enc, self.key(cid))
            self.residuals.save(cid, self.round_idx, {"residual": residual}, wait=False)
        return enc, nbytes

    def flush(self) -> None:
        """Wait until this rank's residuals of the round are on disk (not a collective; the
        transports call it before the round's collective, so that whichever rank hosts a client
        next round reads its complete file)."""
        if self.residuals is not None:
            self.residuals.flush()

    def send(self, cid: int, x: torch.Tensor, scale: float = 0.0) -> tuple[torch.Tensor, int]:
        """Steps 3-4: the decoded vector (head in the coded space) and the message's bytes."""
        if not self.active:
            return x, 4 * len(x)
        tail = x[self.head:]
        enc, nbytes = self.transmit(cid, x, scale)
        decoded = self.codec.decode(enc, self.key(cid)).to(x)
        return (decoded if self.head == len(x) else torch.cat([decoded, tail])), nbytes

    def back(self, x: torch.Tensor) -> torch.Tensor:
        """Out of the coded space (a decoded vector or a sum of them: the rotation is linear)."""
        if not self.active:
            return x
        head = self.codec.backward(x[:self.head], self.head, Key(self.seed, self.round_idx))
        return torch.cat([head.to(x.dtype), x[self.head:]])
