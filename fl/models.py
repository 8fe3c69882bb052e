"""Model factories, chosen with ``model=NAME`` or ``model._target_=your.module.Factory``.

The contract (what :func:`build_model` does with ``model._target_``): the factory, a class or
a function, is called with the group's other keys as keyword arguments, plus

* ``input_shape``: one sample's shape, ``(C, H, W)`` for images or ``(F,)`` for feature vectors,
* ``num_classes``: the number of classes (the output width),

each only when its signature accepts it (by name, or through ``**kwargs``). It must return a
``torch.nn.Module`` that maps a batch ``[B, *input_shape]`` to logits ``[B, num_classes]``. The
weights are initialised from the run seed, identically on every rank. For example::

    torchrun --nproc_per_node=2 train.py model._target_=my_lab.nets.ResNet9 +model.width=64

The bundled factories:

* ``cnn``: the CNN of the PyTorch MNIST example and of the FL tutorials: conv 1->10 (5x5) ->
  max-pool 2 -> ReLU -> conv 10->20 (5x5) -> max-pool 2 -> ReLU -> fc 320->50 -> ReLU -> fc 10;
  21,840 parameters on 28x28 inputs. Needs inputs of at least 16x16.
* ``cnn_padded``: the same layers with 'same' padding, for small images such as the 8x8 digits;
  ``cnn_bn`` adds BatchNorm after each convolution (for FedBN).
* ``cnn_mcmahan``: McMahan et al. 2017's CNN (conv 32, conv 64, fc 512; 1,663,370 parameters on 28x28).
* ``mlp`` (McMahan et al.'s 2NN: 200-200) and ``logreg``: on images or on feature vectors.
* ``resnet18``: torchvision's, with a 3x3 stride-1 stem for 32x32 inputs.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Sequence

from omegaconf import DictConfig
from torch import nn

from fl.config.components import instantiate_component, locate
from fl.errors import ConfigError


def _image(input_shape: Sequence[int], name: str, min_size: int) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape[1:]) < min_size:
        hint = "; for small images use model=cnn_padded" if name == "cnn" else ""
        raise ConfigError("model", name, f"needs images [C, H, W] of at least {min_size}x{min_size}, the data gives "
                          f"{list(shape)}{hint}")
    return shape  # type: ignore[return-value]


def cnn(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    c, h, w = _image(input_shape, "cnn", 16)
    side = lambda n: ((n - 4) // 2 - 4) // 2  # noqa: E731 - two valid 5x5 convolutions, each pooled by 2
    return nn.Sequential(nn.Conv2d(c, 10, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(10, 20, 5), nn.MaxPool2d(2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(20 * side(h) * side(w), 50), nn.ReLU(),
                         nn.Linear(50, num_classes))


def _padded(shape: tuple[int, int, int], c1: int, c2: int, hidden: int, num_classes: int,
            batch_norm: bool = False) -> nn.Module:
    channels, height, width = shape
    layers: list[nn.Module] = []
    for c_in, c_out in ((channels, c1), (c1, c2)):
        layers.append(nn.Conv2d(c_in, c_out, 5, padding=2))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    flat = c2 * (height // 4) * (width // 4)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def cnn_padded(input_shape: Sequence[int], num_classes: int, batch_norm: bool = False) -> nn.Module:
    return _padded(_image(input_shape, "cnn_padded", 4), 10, 20, 50, num_classes, batch_norm)


def cnn_bn(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return _padded(_image(input_shape, "cnn_bn", 4), 10, 20, 50, num_classes, batch_norm=True)


def cnn_mcmahan(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return _padded(_image(input_shape, "cnn_mcmahan", 4), 32, 64, 512, num_classes)


def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (200, 200)) -> nn.Module:
    if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ConfigError("model.hidden", list(hidden), "must be a list of layer widths >= 1, e.g. [200, 200]")
    widths = [math.prod(int(s) for s in input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))


def logreg(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(int(s) for s in input_shape), num_classes))


def resnet18(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32x32 inputs."""
    from torchvision.models import resnet18 as _resnet18

    shape = _image(input_shape, "resnet18", 8)
    model = _resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(shape[0], 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _accepts(target: Any, name: str) -> bool:
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def check_model_config(node: DictConfig | dict) -> None:
    """Before any work: ``model._target_`` imports and the group's keys are arguments it takes."""
    from fl.config.components import check_arguments

    target = locate("model", node.get("_target_"))
    args = {k: v for k, v in dict(node).items() if not str(k).startswith("_")}
    check_arguments("model", target, args, {k for k in ("input_shape", "num_classes") if _accepts(target, k)})


def build_model(node: DictConfig | dict | str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """A freshly initialised model from the ``model`` group (or a bundled factory's name); seed the
    global RNG first for reproducible weights. Raises ConfigError naming the key on bad input."""
    if isinstance(node, str):
        node = {"_target_": f"fl.models.{node}"}
    target = locate("model", node.get("_target_"))
    runtime = {k: v for k, v in (("input_shape", tuple(int(s) for s in input_shape)), ("num_classes", num_classes))
               if _accepts(target, k)}
    model = instantiate_component("model", node, **runtime)
    if not isinstance(model, nn.Module):
        raise ConfigError("model._target_", node.get("_target_"), f"must build a torch.nn.Module, but it returned "
                          f"a {type(model).__name__}")
    return model


def model_name(node: DictConfig | dict) -> str:
    """A short name for messages: the factory's last path component (``cnn``, ``ResNet9``)."""
    return str(node.get("_target_", "?")).rsplit(".", 1)[-1]
