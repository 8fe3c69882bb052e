"""Grouped execution of many clients' sequential models (fl.training.grouped) equals each client's own
forward and backward pass, does not depend on how many clients share a chunk, and refuses by name
what it cannot run."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fl.models import cnn
from fl.training.grouped import Grouped, why_not


def _varied() -> nn.Module:
    """Every kind of layer the grouped path runs, with settings off the defaults."""
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, stride=2, padding=1, bias=False), nn.GELU(),
        nn.Sequential(nn.Conv2d(6, 8, 3, padding="same", groups=2), nn.MaxPool2d(3, stride=2, padding=1)),
        nn.Dropout(0.25), nn.Tanh(), nn.Conv2d(8, 4, 1, dilation=1), nn.AvgPool2d(2), nn.LeakyReLU(0.1),
        nn.Dropout(0.0), nn.Flatten(), nn.Linear(16, 12), nn.Dropout(0.5), nn.SiLU(), nn.Linear(12, 5, bias=False))


def _stacked(module: nn.Module, n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [p.detach()[None] + 0.1 * torch.randn(n, *p.shape, generator=g) for p in module.parameters()]


def _masks(n: int, b: int) -> list[torch.Tensor]:
    """Masks for _varied's three active dropout calls (p = 0.25 on [8, 4, 4], 0.5 on [12])."""
    g = torch.Generator().manual_seed(5)
    return [torch.empty(n, b, *shape).bernoulli_(1 - p, generator=g) / (1 - p)
            for p, shape in ((0.25, (8, 4, 4)), (0.5, (12,)))]


def _grads(grouped: Grouped, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, masks=()):
    leaves = [p.clone().requires_grad_() for p in params]
    out = grouped.forward(leaves, x, masks)
    losses = nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(len(x), -1).mean(1)
    return out.detach(), torch.autograd.grad(losses.sum(), leaves)


def _one_client(module: nn.Module, params: list[torch.Tensor], x: torch.Tensor, masks: list[torch.Tensor]):
    """Client ``i``'s forward pass alone (``params`` its own weights), dropout as the masks say."""
    names = [n for n, _ in module.named_parameters()]
    pending = iter(masks)
    hooks = [m.register_forward_hook(lambda _m, inputs, _out: inputs[0] * next(pending))
             for m in module.modules() if type(m) is nn.Dropout and m.p > 0]
    try:
        return functional_call(module.train(), dict(zip(names, params)), (x,))
    finally:
        for h in hooks:
            h.remove()


def test_grouped_equals_each_clients_own_pass_for_every_supported_layer():
    torch.manual_seed(0)
    module = _varied()
    assert why_not(module, (2, 16, 16)) is None
    n, b = 4, 6
    params = _stacked(module, n)
    x, y = torch.randn(n, b, 2, 16, 16), torch.randint(0, 5, (n, b))
    masks = _masks(n, b)
    grouped = Grouped(module, [name for name, _ in module.named_parameters()])
    out, grads = _grads(grouped, params, x, y, masks)
    for i in range(n):
        mine = [p[i].clone().requires_grad_() for p in params]
        own = _one_client(module, mine, x[i], [m[i] for m in masks])
        torch.testing.assert_close(out[i], own.detach(), rtol=1e-5, atol=1e-5)
        loss = nn.functional.cross_entropy(own, y[i])
        for g, want in zip(grads, torch.autograd.grad(loss, mine), strict=True):
            torch.testing.assert_close(g[i], want, rtol=1e-4, atol=1e-5)
    assert all(float(g.abs().sum()) > 0 for g in grads)
    dropped = [torch.ones_like(m) for m in masks]
    assert not torch.allclose(_grads(grouped, params, x, y, dropped)[0], out), "the masks act"


def test_a_clients_result_does_not_depend_on_how_many_share_its_chunk():
    """Bit for bit on one thread (as every rank of a multi-process run has by default): a client's
    chunk depends on the world size and the memory budget."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        module = cnn((1, 28, 28), 10)
        grouped = Grouped(module, [name for name, _ in module.named_parameters()])
        params = _stacked(module, 9)
        x, y = torch.randn(9, 10, 1, 28, 28), torch.randint(0, 10, (9, 10))
        out, grads = _grads(grouped, params, x, y)
        for k in (2, 3, 5):
            out_k, grads_k = _grads(grouped, [p[:k] for p in params], x[:k], y[:k])
            assert torch.equal(out_k, out[:k])
            assert all(torch.equal(a, b[:k]) for a, b in zip(grads_k, grads))
    finally:
        torch.set_num_threads(threads)


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.mark.parametrize("module, shape, reason", [
    (_Custom(), (4,), "_Custom is not an nn.Sequential"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")), (1, 8, 8), "layer 0 pads with 'reflect'"),
    (nn.Sequential(nn.Linear(8, 2)), (1, 8, 8), "layer 0 (Linear) gets 3-d examples"),
    (nn.Sequential(nn.Flatten(2), nn.Linear(64, 2)), (1, 8, 8), "layer 0 flattens dimensions 2..-1"),
    (nn.Sequential(nn.Flatten(), nn.Sequential(nn.LayerNorm(64))), (1, 8, 8), "layer 1.0 is a LayerNorm"),
    (nn.Sequential(nn.Conv2d(1, 2, 3)), (64,), "layer 0 (Conv2d) gets 1-d examples"),
    (nn.Sequential(nn.MaxPool2d(2, return_indices=True)), (1, 8, 8), "layer 0 returns indices"),
    (nn.Sequential(nn.Flatten(), nn.Dropout1d(0.2)), (1, 8, 8), "layer 1 is a Dropout1d"),
])
def test_what_cannot_run_grouped_is_named(module, shape, reason):
    got = why_not(module, shape)
    assert got is not None and got.startswith(reason), got
