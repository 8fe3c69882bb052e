"""Your own data in memory: ``data._target_`` names a function or class that returns it.

The contract. The component is called with the ``data`` group's keys as keyword arguments
(``on_device`` excepted: it is fl's). It returns the training and test data, as

* a :class:`~fl.data.datasets.Loaded` (train, test, spec), or
* a pair ``(train, test)`` (``test`` may be ``None``), each either a map-style
  ``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs, or a pair of tensors ``(x, y)``
  with one row per sample.

``x`` is any float tensor shape per sample (images ``[C, H, W]``, feature vectors ``[F]``), ``y``
integer class labels ``0..C-1``, or float targets when ``data.task=regression`` (the model then
has one output; loss MSE, metrics MSE and MAE). fl then holds both sets as tensors on the training device (the
fast path), infers the input shape and the class count (``classes`` of the dataset when it has
them, else the largest label + 1), partitions the training set over the clients and shards the
test set over the ranks, as for the bundled datasets.

A loader object, a class with a ``load(ctx)`` method (:class:`~fl.data.datasets.LoadContext`: the
run's seed and communicator), is built from the group's keys before any work (so it checks them
then) and asked for its data when the run loads it; the bundled ``digits``, ``synthetic``,
``mnist``, ``fashion_mnist`` and ``cifar10`` are such loaders (:mod:`fl.data.datasets`).

``fl.data.component.torchvision_dataset`` adapts any torchvision dataset class with the
``train=True/False`` split convention (``conf/data/torchvision.yaml``)::

    train.py data=torchvision data.cls=torchvision.datasets.KMNIST data.root=/data
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from fl.config.components import instantiate_component, locate
from fl.data.datasets import DatasetSpec, LoadContext, Loaded, TensorData
from fl.data.stream import stream_of
from fl.errors import ConfigError
from fl.training.objective import REGRESSION

FL_KEYS = ("on_device", "augment", "task", "stream", "workers", "prefetch")  # data keys that fl reads itself; not passed to the component


def load(node: DictConfig, ctx: LoadContext | None = None) -> Loaded:
    """Call ``data._target_`` and turn what it returns into tensors and a spec (see the module docstring).
    A loader object (one with a ``load(ctx)`` method, such as the bundled datasets) is asked for its data."""
    out = instantiate_component("data", node, skip=FL_KEYS)
    if not isinstance(out, (Loaded, tuple)) and callable(getattr(out, "load", None)):
        out = out.load(ctx)
    task = node.get("task")
    if isinstance(out, Loaded) and node.get("stream", False):
        raise ConfigError("data.stream", True, f"needs map-style Datasets, but data._target_="
                          f"{node.get('_target_')} returned tensors (they fit in memory: data.stream=false)")
    if isinstance(out, Loaded):
        if task is not None and out.spec.task != task:
            raise ConfigError("data.task", task, f"but data._target_={node.get('_target_')} returned "
                              f"{out.spec.task} data; set data.task={out.spec.task}")
        return out
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ConfigError("data._target_", node.get("_target_"), f"must return (train, test) or a "
                          f"fl.data.datasets.Loaded, not a {type(out).__name__}")
    if node.get("stream", False):
        return _streamed(node, out)
    if task == REGRESSION:
        train = as_tensors(out[0], "train", regression=True)
        test = None if out[1] is None else as_tensors(out[1], "test", regression=True)
        if test is not None and tuple(test.x.shape[1:]) != tuple(train.x.shape[1:]):
            raise ConfigError("data._target_", node.get("_target_"), f"returned test samples of shape "
                              f"{list(test.x.shape[1:])}, training samples of shape {list(train.x.shape[1:])}")
        return Loaded(train, test, DatasetSpec(tuple(train.x.shape[1:]), 1, REGRESSION))  # type: ignore[arg-type]
    train = as_tensors(out[0], "train")
    test = None if out[1] is None else as_tensors(out[1], "test")
    classes = getattr(out[0], "classes", None)
    num_classes = len(classes) if classes is not None else int(train.y.max()) + 1
    if test is not None and (tuple(test.x.shape[1:]) != tuple(train.x.shape[1:]) or int(test.y.max()) >= num_classes):
        raise ConfigError("data._target_", node.get("_target_"), f"returned test samples of shape "
                          f"{list(test.x.shape[1:])} or labels beyond the {num_classes} training classes")
    return Loaded(train, test, DatasetSpec(tuple(train.x.shape[1:]), num_classes))  # type: ignore[arg-type]


def _streamed(node: DictConfig, out: tuple) -> Loaded:
    """``data.stream=true``: the Datasets kept as they are, read in batches (fl.data.stream)."""
    regression = node.get("task") == REGRESSION
    workers, prefetch = int(node.get("workers", 2)), int(node.get("prefetch", 2))
    train, shape = stream_of(out[0], "train", regression, workers, prefetch)
    test = None
    if out[1] is not None:
        test, test_shape = stream_of(out[1], "test", regression, workers, prefetch)
        if test_shape != shape:
            raise ConfigError("data._target_", node.get("_target_"), f"returned test samples of shape "
                              f"{list(test_shape)}, training samples of shape {list(shape)}")
    if regression:
        return Loaded(train, test, DatasetSpec(shape, 1, REGRESSION))  # type: ignore[arg-type]
    classes = getattr(out[0], "classes", None)
    num_classes = len(classes) if classes is not None else int(train.y.max()) + 1
    if int(train.y.min()) < 0 or (test is not None and int(test.y.max()) >= num_classes):
        raise ConfigError("data._target_", node.get("_target_"), f"returned labels outside 0..{num_classes - 1}")
    return Loaded(train, test, DatasetSpec(shape, num_classes))  # type: ignore[arg-type]


def as_tensors(data: Any, which: str, regression: bool = False) -> TensorData:
    """A pair of tensors (x, y) or a map-style Dataset of (x, y) items as :class:`TensorData`
    (labels int64; float32 targets with ``regression``)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(d, "shape") for d in data):
        x, y = (torch.as_tensor(np.asarray(d)) if not isinstance(d, torch.Tensor) else d for d in data)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        if len(data) == 0:
            raise ConfigError("data._target_", which, f"returned an empty {which} set")
        try:
            xs, ys = zip(*(data[i] for i in range(len(data))), strict=True)
            x = torch.stack([torch.as_tensor(np.asarray(v)) for v in xs])
            y = torch.as_tensor(np.asarray(ys))
        except (MemoryError, RuntimeError) as e:
            if not isinstance(e, MemoryError) and "alloc" not in str(e):
                raise
            raise ConfigError("data.stream", False, f"the {which} set ({len(data):,} samples) does not fit in this "
                              "process's memory as tensors; set data.stream=true to read it in batches") from None
    else:
        raise ConfigError("data._target_", which, f"the {which} set must be a map-style Dataset of (x, y) or a "
                          f"pair of tensors (x, y), not a {type(data).__name__}")
    if regression and y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if len(x) != len(y) or y.dim() != 1:
        raise ConfigError("data._target_", which, f"the {which} set has {len(x)} inputs and labels of shape "
                          f"{list(y.shape)}: one {'target value' if regression else 'integer label'} per sample "
                          "is needed")
    if regression:
        if not torch.isfinite(y.double()).all():
            raise ConfigError("data._target_", which, f"the {which} set has non-finite regression targets")
        return TensorData(x.float().contiguous(), y.float())
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise ConfigError("data._target_", which, "labels must be class indices 0..C-1; for real-valued "
                              "targets set data.task=regression")
    if int(y.min()) < 0:
        raise ConfigError("data._target_", which, f"labels must be class indices >= 0, found {int(y.min())}")
    return TensorData(x.float().contiguous(), y.long())


def torchvision_dataset(cls: str, root: str, download: bool = True, normalize: bool = True,
                        kwargs: dict | None = None) -> Loaded:
    """Any torchvision dataset class with ``train=True/False`` splits, as normalised float tensors.

    ``cls``: the class's import path, e.g. ``torchvision.datasets.FashionMNIST``; ``kwargs``: its
    other constructor arguments. Images become ``[C, H, W]`` in [0, 1], standardised per channel
    with the training set's mean and std when ``normalize``.
    """
    from torchvision import transforms

    klass = locate("data.cls", cls)
    sets = []
    for train in (True, False):
        try:
            sets.append(klass(root, train=train, download=download, transform=transforms.ToTensor(),
                              **(kwargs or {})))
        except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found or corrupted", download errors
            raise ConfigError("data.root", root, f"could not load {cls} ({str(e).splitlines()[0]}); set "
                              "data.download=true or point data.root at its files") from None
        except TypeError as e:
            raise ConfigError("data.kwargs", kwargs, f"{cls} refused them ({e})") from None
    train, test = (_fast_tensors(s) for s in sets)
    if normalize:
        dims = [0] + list(range(2, train.x.dim()))
        mean, std = train.x.mean(dims, keepdim=True), train.x.std(dims, keepdim=True).clamp_min(1e-8)
        train, test = (TensorData((d.x - mean) / std, d.y) for d in (train, test))
    classes = getattr(sets[0], "classes", None)
    num_classes = len(classes) if classes else int(train.y.max()) + 1
    return Loaded(train, test, DatasetSpec(tuple(train.x.shape[1:]), num_classes))  # type: ignore[arg-type]


def _fast_tensors(ds: Any) -> TensorData:
    """The raw ``data``/``targets`` arrays when the class keeps them (MNIST, CIFAR...), else every item."""
    data, targets = getattr(ds, "data", None), getattr(ds, "targets", None)
    if data is not None and targets is not None and hasattr(data, "shape") and len(data) == len(targets):
        x = torch.as_tensor(np.asarray(data)).float()
        if x.max() > 1:
            x = x / 255.0
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2) if x.dim() == 4 and x.shape[-1] in (1, 3) else x
        return TensorData(x.contiguous(), torch.as_tensor(np.asarray(targets), dtype=torch.int64))
    return as_tensors(ds, "train" if getattr(ds, "train", True) else "test")
