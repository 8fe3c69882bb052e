"""2x2 max-pooling (stride 2) as four strided maxima: the same values and the same gradient as
``nn.MaxPool2d(2)``, several times faster on a CPU for the small images of cross-device models.

On a CPU, ``max_pool2d`` over a contiguous ``[N, C, H, W]`` tensor visits each window in a scalar
loop; for 250 images x 10 channels x 24 x 24 (a chunk of batched clients after the seed CNN's
first convolution) it took 8 ms forward on one thread, where a ReLU of the same tensor took
0.4 ms. Comparing the window's four strided views element-wise does the same in a few
vectorised passes (1.7 ms); the backward pass hands each output's source to ``max_pool2d``'s
own backward kernel (4.5 ms forward and backward, against 9.1 ms).

Ties are resolved as ``max_pool2d``'s CPU kernel resolves them: the gradient goes to the first
entry of the window, in row-major order, that holds its maximum, exactly where ``max_pool2d``
sends it (with ``torch.func``'s ``vmap`` too: the rule is generated from these tensor
operations). A window with a NaN gives NaN, as ``max_pool2d`` does; its gradient, NaN in any
case then, may go to another entry of the window.
"""

from __future__ import annotations

import torch
from torch import nn


_CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))  # a window's entries in the order max_pool2d reads them


class _MaxPool2x2(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        views = [x[..., i:h:2, j:w:2] for i, j in _CORNERS]
        best = torch.maximum(torch.maximum(views[0], views[1]), torch.maximum(views[2], views[3]))
        # the first corner that holds the maximum, as 0-3: which = n0 (1 + n1 (1 + n2)), nk = "corner k does not"
        n = [(v != best).view(torch.uint8) for v in views[:3]]
        which = n[2].add(1).mul_(n[1]).add_(1).mul_(n[0])
        return best, which

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (x,) = inputs
        ctx.save_for_backward(x, output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _unused: torch.Tensor) -> torch.Tensor:
        (x, which) = ctx.saved_tensors
        width = x.shape[-1]
        # each output's source as max_pool2d_with_indices gives it (row * width + column), then its kernel
        rows = torch.arange(which.shape[-2], device=which.device).mul_(2 * width)
        base = rows[:, None] + torch.arange(which.shape[-1], device=which.device).mul_(2)
        k = which.long()
        source = (k >> 1).mul_(width - 2).add_(k).add_(base)  # corner k: (k >> 1) * width + (k & 1)
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, source)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)``: the same values, and the same gradient, ties included (a window
    holding a NaN: NaN as well, its NaN gradient possibly on another entry)."""
    return _MaxPool2x2.apply(x)[0]


class MaxPool2x2(nn.Module):
    """Drop-in for ``nn.MaxPool2d(2)`` (kernel 2, stride 2, no padding or dilation, floor mode)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_2x2(x)


def replaceable(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.MaxPool2d`` that :class:`MaxPool2x2` computes exactly."""
    if type(module) is not nn.MaxPool2d:
        return False
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    return (pair(module.kernel_size) == (2, 2) and pair(module.stride or module.kernel_size) == (2, 2)
            and pair(module.padding) == (0, 0) and pair(module.dilation) == (1, 1)
            and not module.ceil_mode and not module.return_indices)
