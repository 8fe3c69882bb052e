"""Stochastic rounding: the same codes from the CPU kernel and torch, and unbiased."""

from __future__ import annotations

import pytest
import torch

from fl.compression import rounding

KEYS = [0, 123_456_789_012_345_678, (1 << 63) - 1]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 300_001])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_kernel_and_torch_give_the_same_codes_in_any_number_of_threads(n, threads):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.01
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for key in KEYS:
            expected = rounding._torch_codes(x, key, 7.5 / 0.03, 7.5, 15)
            assert torch.equal(rounding.codes(x, key, 7.5 / 0.03, 7.5, 15), expected)
            out = torch.full((n,), 2.0)
            rounding.add_codes(out, x, key, 7.5 / 0.03, 7.5, 15, 3.0)
            assert torch.equal(out, 2 + 3 * expected)
    finally:
        torch.set_num_threads(before)


def test_a_float64_sum_gets_the_same_codes():
    x = torch.randn(1001, generator=torch.Generator().manual_seed(1))
    out = torch.zeros(1001, dtype=torch.float64)
    rounding.add_codes(out, x, 5, 100.0, 127.5, 255, 0.25)
    assert torch.equal(out, rounding._torch_codes(x, 5, 100.0, 127.5, 255).double() * 0.25)


def test_codes_stay_between_zero_and_levels_and_each_key_has_its_own_noise():
    x = torch.linspace(-2, 2, 10_001)  # beyond [-1, 1] on both sides
    a, b = rounding.codes(x, 1, 0.5, 0.5, 1), rounding.codes(x, 2, 0.5, 0.5, 1)
    assert a.min() == 0 and a.max() == 1 and torch.equal(a, a.round())
    assert torch.equal(a[x <= -1], torch.zeros_like(a[x <= -1])) and torch.equal(a[x >= 1], torch.ones_like(a[x >= 1]))
    assert torch.equal(a, rounding.codes(x, 1, 0.5, 0.5, 1)), "the same key, the same codes"
    inside = (x > -0.9) & (x < 0.9)
    assert (a[inside] != b[inside]).float().mean() > 0.3, "another key, other noise"


def test_rounding_up_happens_as_often_as_the_fractional_part():
    fractions = torch.arange(1, 16) / 16
    x = (3 + fractions).repeat_interleave(20_000)  # t = x (inv 1, offset 0)
    mean = rounding.codes(x, 7, 1.0, 0.0, 15).view(15, -1).mean(1)
    std = (fractions * (1 - fractions) / 20_000).sqrt()
    assert ((mean - 3 - fractions).abs() < 4 * std + 2 ** -16).all(), (mean - 3 - fractions)


def test_neighbouring_entries_and_keys_are_uncorrelated():
    x = torch.full((400_000,), 0.5)  # each code is a fair coin
    c = rounding.codes(x, 11, 1.0, 0.0, 1) - 0.5
    d = rounding.codes(x, 12, 1.0, 0.0, 1) - 0.5
    bound = 4 * 0.25 / len(x) ** 0.5
    assert abs(float(c.mean())) < 4 * 0.5 / len(x) ** 0.5
    assert abs(float((c[1:] * c[:-1]).mean())) < bound, "pairs share a hash: their halves must not correlate"
    assert abs(float((c[2:] * c[:-2]).mean())) < bound
    assert abs(float((c * d).mean())) < bound
