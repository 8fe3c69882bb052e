"""The Walsh-Hadamard transform: its matrix, and the same bits from the CPU kernel and torch."""

from __future__ import annotations

import logging
import math
import sys

import numpy as np
import pytest
import torch

from fl.compression import hadamard, rounding, topk, wht
from fl.runtime import native


def _sylvester(m: int) -> torch.Tensor:
    i = torch.arange(m)
    both = i[:, None] & i[None, :]
    parity = sum((both >> b) & 1 for b in range(max(m.bit_length() - 1, 1))) % 2
    return (1 - 2 * parity).double()  # H[j, i] = (-1)^popcount(j & i)


@pytest.mark.parametrize("n, w", [(1, 1), (2, 1), (64, 1), (64, 8), (256, 4), (32, 32)])
def test_the_transform_is_the_hadamard_matrix_times_the_identity(n, w):
    m = n // w
    x, pre, post = (torch.randn(3, n, generator=torch.Generator().manual_seed(s)) for s in range(3))
    matrix = torch.kron(_sylvester(m), torch.eye(w, dtype=torch.float64)) / math.sqrt(m)
    expected = post.double() * ((pre.double() * x.double()) @ matrix.T)
    got = wht.transform(x.reshape(-1), [(n, w)] * 3, pre.reshape(-1), post.reshape(-1)).view(3, n)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", [0, 1, 5, 11, 14])
def test_the_plain_transform_of_a_block_of_2_k_is_the_sylvester_matrix(k):
    n = 1 << k
    rows = torch.eye(n)[: min(n, 64)] if k > 11 else torch.eye(n)  # e_j: the transform gives row j of H
    j, i = torch.arange(len(rows)), torch.arange(n)
    parity = sum(((j[:, None] & i[None, :]) >> b) & 1 for b in range(max(k, 1))) % 2
    expected = (1 - 2 * parity).float() / math.sqrt(n)  # H[j, i] = (-1)^popcount(j & i)
    got = wht.transform(rows.reshape(-1), [(n, 1)] * len(rows)).view(len(rows), n)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_numba_is_there_to_compile_the_cpu_kernel():
    assert wht._kernel() is not None, "numba is a dependency: without it a CPU runs the slow torch stages"


def test_without_numba_the_torch_stages_run_and_it_is_said(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    with caplog.at_level(logging.WARNING, logger="fl"):
        assert native.jit.__wrapped__() is None
    assert "numba is not installed" in caplog.text
    monkeypatch.setattr(native, "jit", lambda: None)
    assert wht._kernel.__wrapped__() is None and rounding._kernel.__wrapped__() is None
    assert topk._kernel.__wrapped__() is None


MIXED = [(1 << 17, 8)] * 3 + [(1 << 16, 4), (1 << 15, 2), (16384, 1), (64, 1), (8, 8), (2, 1), (1, 1)]


@pytest.mark.parametrize("blocks", [[(1, 1)], [(8, 8), (8, 8)], [(64, 2)] * 3, [(16384, 1)], MIXED],
                         ids=["one", "8x2", "64x3", "16384", "mixed"])
def test_the_kernel_and_the_torch_stages_give_the_same_bits(blocks):
    dim = sum(n for n, _ in blocks)
    g = torch.Generator().manual_seed(dim)
    x, pre, post = (torch.randn(dim, generator=g) * 100 for _ in range(3))
    for p, q in [(None, None), (pre, None), (None, post), (pre, post)]:
        assert torch.equal(wht.transform(x, blocks, p, q), wht._stages(x, blocks, p, q))


def test_the_threads_share_blocks_without_changing_a_bit():
    x = torch.randn(sum(n for n, _ in MIXED), generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = wht.transform(x, MIXED, x, None)
        torch.set_num_threads(3)
        shared = wht.transform(x, MIXED, x, None)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(alone, shared)
    starts = np.cumsum([0] + [n for n, _ in MIXED])
    for threads in (2, 3, 4):
        shares = wht._shares(starts, threads)
        assert [a for a, _ in shares[1:]] == [b for _, b in shares[:-1]] and shares[0][0] == 0
        assert shares[-1][1] == len(MIXED) and len(shares) == threads
        entries = [starts[b] - starts[a] for a, b in shares]
        assert max(abs(e - starts[-1] / threads) for e in entries) <= 1 << 17, "within a block of an equal share"


def test_bad_blocks_are_refused():
    with pytest.raises(ValueError, match="powers of two"):
        wht.transform(torch.zeros(12), [(12, 1)])
    with pytest.raises(ValueError, match="powers of two"):
        wht.transform(torch.zeros(16), [(16, 32)])
    with pytest.raises(ValueError, match="blocks of 16 entries for a vector of 17"):
        wht.transform(torch.zeros(17), [(16, 1)])


def test_a_large_block_mixes_each_of_its_interleaved_groups_of_2_14():
    dim = 3 * hadamard.MAX_BLOCK + 5000
    v = torch.zeros(dim)
    v[hadamard.MAX_BLOCK + 21] = 10.0  # in the second block, group 21 mod 8
    x = hadamard.rotate(v, seed=4, round_idx=1)
    assert hadamard.blocks(dim)[:3] == [hadamard.MAX_BLOCK] * 3
    spread = (x != 0).nonzero().squeeze(1)
    assert len(spread) == hadamard.MAX_GROUP
    assert bool(((spread - 21) % 8 == 0).all()) and int(spread.min()) >= hadamard.MAX_BLOCK
    assert float(x.abs().max()) == pytest.approx(10 / 128, rel=1e-6), "spread evenly over 2^14 entries"
    torch.testing.assert_close(hadamard.unrotate(x, dim, 4, 1), v, atol=1e-5, rtol=0)
