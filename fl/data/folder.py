"""Per-site data (``data=folder``): each client reads its own ImageFolder, data never moves.

``data.root`` contains ``{client}`` (e.g. ``/data/site_{client}``); the rank that hosts a
client reads only that client's folder. Class indices are made consistent across sites by
class *name* (the caller unions the names over all ranks).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fl.data.datasets import TensorData
from fl.data.stream import StreamData
from fl.errors import ConfigError


def site_path(root_template: str, cid: int) -> Path:
    return Path(root_template.format(client=cid))


# What torchvision's ImageFolder reads (torchvision.datasets.folder.IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def check_sites(root_template: str, clients: list[int]) -> None:
    """Every hosted site folder exists and holds class folders, each with at least one image."""
    if "{client}" not in root_template:
        raise ConfigError("data.root", root_template, "must contain '{client}', e.g. /data/site_{client}")
    for cid in clients:
        path = site_path(root_template, cid)
        if not path.is_dir() or not any(p.is_dir() for p in path.iterdir()):
            raise ConfigError("data.root", root_template, f"client {cid}: {path} must be a folder of class folders")
        check_class_folders(path, f"client {cid}: ")


def check_class_folders(path: Path, who: str = "", key: str = "data.root") -> None:
    """Each class folder under ``path`` holds at least one image ImageFolder can read."""
    for cls in sorted(p for p in path.iterdir() if p.is_dir()):
        if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in cls.rglob("*") if f.is_file()):
            raise ConfigError(key, str(path), f"{who}class folder {cls.name!r} holds no images "
                              f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add its images")


def class_names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir())


def open_folder(path: Path, classes: list[str], image_size: int, channels: int) -> tuple[object, torch.Tensor]:
    """The ImageFolder under ``path`` (decoding each image when read: resized, normalised) and its
    labels indexed into ``classes`` (the names agreed over every site)."""
    from torchvision import datasets, transforms

    steps = [transforms.Resize((image_size, image_size))]
    if channels == 1:
        steps.append(transforms.Grayscale(1))
    steps += [transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)]
    ds = datasets.ImageFolder(str(path), transform=transforms.Compose(steps))
    if len(ds) == 0:
        raise ConfigError("data.root", str(path), "holds no images")
    remap = torch.tensor([classes.index(c) for c in ds.classes], dtype=torch.int64)
    return ds, remap[torch.tensor(ds.targets, dtype=torch.int64)]


def load_folder(path: Path, classes: list[str], image_size: int, channels: int) -> TensorData:
    """All images under ``path`` as normalised tensors, labels indexed into ``classes``."""
    ds, y = open_folder(path, classes, image_size, channels)
    return TensorData(torch.stack([ds[i][0] for i in range(len(ds))]), y)  # type: ignore[index]


def stream_folder(path: Path, classes: list[str], image_size: int, channels: int, workers: int,
                  prefetch: int) -> StreamData:
    """The images under ``path`` read lazily in fl's batches (``data.stream=true``), same values as
    :func:`load_folder`."""
    ds, y = open_folder(path, classes, image_size, channels)
    return StreamData(ds, y, workers, prefetch)
