"""A dataset on disk, read one sample at a time: fixed-shape samples in one raw file.

``write(folder, x, y)`` stores ``x`` (uint8 or float32, ``[N, *shape]``) as ``inputs.bin`` and
``y`` as ``labels.npy`` with a ``meta.json``; :class:`RawSamples` reads a sample with one
``os.pread`` (no memory map, so nothing of the file stays in the process), which is what
``data.stream=true`` needs for data larger than memory. ``load`` is a data component::

    train.py data=custom data._target_=fl.data.ondisk.load +data.root=/data/scans data.stream=true
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fl.errors import ConfigError


def write(folder: Path, x: np.ndarray, y: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    x = np.ascontiguousarray(x)
    with open(folder / "inputs.bin", "wb") as f:
        f.write(x.tobytes())
    np.save(folder / "labels.npy", np.asarray(y))
    (folder / "meta.json").write_text(json.dumps({"shape": list(x.shape[1:]), "dtype": str(x.dtype)}))


class RawSamples(Dataset):
    """Samples of ``folder/inputs.bin`` as float tensors (uint8 scaled to [0, 1]), labels in memory."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / "meta.json").is_file():
            raise ConfigError("data.root", str(folder), "must hold inputs.bin, labels.npy and meta.json "
                              "(fl.data.ondisk.write)")
        meta = json.loads((self.folder / "meta.json").read_text())
        self.shape, self.dtype = tuple(meta["shape"]), np.dtype(meta["dtype"])
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        self.targets = np.load(self.folder / "labels.npy")
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | float]:
        if self._fd is None or self._pid != os.getpid():  # one descriptor per loader worker
            self._fd, self._pid = os.open(self.folder / "inputs.bin", os.O_RDONLY), os.getpid()
        raw = os.pread(self._fd, self.nbytes, int(i) * self.nbytes)
        x = torch.from_numpy(np.frombuffer(raw, dtype=self.dtype).reshape(self.shape).copy())
        x = x.float() / 255.0 if self.dtype == np.uint8 else x
        return x, self.targets[i].item()

    def __getstate__(self) -> dict:  # loader workers open their own descriptor
        return {**self.__dict__, "_fd": None, "_pid": -1}


def load(root: str, test_root: str | None = None) -> tuple[RawSamples, RawSamples | None]:
    """The data component: ``root`` (and an optional ``test_root``) written by :func:`write`."""
    return RawSamples(root), None if test_root is None else RawSamples(test_root)
