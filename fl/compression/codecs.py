"""Codecs: how one client's vector becomes a message, and back (pure functions of the vector,
the round's key and, for quantization, the cohort's shared scale).

Each codec is the ``_target_`` of a ``compression/uplink`` or ``compression/downlink`` option and
checks its keys when built. A message is an :class:`Encoded`: the tensors that travel and
``nbytes``, the exact length of :meth:`Codec.serialize` (values, indices or bitmap, scale,
count header), so byte counts are what a wire would carry, not ``numel * 4``.

* :class:`NoCompression`: float32 values.
* :class:`Cast`: float16 or bfloat16 values.
* :class:`Quantize`: stochastic uniform quantization to ``bits`` (1-8) on ``2^bits`` levels over
  ``[-s, s]``, ``s`` the largest entry of the round's cohort (Alistarh et al. 2017, QSGD, with a
  shared rather than a per-vector scale). Rounding up with probability equal to the fractional
  position makes it unbiased; the variance of entry ``x`` is ``d^2 p (1 - p)``, ``d = 2s/(2^bits-1)``
  and ``p`` the fractional part of ``(x + s)/d``. With one scale for the cohort, quantized vectors
  add up as integers: that is what lets them ride an all-reduce or secure aggregation's ring.
  ``rotate=true`` first applies the seeded Hadamard rotation of :mod:`fl.compression.hadamard`.
* :class:`TopK`: the ``fraction`` of entries largest in magnitude, as values plus int32 indices
  (or a bitmap, when that is shorter). Biased; with ``error_feedback`` (Stich et al. 2018,
  Karimireddy et al. 2019) each client keeps what it did not send and adds it next time.
* :class:`RandK`: the same random ``fraction`` of coordinates for every client of a round (drawn
  from the seed and the round, so no indices travel), scaled by ``dim/k``: unbiased, and a sum.
  With ``bits``, the kept values are quantized as :class:`Quantize` quantizes (the cohort's
  largest kept entry as the shared scale): ``fraction=0.25, bits=4`` sends one bit per entry.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from fl.compression import hadamard, rounding, topk
from fl.errors import ConfigError
from fl.runtime.seeding import derive_seed

DIRECTIONS = ("uplink", "downlink")


@dataclass(frozen=True)
class Key:
    """Where a message's randomness comes from: the run seed, the round and the sender
    (``client = -1``: the server, on the downlink)."""

    seed: int
    round_idx: int
    client: int = -1


@dataclass(frozen=True)
class Encoded:
    """One message: ``parts`` travel; ``dim`` is the length of the vector it decodes to."""

    parts: dict[str, torch.Tensor]
    dim: int
    nbytes: int


@dataclass(frozen=True)
class Codec:
    """No compression (``compression/uplink=none``): float32 values. Base of the other codecs.

    Class attributes say what the codec preserves: ``summable`` (messages of a cohort with the
    same shared parameters add up entrywise, so the codec can ride a sum: an all-reduce, or
    secure aggregation's ring when the values are integers), ``shared_scale`` (encoding needs the
    cohort's largest entry, one max-reduction per round), ``rotates`` (encoding works in the
    rotated space, as long as the vector; the sum is rotated back once).
    """

    direction: str = field(default="uplink", kw_only=True)
    summable = True
    shared_scale = False
    integer = False  # the summable values are integers (secure aggregation's ring can carry them)

    @property
    def key(self) -> str:
        return f"compression.{self.direction}"

    @property
    def name(self) -> str:
        return "none"

    @property
    def rotates(self) -> bool:
        return False

    @property
    def keeps_residual(self) -> bool:
        """Whether each sender keeps what it did not send and adds it next time (error feedback)."""
        return False

    def forward(self, v: torch.Tensor, key: Key) -> torch.Tensor:
        """Into the coded space (the rotation, when the codec rotates): linear."""
        return hadamard.rotate(v, key.seed, key.round_idx) if self.rotates else v

    def backward(self, x: torch.Tensor, dim: int, key: Key) -> torch.Tensor:
        """Out of the coded space: the inverse of :meth:`forward`."""
        return hadamard.unrotate(x, dim, key.seed, key.round_idx) if self.rotates else x

    def encode(self, x: torch.Tensor, key: Key, scale: float = 0.0) -> Encoded:
        v = x.float()
        return Encoded({"values": v}, len(x), 4 * len(x))

    def decode(self, enc: Encoded, key: Key) -> torch.Tensor:
        return enc.parts["values"].float()

    def local_scale(self, x: torch.Tensor, key: Key) -> float:
        """This sender's part of the shared scale (codecs with ``shared_scale``): the largest
        entry that its message quantizes; the cohort's scale is the largest over its senders."""
        return largest_magnitude(x)

    def add_decoded(self, out: torch.Tensor, enc: Encoded, key: Key, alpha: float) -> None:
        """``out += alpha * decode(enc)``, in ``out``'s dtype (a sum of decoded messages)."""
        out.add_(self.decode(enc, key).to(out.device), alpha=alpha)

    def residual(self, u: torch.Tensor, enc: Encoded, key: Key) -> torch.Tensor:
        """What a sender with error feedback keeps of ``u`` (in the original space) once ``enc``,
        the message of ``forward(u)``, is sent: ``u - backward(decode(enc))``. ``u`` is consumed:
        a codec may return it, changed in place."""
        return u - self.backward(self.decode(enc, key).to(u), enc.dim, key)

    def serialize(self, enc: Encoded) -> bytes:
        return _bytes(enc.parts["values"])


@dataclass(frozen=True)
class NoCompression(Codec):
    pass


CASTS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Cast(Codec):
    """``dtype`` (float16 or bfloat16) for transport; float16 saturates at its largest finite value."""

    dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.dtype not in CASTS:
            raise ConfigError(f"{self.key}.dtype", self.dtype, f"must be one of {', '.join(CASTS)}")

    @property
    def name(self) -> str:
        return {"float16": "fp16", "bfloat16": "bf16"}[self.dtype]

    def encode(self, x: torch.Tensor, key: Key, scale: float = 0.0) -> Encoded:
        dtype = CASTS[self.dtype]
        v = x.float()
        if dtype == torch.float16:
            big = torch.finfo(torch.float16).max
            v = v.clamp(-big, big)
        return Encoded({"values": v.to(dtype)}, len(x), 2 * len(x))


@dataclass(frozen=True)
class Quantize(Codec):
    """Stochastic uniform quantization to ``bits`` with the cohort's shared scale (module docstring)."""

    bits: int = 4
    rotate: bool = False
    shared_scale = True
    integer = True

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ConfigError(f"{self.key}.bits", self.bits, "must be an integer from 1 to 8")

    @property
    def name(self) -> str:
        return f"{self.bits}bit" + ("+rotation" if self.rotate else "")

    @property
    def rotates(self) -> bool:
        return self.rotate

    @property
    def levels(self) -> int:
        """The largest code: codes are 0 .. ``2^bits - 1``."""
        return (1 << self.bits) - 1

    def step(self, scale: float) -> float:
        return 2 * scale / self.levels

    def codes(self, x: torch.Tensor, key: Key, scale: float) -> torch.Tensor:
        """Integer codes of ``x`` (float32, exact integers): ``x ~ -scale + step * code``, unbiased.

        Stochastic rounding of ``x / step + levels / 2`` (:mod:`fl.compression.rounding`: one
        pass on a CPU, with noise drawn from the message's own key): rounded up with probability
        equal to its fractional part, to within 2^-16. Entries beyond ``[-scale, scale]`` get the
        end codes, as if clamped first.
        """
        if scale <= 0:
            return torch.zeros(len(x), dtype=torch.float32, device=x.device)
        return rounding.codes(x, _noise_key(key), self.levels / (2 * scale), self.levels / 2, self.levels)

    def add_codes(self, out: torch.Tensor, x: torch.Tensor, key: Key, scale: float, weight: float) -> None:
        """``out += weight * codes(x, key, scale)``, without a vector of codes where it can (a float32
        ``out`` on a CPU: the products and sums must then be exact integers below 2^24)."""
        if scale <= 0:
            return
        rounding.add_codes(out, x, _noise_key(key), self.levels / (2 * scale), self.levels / 2, self.levels, weight)

    def message_bytes(self, dim: int) -> int:
        """The packed codes and the float32 scale."""
        return -(-dim * self.bits // 8) + 4

    def dequantize(self, code_sum: torch.Tensor, count: float, scale: float, in_place: bool = False) -> torch.Tensor:
        """The sum of ``count`` decoded vectors from the sum of their codes (weights: ``count`` is
        the sum of the weights and ``code_sum`` the weighted sum of codes). ``in_place``: in
        ``code_sum``'s own memory (float64), which is returned."""
        if scale <= 0:
            return code_sum.zero_() if in_place else torch.zeros_like(code_sum, dtype=torch.float32)
        if in_place:
            return code_sum.mul_(self.step(scale)).sub_(scale * count)
        return (code_sum.double() * self.step(scale)).sub_(scale * count)

    def encode(self, x: torch.Tensor, key: Key, scale: float = 0.0) -> Encoded:
        codes = self.codes(x, key, scale).to(torch.uint8)
        return Encoded({"codes": codes, "scale": torch.tensor(float(scale))}, len(x), self.message_bytes(len(x)))

    def decode(self, enc: Encoded, key: Key) -> torch.Tensor:
        return self.dequantize(enc.parts["codes"], 1.0, float(enc.parts["scale"])).float()

    def serialize(self, enc: Encoded) -> bytes:
        codes = enc.parts["codes"].cpu().numpy().astype(np.uint8)
        bits = (codes[:, None] >> np.arange(self.bits, dtype=np.uint8)) & 1
        return np.packbits(bits.reshape(-1)).tobytes() + _bytes(enc.parts["scale"].reshape(1))


@dataclass(frozen=True)
class TopK(Codec):
    """The ``fraction`` of largest-magnitude entries; ``error_feedback`` keeps the rest for next time."""

    fraction: float = 0.01
    error_feedback: bool = True
    summable = False

    def __post_init__(self) -> None:
        _check_fraction(self.key, self.fraction)

    @property
    def name(self) -> str:
        return f"top-{self.fraction:g}" + ("+EF" if self.error_feedback else "")

    @property
    def keeps_residual(self) -> bool:
        return bool(self.error_feedback)

    def k(self, dim: int) -> int:
        return max(1, min(dim, math.ceil(self.fraction * dim)))

    def encode(self, x: torch.Tensor, key: Key, scale: float = 0.0) -> Encoded:
        k = self.k(len(x))
        idx = topk.top_indices(x, k)
        values = x[idx].float()
        return Encoded({"indices": idx.to(torch.int32), "values": values}, len(x),
                       4 + 4 * k + min(4 * k, -(-len(x) // 8)))

    def decode(self, enc: Encoded, key: Key) -> torch.Tensor:
        out = torch.zeros(enc.dim, device=enc.parts["values"].device)
        out[enc.parts["indices"].long()] = enc.parts["values"]
        return out

    def add_decoded(self, out: torch.Tensor, enc: Encoded, key: Key, alpha: float) -> None:
        """``out += alpha * decode(enc)`` at the message's ``k`` indices only (no dense vector)."""
        values = enc.parts["values"]
        out.index_add_(0, enc.parts["indices"].to(out.device, torch.long), values.to(out.dtype), alpha=alpha)

    def residual(self, u: torch.Tensor, enc: Encoded, key: Key) -> torch.Tensor:
        """``u`` with the sent entries set to zero, in place: the message holds them exactly
        (float32 values of float32 ``u``), so this is ``u - decode(enc)`` bit for bit."""
        return u.index_fill_(0, enc.parts["indices"].to(u.device, torch.long), 0.0)

    def serialize(self, enc: Encoded) -> bytes:
        idx = enc.parts["indices"].cpu().numpy().astype(np.int32)
        k, dim = len(idx), enc.dim
        header = np.array([k], dtype="<i4").tobytes()
        if 4 * k <= -(-dim // 8):
            where = idx.astype("<i4").tobytes()
        else:
            bitmap = np.zeros(dim, dtype=np.uint8)
            bitmap[idx] = 1
            where = np.packbits(bitmap).tobytes()
        return header + where + _bytes(enc.parts["values"])


@dataclass(frozen=True)
class RandK(Codec):
    """The round's random ``fraction`` of coordinates, scaled by ``dim/k`` (unbiased); with ``bits``,
    their values stochastically quantized on the cohort's shared scale (unbiased too)."""

    fraction: float = 0.1
    bits: int | None = None

    def __post_init__(self) -> None:
        _check_fraction(self.key, self.fraction)
        if self.bits is not None:
            Quantize(self.bits, direction=self.direction)  # checks compression.<direction>.bits
        if self.direction == "downlink":
            raise ConfigError(f"{self.key}._target_", "randk", "is an uplink codec: rescaled random coordinates "
                              "would overshoot the model clients hold; use quantize, topk, fp16 or bf16 downlink")

    @property
    def name(self) -> str:
        return f"rand-{self.fraction:g}" + ("" if self.bits is None else f"+{self.bits}bit")

    @property
    def shared_scale(self) -> bool:  # type: ignore[override]
        return self.bits is not None

    @property
    def quantizer(self) -> Quantize:
        """How the kept values are quantized (only with ``bits``)."""
        return Quantize(int(self.bits), direction=self.direction)  # type: ignore[arg-type]

    def k(self, dim: int) -> int:
        return max(1, min(dim, math.ceil(self.fraction * dim)))

    def indices(self, dim: int, key: Key, device: torch.device | str) -> torch.Tensor:
        return _round_coordinates(key.seed, key.round_idx, dim, self.k(dim)).to(device)

    def local_scale(self, x: torch.Tensor, key: Key) -> float:
        """The largest of the round's coordinates of ``x``: what the cohort's shared scale bounds."""
        return largest_magnitude(x[self.indices(len(x), key, x.device)])

    def encode(self, x: torch.Tensor, key: Key, scale: float = 0.0) -> Encoded:
        k = self.k(len(x))
        values = x[self.indices(len(x), key, x.device)].float()
        if self.bits is None:
            return Encoded({"values": values.mul_(len(x) / k)}, len(x), 4 * k)
        codes = self.quantizer.codes(values, key, scale).to(torch.uint8)
        return Encoded({"codes": codes, "scale": torch.tensor(float(scale))}, len(x), self.quantizer.message_bytes(k))

    def _values(self, enc: Encoded) -> torch.Tensor:
        """The message's values at the round's coordinates, rescaled by ``dim/k``."""
        if self.bits is None:
            return enc.parts["values"]
        scaled = self.quantizer.dequantize(enc.parts["codes"], 1.0, float(enc.parts["scale"]))
        return scaled.mul_(enc.dim / self.k(enc.dim)).float()

    def decode(self, enc: Encoded, key: Key) -> torch.Tensor:
        values = self._values(enc)
        out = torch.zeros(enc.dim, device=values.device)
        out[self.indices(enc.dim, key, values.device)] = values
        return out

    def add_decoded(self, out: torch.Tensor, enc: Encoded, key: Key, alpha: float) -> None:
        """``out += alpha * decode(enc)`` on the round's coordinates only: the rest of the decoded
        vector is zero, so a sum need not build it (a tenth of the passes at ``fraction=0.1``)."""
        values = self._values(enc)
        out.index_add_(0, self.indices(enc.dim, key, out.device), values.to(out.dtype), alpha=alpha)

    def serialize(self, enc: Encoded) -> bytes:
        if self.bits is None:
            return _bytes(enc.parts["values"])
        return self.quantizer.serialize(enc)


def largest_magnitude(v: torch.Tensor) -> float:
    """``max |v|`` (0 for an empty vector; NaN if ``v`` has one), without a copy of ``v``."""
    if v.numel() == 0:
        return 0.0
    low, high = torch.aminmax(v)
    return max(-float(low), float(high)) if not (low.isnan() or high.isnan()) else math.nan


def all_finite(v: torch.Tensor) -> bool:
    """No entry of ``v`` is infinite or NaN (one reduction, without a boolean copy of ``v``)."""
    return math.isfinite(largest_magnitude(v))


def _noise_key(key: Key) -> int:
    """The 64-bit key of a message's stochastic rounding."""
    return derive_seed(key.seed, "quantize", key.round_idx, key.client)


@functools.lru_cache(maxsize=2)
def _round_coordinates(seed: int, round_idx: int, dim: int, k: int) -> torch.Tensor:
    """The round's ``k`` coordinates (sorted): drawn once per round and rank, not once per client,
    by numpy's PCG64 (a partial shuffle of ``k`` entries: about 2 ms for a tenth of a million
    coordinates, where a whole permutation took 11), on the CPU, so every device keeps the same ones."""
    rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "randk", round_idx)))
    return torch.from_numpy(rng.choice(dim, k, replace=False, shuffle=False)).sort().values


def _check_fraction(key: str, fraction: object) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"{key}.fraction", fraction, "must be a number in (0, 1]")


def _bytes(t: torch.Tensor) -> bytes:
    """Little-endian bytes of a tensor (16-bit floats through their int16 view)."""
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
