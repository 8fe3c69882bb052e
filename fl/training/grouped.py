"""Many clients' copies of a sequential model as one computation on a CPU: grouped convolutions
in channels-last layout and batched matrix products, differentiated by plain autograd.

``torch.func.vmap`` turns a convolution over stacked weights into a grouped convolution in the
default (NCHW) layout, where a CPU's convolution and pooling kernels are slow for the few channels
of cross-device models. For the seed CNN, a chunk of 25 clients x 10 images took about 40 ms a
step on one thread under ``vmap`` and about 24 ms here. The layout here:

* images of ``N`` clients are one ``[B, N*C, H, W]`` tensor in channels-last memory: client ``n``'s
  channels are ``n*C .. n*C + C - 1``, so a convolution with ``groups = N * conv.groups`` applies
  each client's own filters to its own images, and pooling and activations, being per channel or
  per entry, need nothing else;
* vectors (after ``nn.Flatten``, or a model's flat input) are ``[N, B, F]``, and ``nn.Linear`` is a
  batched matrix product with each client's weights.

Each client's loss depends on its own weights only, so the gradient of the sum of the clients'
losses with respect to the stacked weights is every client's own gradient. The result equals
``vmap`` over the clients up to float rounding; a client's arithmetic does not depend on how many
clients share its chunk (tested), except that a single client would run an ungrouped convolution:
:meth:`fl.training.batched.BatchedTrainer._lanes` runs a lone client as two lanes.

Supported: ``nn.Sequential`` models (nested ones flattened) made of ``nn.Conv2d`` (zero padding),
``nn.Linear``, ``nn.Flatten`` (of everything but the batch), pooling layers, parameter-free
activations and ``nn.Dropout`` (its masks given, one per call). Anything else trains under
``vmap`` (:func:`plan` says why).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CL = torch.channels_last
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
               nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
               nn.Identity)


def leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers of a sequential model in call order, with their qualified names (nested
    ``nn.Sequential`` flattened); a non-sequential module is one layer."""
    if type(module) is not nn.Sequential:
        return [("", module)]
    out = []
    for name, child in module.named_children():
        out += [(f"{name}.{sub}" if sub else name, m) for sub, m in leaves(child)]
    return out


def why_not(module: nn.Module, input_shape: Sequence[int]) -> str | None:
    """Why ``module`` cannot run grouped (it then runs under ``vmap``), or ``None``."""
    if type(module) is not nn.Sequential:
        return f"{type(module).__name__} is not an nn.Sequential"
    rank = len(input_shape)  # of one example
    for name, m in leaves(module):
        if type(m) is nn.Conv2d or isinstance(m, POOLS):
            if rank != 3:
                return f"layer {name} ({type(m).__name__}) gets {rank}-d examples, not [C, H, W]"
            if type(m) is nn.Conv2d and m.padding_mode != "zeros":
                return f"layer {name} pads with {m.padding_mode!r}"
            if getattr(m, "return_indices", False):
                return f"layer {name} returns indices"
        elif type(m) is nn.Linear:
            if rank != 1:
                return f"layer {name} (Linear) gets {rank}-d examples"
        elif type(m) is nn.Flatten:
            if (m.start_dim, m.end_dim) != (1, -1):
                return f"layer {name} flattens dimensions {m.start_dim}..{m.end_dim}, not all but the batch"
            rank = 1
        elif not (type(m) in ACTIVATIONS or type(m) is nn.Dropout):
            return f"layer {name} is a {type(m).__name__}"
    return None


def _image(rows: torch.Tensor) -> torch.Tensor:
    """``[N, B, C, H, W]`` as ``[B, N*C, H, W]``, channels-last."""
    n, b, c, h, w = rows.shape
    return rows.transpose(0, 1).reshape(b, n * c, h, w).contiguous(memory_format=CL)


def _rows(image: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, N*C, H, W]`` as ``[N, B, C, H, W]`` (a view)."""
    return image.unflatten(1, (n, image.shape[1] // n)).transpose(0, 1)


class Grouped:
    """A sequential model's forward pass for ``N`` clients at once (see the module docstring)."""

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        """``names``: the order of the stacked parameters :meth:`forward` gets (``named_parameters``')."""
        index = {name: i for i, name in enumerate(names)}
        self.layers = [(m, index.get(f"{name}.weight"), index.get(f"{name}.bias")) for name, m in leaves(module)]

    def forward(self, params: Sequence[torch.Tensor], x: torch.Tensor, masks: Sequence[torch.Tensor] = ()
                ) -> torch.Tensor:
        """Outputs ``[N, B, ...]`` of ``x`` (``[N, B, *example]``) under the stacked ``params``
        (``[N, *shape]`` each); ``masks``: each dropout call's ``[N, B, *shape]``, in call order."""
        n = x.shape[0]
        rows: torch.Tensor | None = x
        image: torch.Tensor | None = None
        pending = iter(masks)
        for m, wi, bi in self.layers:
            if type(m) is nn.Conv2d or isinstance(m, POOLS):
                if image is None:
                    image, rows = _image(rows), None  # type: ignore[arg-type]
                if type(m) is nn.Conv2d:
                    w = params[wi]  # type: ignore[index]
                    w = w.reshape(n * w.shape[1], *w.shape[2:]).contiguous(memory_format=CL)
                    b = None if bi is None else params[bi].reshape(-1)
                    image = F.conv2d(image, w, b, m.stride, m.padding, m.dilation, n * m.groups)
                else:
                    image = m(image)
            elif type(m) is nn.Flatten:
                source = rows if image is None else _rows(image, n)
                rows, image = source.reshape(n, source.shape[1], -1), None
            elif type(m) is nn.Linear:
                w = params[wi].transpose(1, 2)  # type: ignore[index]
                rows = torch.bmm(rows, w) if bi is None else torch.baddbmm(params[bi].unsqueeze(1), rows, w)
            elif type(m) is nn.Dropout:
                if m.p == 0:
                    continue
                mask = next(pending)
                if image is None:
                    rows = rows * mask
                else:
                    image = image * _image(mask)
            elif image is None:
                rows = m(rows)
            else:
                image = m(image)
        return _rows(image, n) if rows is None else rows  # type: ignore[arg-type]
