"""The one collective seam: every torch.distributed call of a run goes through here.

The rest of the package works on local tensors ("this rank's sums", "this rank's rows")
and asks :class:`Comm` to make them global. With world size 1 every method is the
identity, so the same code runs without a process group.

Every method is collective: all ranks must call it, in the same order, with tensors of
the same shape and dtype.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.distributed as dist


class CollectiveError(RuntimeError):
    """A collective failed or timed out: names this rank, the operation and the timeout."""


class Comm:
    """Collectives on the default process group (or identities when it has one rank).

    A collective that does not complete within the process group's timeout
    (``runtime.timeout_s``), because another rank died or hangs, raises
    :class:`CollectiveError` naming this rank and the operation, instead of hanging.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, timeout_s: float | None = None) -> None:
        self.rank, self.world_size, self.device, self.timeout_s = rank, world_size, device, timeout_s

    @contextlib.contextmanager
    def _op(self, name: str, tensor: torch.Tensor | None = None) -> Iterator[None]:
        try:
            yield
        except RuntimeError as e:
            what = name if tensor is None else f"{name} of {tuple(tensor.shape)} {str(tensor.dtype)[6:]}"
            limit = f" (runtime.timeout_s={self.timeout_s:g})" if self.timeout_s else ""
            raise CollectiveError(f"rank {self.rank}/{self.world_size}: {what} did not complete{limit}: another rank "
                                  f"died, hangs or left; cause: {str(e).splitlines()[0][:300]}") from e

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, flat: torch.Tensor) -> torch.Tensor:
        """Sum ``flat`` (1-D) over ranks, in place; every rank gets the result."""
        if self.distributed:
            with self._op("all_reduce", flat):
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return flat

    def all_reduce_max(self, value: float) -> float:
        """The largest of every rank's ``value`` (one scalar all-reduce)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        with self._op("all_reduce_max", t):
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Stack every rank's ``rows`` ([R, D], same R on every rank) on rank 0.

        Returns ``[world_size * R, D]`` on rank 0 (rank-major order), ``None`` elsewhere.
        """
        if not self.distributed:
            return rows
        with self._op("gather", rows):
            if self.is_main:
                out = [torch.empty_like(rows) for _ in range(self.world_size)]
                dist.gather(rows, gather_list=out, dst=0)
                return torch.cat(out)
            dist.gather(rows, dst=0)
        return None

    def broadcast(self, flat: torch.Tensor) -> torch.Tensor:
        """Overwrite ``flat`` on every rank with rank 0's values."""
        if self.distributed:
            with self._op("broadcast", flat):
                dist.broadcast(flat, src=0)
        return flat

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's picklable ``obj`` on every rank (for small metadata only)."""
        if not self.distributed:
            return obj
        box = [obj]
        with self._op("broadcast_object"):
            dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order, on every rank (small metadata only)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        with self._op("all_gather_object"):
            dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            with self._op("barrier"):
                if self.device.type == "cuda":
                    dist.barrier(device_ids=[self.device.index])
                else:
                    dist.barrier()
