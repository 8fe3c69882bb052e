"""The round's counters: one typed record, carried as the tail of every transport's buffer.

Each transport moves numbers only: a client's weighted vector with its :class:`Counters`
encoded behind it, summed (all-reduce, secure sum) or gathered row by row. After the
collective the tail is decoded back into the record, and the server step
(:func:`fl.engine.server.server_step`) reads it. Nothing outside this module knows where a
counter sits in a tail; code that must address a counter column of many rows at once (the
gather path) asks :meth:`Counters.index`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class Counters:
    """What a round counts, summed over clients and ranks.

    ``weight``: the aggregation weights (samples, or 1 per client under DP); ``loss_sum`` and
    ``seen``: the training loss summed over the samples seen; ``clients``: updates aggregated;
    ``rejected``: non-finite (or unencodable) updates refused; ``dropped`` and ``late``: sampled
    clients that sent nothing; ``stop``: ranks asked to stop (SIGTERM, Ctrl-C), so every rank
    stops after the same round; ``unclipped``: DP clients whose update was within the clip norm;
    ``uplink_bytes``: the exact bytes of the clients' messages (:mod:`fl.compression.uplink`).
    """

    weight: float | torch.Tensor = 0.0
    loss_sum: float | torch.Tensor = 0.0
    seen: float | torch.Tensor = 0.0
    clients: float | torch.Tensor = 0.0
    rejected: float | torch.Tensor = 0.0
    dropped: float | torch.Tensor = 0.0
    late: float | torch.Tensor = 0.0
    stop: float | torch.Tensor = 0.0
    unclipped: float | torch.Tensor = 0.0
    uplink_bytes: float | torch.Tensor = 0.0

    @staticmethod
    def index(name: str) -> int:
        """The position of counter ``name`` in an encoded tail."""
        return NAMES.index(name)

    def encode(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tail: one entry per counter, in field order. Tensor values (a loss on the training
        device) stay where they are until the tail is built, with no host synchronisation."""
        values = [getattr(self, n) for n in NAMES]
        return torch.stack([v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor)
                            else torch.tensor(v, device=device, dtype=dtype) for v in values])

    @classmethod
    def decode(cls, tail: torch.Tensor) -> "Counters":
        """The record from an encoded tail (floats)."""
        return cls(*(float(v) for v in tail[:WIDTH].tolist()))

    def replace(self, **changes: float) -> "Counters":
        return dataclasses.replace(self, **changes)


NAMES = tuple(f.name for f in fields(Counters))
WIDTH = len(NAMES)  # entries of an encoded tail
