"""Datasets held as tensors.

Small image datasets are loaded once into a float tensor ``x`` ([N, C, H, W], normalised)
and a label tensor ``y`` ([N], int64), then moved to the training device. Clients are
index tensors into them, so a rank that hosts hundreds of clients builds no DataLoader
and copies no data per client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fl.errors import ConfigError

log = logging.getLogger(__name__)

SITE_DATASETS = ("folder", "csv")  # per-site loaders, chosen by data.name; every other option has a _target_

# torchvision class name, raw files that must be present, normalisation (mean, std) per channel.
_TORCHVISION = {
    "mnist": ("MNIST", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"], (0.1307,), (0.3081,)),
    "fashion_mnist": ("FashionMNIST", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"], (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", ["data_batch_1", "test_batch"], (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass(frozen=True)
class TensorData:
    """Inputs ``x`` [N, C, H, W] float32 and labels ``y`` [N] int64 on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> "TensorData":
        return TensorData(self.x.to(device), self.y.to(device))

    def with_labels(self, y: torch.Tensor) -> "TensorData":
        return TensorData(self.x, y)


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about the data: input shape, class count (the model's output width:
    1 for regression) and the task, ``classification`` or ``regression`` (:mod:`fl.training.objective`)."""

    input_shape: tuple[int, int, int]
    num_classes: int
    task: str = "classification"


@dataclass(frozen=True)
class Loaded:
    """What a data component returns: the training and test sets and their spec (``test`` may be None)."""

    train: TensorData
    test: TensorData | None
    spec: DatasetSpec


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def _raw_files_present(root: Path, name: str) -> bool:
    cls, files, _, _ = _TORCHVISION[name]
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        return all((folder / f).exists() for f in files)
    raw = root / cls / "raw"
    return all((raw / f).exists() or (raw / f"{f}.gz").exists() for f in files)


def check_available(name: str, root: str, download: bool) -> None:
    """Fail before any work when a torchvision dataset's files are missing and may not be downloaded."""
    if name not in _TORCHVISION or download:
        return
    if not _raw_files_present(Path(root), name):
        cls = _TORCHVISION[name][0]
        where = "cifar-10-batches-py/" if name == "cifar10" else f"{cls}/raw/"
        raise ConfigError("data.root", root, f"must contain {where} with the {cls} files, or set data.download=true")


def prepare(name: str, root: str, download: bool) -> None:
    """Download or extract a torchvision dataset into ``root``. Call on one rank, then barrier."""
    if name not in _TORCHVISION:
        return
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[name][0])
    try:
        for train in (True, False):
            cls(root, train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted" / download failures
        raise ConfigError("data.root", root, f"could not load {name}: {e}") from None


def load_torchvision(name: str, root: str) -> tuple[TensorData, TensorData, DatasetSpec]:
    """Train and test tensors of a prepared torchvision dataset (no per-sample transforms)."""
    import torchvision

    cls_name, _, mean, std = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    out = []
    for train in (True, False):
        ds = cls(root, train=train, download=False)
        data = torch.as_tensor(np.asarray(ds.data))
        x = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)  # CIFAR is NHWC
        x = _normalise(x.float().div_(255.0), mean, std)
        out.append(TensorData(x.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)))
    spec = DatasetSpec(tuple(out[0].x.shape[1:]), 10)  # type: ignore[arg-type]
    return out[0], out[1], spec


def load_digits(test_fraction: float, split_seed: int) -> tuple[TensorData, TensorData, DatasetSpec]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), split into train/test by seed."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    x = (x - x.mean()) / x.std()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return TensorData(x[train], y[train]), TensorData(x[test], y[test]), DatasetSpec((1, 8, 8), 10)


def make_synthetic(
    num_train: int, num_test: int, num_classes: int, shape: tuple[int, int, int], noise: float, seed: int
) -> tuple[TensorData, TensorData, DatasetSpec]:
    """Gaussian class clusters in image shape: learnable, instant, any size (tests and benchmarks)."""
    g = torch.Generator().manual_seed(seed)
    dim = int(np.prod(shape))
    centres = torch.randn(num_classes, dim, generator=g)

    def draw(n: int) -> TensorData:
        y = torch.randint(num_classes, (n,), generator=g)
        x = centres[y] + noise * torch.randn(n, dim, generator=g)
        return TensorData(x.view(n, *shape), y)

    return draw(num_train), draw(num_test), DatasetSpec(tuple(shape), num_classes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LoadContext:
    """What a loader object's ``load`` receives from the run: its seed and communicator (one rank may
    download while the others wait)."""

    seed: int
    comm: object  # fl.runtime.comm.Comm


@dataclass(frozen=True)
class Digits:
    """``data=digits``: scikit-learn's bundled 8x8 handwritten digits, split into train/test by seed."""

    test_fraction: float = 0.2
    split_seed: int = 0

    def __post_init__(self) -> None:
        t = self.test_fraction
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
            raise ConfigError("data.test_fraction", t, "must be a number in (0, 1)")

    def load(self, ctx: LoadContext) -> Loaded:
        return Loaded(*load_digits(float(self.test_fraction), int(self.split_seed)))


@dataclass(frozen=True)
class Synthetic:
    """``data=synthetic``: Gaussian class clusters in image shape, drawn from the run seed."""

    num_train: int = 2000
    num_test: int = 500
    num_classes: int = 10
    shape: Sequence[int] = (1, 8, 8)
    noise: float = 1.0

    def __post_init__(self) -> None:
        for key, value, low in (("num_train", self.num_train, 1), ("num_test", self.num_test, 1),
                                ("num_classes", self.num_classes, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"data.{key}", value, f"must be an integer >= {low}")
        if len(self.shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.shape):
            raise ConfigError("data.shape", list(self.shape), "must be [channels, height, width] of positive integers")

    def load(self, ctx: LoadContext) -> Loaded:
        from fl.runtime.seeding import derive_seed

        return Loaded(*make_synthetic(self.num_train, self.num_test, self.num_classes, tuple(self.shape),
                                      float(self.noise), derive_seed(ctx.seed, "synthetic")))


@dataclass(frozen=True)
class _Torchvision:
    """A bundled torchvision dataset: files in ``root`` (checked now unless ``download``), read as tensors."""

    root: str = "data"
    download: bool = True
    name = ""  # the subclass's dataset

    def __post_init__(self) -> None:
        check_available(self.name, str(self.root), bool(self.download))

    def load(self, ctx: LoadContext) -> Loaded:
        comm = ctx.comm
        if comm.is_main:  # type: ignore[attr-defined]  # one rank downloads/extracts; the others wait, then read
            prepare(self.name, str(self.root), bool(self.download))
        comm.barrier()  # type: ignore[attr-defined]
        return Loaded(*load_torchvision(self.name, str(self.root)))


@dataclass(frozen=True)
class MNIST(_Torchvision):
    """``data=mnist``."""

    name = "mnist"


@dataclass(frozen=True)
class FashionMNIST(_Torchvision):
    """``data=fashion_mnist``."""

    name = "fashion_mnist"


@dataclass(frozen=True)
class CIFAR10(_Torchvision):
    """``data=cifar10``."""

    name = "cifar10"
