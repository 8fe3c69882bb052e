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
import subprocess
import time
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from fl.errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "gloo", "nccl")
_GROUPS_MADE = 0  # process groups this process has created (see _restart_safe_store)


@dataclass(frozen=True)
class DistEnv:
    """What torchrun told this process (or the single-process defaults)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> "DistEnv":
        """torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; without them, the SLURM task
        variables of a multi-task step (``srun python train.py``, the submitit launcher)."""
        env = os.environ if environ is None else environ
        if "RANK" not in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
            return cls(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
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
    timeout = _dt.timedelta(seconds=timeout_s)
    if init_method is None and "MASTER_ADDR" not in os.environ and "SLURM_JOB_NODELIST" in os.environ:
        os.environ.update(_slurm_master(os.environ))
    store = None if init_method else _restart_safe_store(env, timeout)
    dist.init_process_group(
        backend=backend,
        init_method=None if store is not None else init_method or "env://",
        store=store,
        rank=env.rank,
        world_size=env.world_size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _slurm_master(env: dict[str, str] | os._Environ) -> dict[str, str]:
    """``MASTER_ADDR``/``MASTER_PORT`` for a SLURM step started without torchrun: the job's
    first node, and a port derived from the job id (override either by exporting it)."""
    nodes = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], capture_output=True,
                           text=True, check=True).stdout.split()
    return {"MASTER_ADDR": nodes[0], "MASTER_PORT": str(20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000)}


def _restart_safe_store(env: DistEnv, timeout: _dt.timedelta) -> dist.Store | None:
    """A store whose keys cannot collide with those of an earlier torchrun attempt, or ``None``.

    torchrun shares its rendezvous TCPStore with the workers (``TORCHELASTIC_USE_AGENT_STORE``),
    and a restarted attempt then reads the killed attempt's peer addresses from it and cannot
    connect (pytorch/pytorch#135712); so does a second process group in the same worker (a
    Hydra sweep). On one node every worker has the same restart count, so prefixing the keys
    with it and with the number of groups made so far isolates them. Across nodes the counts can differ; there
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (set by ``scripts/``) gives each attempt a fresh store.
    """
    e = os.environ
    if e.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if int(e.get("LOCAL_WORLD_SIZE", env.world_size)) != env.world_size:
        if int(e.get("TORCHELASTIC_MAX_RESTARTS", 0)) > 0:
            log.warning("torchrun --max-restarts across nodes: set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for the "
                        "launcher, or a restarted attempt may fail to connect (pytorch/pytorch#135712)")
        return None
    base = dist.TCPStore(e["MASTER_ADDR"], int(e["MASTER_PORT"]), env.world_size, is_master=False, timeout=timeout)
    global _GROUPS_MADE
    _GROUPS_MADE += 1  # a sweep (-m) makes one group per job, in the same order on every rank
    return dist.PrefixStore(f"fl/attempt_{e.get('TORCHELASTIC_RESTART_COUNT', '0')}/group_{_GROUPS_MADE}", base)


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
