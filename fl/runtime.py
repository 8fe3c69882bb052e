"""Process-group lifecycle: read the torchrun environment, pick device and backend.

``python train.py`` without torchrun runs as world size 1 with no process group.
Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from fl.errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class DistEnv:
    """What torchrun told this process (or the single-process defaults)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> "DistEnv":
        env = os.environ if environ is None else environ
        return cls(
            rank=int(env.get("RANK", 0)),
            world_size=int(env.get("WORLD_SIZE", 1)),
            local_rank=int(env.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("runtime.device", name, "CUDA is not available on this machine; use auto or cpu")
        return torch.device(f"cuda:{local_rank}")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError("runtime.device", name, "must be one of auto, cpu, cuda")


def resolve_backend(name: str, device: torch.device) -> str:
    """``auto`` -> ``nccl`` for CUDA devices, ``gloo`` otherwise."""
    if name not in BACKENDS:
        raise ConfigError("runtime.backend", name, f"must be one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise ConfigError("runtime.backend", name, "nccl needs a CUDA device; use gloo (or auto) on CPU")
    return name


@contextlib.contextmanager
def process_group(
    env: DistEnv, device: torch.device, backend: str, timeout_s: float, init_method: str | None = None
) -> Iterator[None]:
    """Initialise the default process group for ``env`` and always destroy it on exit.

    World size 1 initialises nothing. ``init_method`` defaults to ``env://`` (torchrun).
    """
    if env.world_size == 1:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend,
        init_method=init_method or "env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=_dt.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def report_to_launcher(message: str) -> None:
    """Give torchrun this rank's one-line failure reason.

    torchrun's failure summary shows, as the root cause, what a rank wrote to
    ``TORCHELASTIC_ERROR_FILE`` (a JSON record documented in
    ``torch.distributed.elastic.multiprocessing.errors``). Without torchrun this does nothing.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    record = {"message": {"message": message,
                          "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}}
    with open(path, "w") as f:
        json.dump(record, f)
