"""Data larger than memory: a map-style Dataset read lazily, in the batches fl has already drawn.

The in-memory path indexes tensors (``x[rows]``). The streaming path (``data.stream=true``)
keeps the user's ``torch.utils.data.Dataset`` and only its labels in memory; a client's
mini-batches are still drawn from its ``(seed, round, client)`` stream as row lists, exactly as
on the in-memory path, and a ``DataLoader`` with ``data.workers`` worker processes reads them
(``batch_sampler`` = those row lists, ``prefetch_factor`` = ``data.prefetch``, pinned memory on
CUDA). The loader and its workers persist for the process: each client and round only hands it
new row lists. So the batches, the model and the resume behaviour are the same as in memory, and what a
rank holds at any time is the labels plus the loader's prefetched batches
(``workers * prefetch`` batches), whatever the dataset's size.

The dataset's items are ``(x, y)``; its labels come from a ``targets`` attribute when it has one
(torchvision datasets, ``ImageFolder``), else from one pass over its items before training.
Random transforms belong in ``data.augment`` (seeded per client), not in the dataset: a
dataset's own randomness depends on the loader's workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fl.data.datasets import TensorData
from fl.errors import ConfigError

Rows = Union[torch.Tensor, slice]


class _Inputs(Dataset):
    """The inputs of a Dataset of ``(x, y)`` items, as float tensors (labels are held by fl)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.dataset[i][0]
        return (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).float()


@dataclass(frozen=True)
class StreamData:
    """A lazily read dataset: the Dataset itself, its labels ``y`` (CPU) and how to load it."""

    dataset: Any
    y: torch.Tensor
    workers: int = 2
    prefetch: int = 2

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> "StreamData":
        return self  # read batch by batch; each batch goes to the training device

    def with_labels(self, y: torch.Tensor) -> "StreamData":
        return dataclasses.replace(self, y=y)

    def loader(self, row_lists: list[list[int]], pin_memory: bool) -> DataLoader:
        """A loader that reads ``row_lists`` in order. With workers it is one loader per dataset and
        process, kept with its worker processes from client to client and round to round (only the
        batches it is to read change), so a client costs no worker start-up."""
        if not self.workers:
            return DataLoader(_Inputs(self.dataset), batch_sampler=row_lists, pin_memory=pin_memory)
        key = (id(self.dataset), self.workers, self.prefetch, pin_memory)
        if key not in _LOADERS:
            rows = _Rows()
            _LOADERS[key] = (DataLoader(_Inputs(self.dataset), batch_sampler=rows, num_workers=self.workers,
                                        prefetch_factor=self.prefetch, pin_memory=pin_memory,
                                        persistent_workers=True), rows, self.dataset)
        loader, rows, _ = _LOADERS[key]
        rows.batches = row_lists
        return loader


class _Rows:
    """A batch sampler whose batches are set before each pass (the persistent loader's)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


# (dataset id, workers, prefetch, pinned) -> (loader, its batch sampler, the dataset, kept alive for the id)
_LOADERS: dict[tuple, tuple[DataLoader, _Rows, Any]] = {}


@contextlib.contextmanager
def stream_loaders() -> Iterator[None]:
    """A job's lifetime for the persistent loaders: their worker processes end with the job, so a
    process that runs several jobs (a notebook, a sweep) does not keep the workers of finished ones."""
    try:
        yield
    finally:
        _LOADERS.clear()  # dropping a loader shuts its workers down


def batches(data: TensorData | StreamData, rows: Iterable[Rows], device: torch.device
            ) -> Iterator[tuple[Rows, torch.Tensor | None, torch.Tensor | None]]:
    """``(rows, x[rows], y[rows])`` on ``device`` for each row selection, in order; an empty
    selection gives ``(rows, None, None)``. Tensors are indexed; a stream is read by a DataLoader."""
    if isinstance(data, TensorData):
        for r in rows:
            if isinstance(r, torch.Tensor) and r.numel() == 0:
                yield r, None, None
            else:
                yield r, data.x[r], data.y[r]
        return
    selections = [torch.arange(len(data))[r] if isinstance(r, slice) else r.cpu() for r in rows]
    wanted = [s.tolist() for s in selections if s.numel()]
    it = iter(data.loader(wanted, pin_memory=device.type == "cuda")) if wanted else iter(())
    for s in selections:
        if s.numel() == 0:
            yield s, None, None
            continue
        yield s, next(it).to(device, non_blocking=True), data.y[s].to(device, non_blocking=True)


def chunks(n: int, idx: torch.Tensor | None, batch_size: int) -> Iterator[Rows]:
    """Consecutive evaluation batches over ``idx`` (every row when ``None``)."""
    total = n if idx is None else int(idx.numel())
    for start in range(0, total, batch_size):
        yield slice(start, start + batch_size) if idx is None else idx[start:start + batch_size]


def labels_of(dataset: Any, which: str) -> torch.Tensor:
    """A Dataset's labels: its ``targets`` when it keeps them, else one pass over its items."""
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(np.asarray(targets))
    try:
        return torch.as_tensor(np.asarray([dataset[i][1] for i in range(len(dataset))]))
    except (TypeError, IndexError, ValueError) as e:
        raise ConfigError("data._target_", which, f"the {which} set's items must be (x, y) pairs ({e})") from None


def stream_of(dataset: Any, which: str, regression: bool, workers: int, prefetch: int) -> tuple[StreamData, tuple]:
    """A map-style Dataset as :class:`StreamData`, with the shape of one input."""
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")) or isinstance(dataset, (tuple, list)):
        raise ConfigError("data.stream", True, f"needs map-style Datasets from data._target_; the {which} set is a "
                          f"{type(dataset).__name__} (tensors fit in memory: set data.stream=false)")
    if len(dataset) == 0:
        raise ConfigError("data._target_", which, f"returned an empty {which} set")
    y = labels_of(dataset, which)
    if y.dim() != 1:
        raise ConfigError("data._target_", which, f"the {which} set's labels have shape {list(y.shape)}: one "
                          "label per sample is needed")
    if regression:
        y = y.float()
    elif y.is_floating_point() and not torch.equal(y, y.round()):
        raise ConfigError("data._target_", which, "labels must be class indices 0..C-1; for real-valued targets "
                          "set data.task=regression")
    else:
        y = y.long()
    shape = tuple(_Inputs(dataset)[0].shape)
    return StreamData(dataset, y, workers, prefetch), shape
