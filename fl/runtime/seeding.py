"""Explicit, derived randomness.

Every random stream in a run is a pure function of the run seed and a few labels
(round, client id, purpose), never of the rank that happens to compute it. That is
what makes the global model independent of the world size, and what makes resuming
exact: there is no stream state to save, only the seed.
"""

from __future__ import annotations

import hashlib

import torch

_MASK = (1 << 63) - 1


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed for the stream named by ``labels`` (e.g. ``("client", round, cid)``).

    Hash-based, so nearby seeds and labels give unrelated streams.
    """
    text = "/".join([str(int(seed)), *map(str, labels)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & _MASK


def generator(seed: int, *labels: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with :func:`derive_seed`."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *labels))
    return g


def seed_global(seed: int, *labels: object, device: torch.device | str = "cpu") -> None:
    """Seed the global generator that random ops on ``device`` draw from (dropout), and only it.

    ``torch.manual_seed`` would seed every device, and on a machine where CUDA (or XPU, MTIA) is
    not initialised it queues each seeding with a formatted stack trace: milliseconds per call,
    and a queue that grows with every client trained. One generator is all a client needs.
    """
    device = torch.device(device)
    value = derive_seed(seed, *labels)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()
                                      ].manual_seed(value)
    else:
        torch.default_generator.manual_seed(value)
