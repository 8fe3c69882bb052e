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

For dropouts, Shamir t-of-n sharing (:func:`split`, :func:`combine`) of each client's mask
key and self-mask seed, with shares sealed by AES-GCM (:func:`seal`), lets the survivors
remove the masks a missing client leaves behind. The transport that runs the protocol is
:class:`fl.transport.secure_sum.SecureSumAggregator`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

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


def expand(secret: bytes, info: str, length: int) -> torch.Tensor:
    """``length`` pseudo-random ring elements from ``secret``: HKDF-SHA256 to an AES-256 key, then AES-CTR."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info.encode()).derive(secret)
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(8 * length))
    return ring(torch.from_numpy(np.frombuffer(stream, dtype=np.int64).copy()))


def self_mask(seed: bytes, round_idx: int, length: int) -> torch.Tensor:
    """A client's own mask (double masking), removed only once enough survivors reveal ``seed``."""
    return expand(seed, f"fl secagg self mask round={round_idx}", length)


class ClientKeys:
    """One client's X25519 key pair for one round: fresh from the OS, never from the run seed
    (``private`` rebuilds a key from its 32 bytes, as the server does for a dropped client)."""

    def __init__(self, private: bytes | None = None) -> None:
        self._private = X25519PrivateKey.generate() if private is None else X25519PrivateKey.from_private_bytes(private)

    @property
    def public(self) -> bytes:
        return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def private(self) -> bytes:
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def agree(self, peer_public: bytes) -> bytes:
        return self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))

    def pair_mask(self, me: int, peer: int, peer_public: bytes, round_idx: int, length: int) -> torch.Tensor:
        """The mask ``me`` shares with ``peer`` this round: ``length`` ring elements, the same for both."""
        lo, hi = sorted((me, peer))
        return expand(self.agree(peer_public), f"fl secagg mask round={round_idx} pair={lo},{hi}", length)

    def mask(self, me: int, publics: dict[int, bytes], round_idx: int, length: int) -> torch.Tensor:
        """The sum of ``me``'s signed pairwise masks with every other client in ``publics``
        (``+`` towards larger ids, ``-`` towards smaller ones)."""
        total = torch.zeros(length, dtype=torch.int64)
        for peer, public in publics.items():
            if peer == me:
                continue
            m = self.pair_mask(me, peer, public, round_idx, length)
            ring(total.add_(m) if me < peer else total.sub_(m))
        return total


# Shamir t-of-n secret sharing over the prime field of the Mersenne prime 2^521 - 1, wide
# enough for a 32-byte key or seed. Share i is the point (i, f(i)) of a random polynomial
# of degree t - 1 with f(0) = secret; any t points give f(0), fewer say nothing about it.
PRIME = (1 << 521) - 1


def split(secret: bytes, n: int, t: int) -> list[int]:
    """Shares ``f(1) .. f(n)`` of ``secret``; any ``t`` of them rebuild it."""
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares.append(y)
    return shares


def combine(points: dict[int, int], size: int = 32) -> bytes:
    """The secret from ``{x: f(x)}`` (at least t points) by Lagrange interpolation at 0."""
    secret = 0
    for xi, yi in points.items():
        num = den = 1
        for xj in points:
            if xj != xi:
                num = num * -xj % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * size):
        raise ValueError(f"the shares do not rebuild a {size}-byte secret: fewer than t of them, or corrupted")
    return secret.to_bytes(size, "big")


def seal(key: bytes, sender: int, receiver: int, round_idx: int, plaintext: bytes) -> bytes:
    """Authenticated encryption of a share for one receiver (AES-256-GCM; the nonce names the direction)."""
    return _share_cipher(key, round_idx).encrypt(_nonce(sender, receiver), plaintext, None)


def unseal(key: bytes, sender: int, receiver: int, round_idx: int, ciphertext: bytes) -> bytes:
    return _share_cipher(key, round_idx).decrypt(_nonce(sender, receiver), ciphertext, None)


def _share_cipher(key: bytes, round_idx: int) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=f"fl secagg shares round={round_idx}".encode()).derive(key))


def _nonce(sender: int, receiver: int) -> bytes:
    return sender.to_bytes(6, "big") + receiver.to_bytes(6, "big")
