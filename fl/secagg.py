"""Pairwise additive masking for secure aggregation (``secagg=masking``), the maths only.

Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth. "Practical
Secure Aggregation for Privacy-Preserving Machine Learning." CCS 2017.
https://eprint.iacr.org/2017/281

Each round, every sampled client makes a fresh X25519 key pair and publishes its public
key. Clients ``u`` and ``v`` derive the same secret by key agreement, expand it with
HKDF-SHA256 into an AES-256 key, and AES-CTR turns that key into a mask of ring elements.
An update is encoded in fixed point into the ring Z_(2^48) (int64 tensors, arithmetic
modulo 2^48); ``u`` adds the mask it shares with ``v`` when ``u < v`` and subtracts it
otherwise, so in the sum over all clients of the round every mask cancels and only the
sum of the encoded updates is left. A single masked input is uniform in the ring: on
its own it says nothing about the update.

The aggregator that uses these pieces is :class:`fl.aggregation.SecureSumAggregator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

RING_BITS = 48
MODULUS = 1 << RING_BITS
_LOW = MODULUS - 1  # x & _LOW is x mod 2^48, also for negative int64 (two's complement)


def ring(x: torch.Tensor) -> torch.Tensor:
    """``x`` reduced modulo 2^48, in place (int64)."""
    return x.bitwise_and_(_LOW)


@dataclass(frozen=True)
class FixedPoint:
    """Signed fixed point with ``frac_bits`` fractional bits in Z_(2^48).

    A value ``x`` is stored as ``round(x * 2^frac_bits) mod 2^48``; a decoded sum is exact
    as long as it lies in ``(-2^47, 2^47) / 2^frac_bits`` (:attr:`limit`). Each encoding
    is off by at most ``2^-(frac_bits + 1)``.
    """

    frac_bits: int

    @property
    def limit(self) -> float:
        """The largest magnitude a decoded sum may have."""
        return float(2 ** (RING_BITS - 1 - self.frac_bits))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        scaled = torch.round(x.double() * float(2 ** self.frac_bits))
        return ring(scaled.to(torch.int64))

    def decode(self, r: torch.Tensor) -> torch.Tensor:
        """Ring elements to float64, reading ``[2^47, 2^48)`` as negative."""
        signed = torch.where(r >= MODULUS // 2, r - MODULUS, r)
        return signed.double() / float(2 ** self.frac_bits)


class ClientKeys:
    """One client's key pair for one round (fresh randomness from the OS, never from the run seed)."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()

    @property
    def public(self) -> bytes:
        return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def pair_mask(self, me: int, peer: int, peer_public: bytes, round_idx: int, length: int) -> torch.Tensor:
        """The mask ``me`` shares with ``peer`` this round: ``length`` ring elements, the same for both."""
        shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        lo, hi = sorted((me, peer))
        info = f"fl secagg mask round={round_idx} pair={lo},{hi}".encode()
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
        stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(8 * length))
        return ring(torch.from_numpy(np.frombuffer(stream, dtype=np.int64).copy()))

    def mask(self, me: int, publics: dict[int, bytes], round_idx: int, length: int) -> torch.Tensor:
        """The sum of ``me``'s signed pairwise masks with every other client in ``publics``."""
        total = torch.zeros(length, dtype=torch.int64)
        for peer, public in publics.items():
            if peer == me:
                continue
            m = self.pair_mask(me, peer, public, round_idx, length)
            ring(total.add_(m) if me < peer else total.sub_(m))
        return total
