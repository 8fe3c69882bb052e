"""Test helpers: compose configs, find the real datasets, fork gloo process groups."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

# Modules every job imports on first use: torch's optimizers import torch._dynamo (seconds), the digits
# loader scikit-learn. Imported once here, forked ranks inherit them instead of paying for them each
# time (neither starts a thread or touches a device).
import sklearn.datasets  # noqa: E402, F401
import torch._dynamo  # noqa: E402, F401

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

if not OmegaConf.has_resolver("fl_run_dir"):
    OmegaConf.register_new_resolver("fl_run_dir", lambda value: value)


# The workloads the tests were written for: the small padded CNN and one local epoch (the
# defaults before the quick-start job became mlp with two epochs). A test's overrides and
# experiment presets win.
TEST_DEFAULTS = ("model=cnn_padded", "fl.local_epochs=1")


def make_cfg(*overrides: str) -> DictConfig:
    """The project config composed with ``overrides``, as ``train.py`` would see it (after TEST_DEFAULTS)."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    pinned = [] if "experiment" in given else [d for d in TEST_DEFAULTS if d.split("=", 1)[0] not in given]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["runtime.progress=false", *pinned, *overrides])


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of ``../shared/data`` (real MNIST / Fashion-MNIST .gz files)."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST files not found at {SHARED_DATA} (../shared/data beside the repository)")
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(SHARED_DATA, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README.md"))
    return root


def run_job(rank: int, world_size: int, init_method: str, cfg: DictConfig, run_dir: Path) -> dict:
    """A :func:`fork_ranks` target: the whole federated job on one rank."""
    from fl.engine.loop import run
    from fl.runtime.env import DistEnv

    return run(cfg, run_dir, DistEnv(rank, world_size, rank), init_method=init_method)


def _child(rank: int, world_size: int, init_method: str, fn: Callable, args: tuple, out: Path) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    try:
        result: Any = ("ok", fn(rank, world_size, init_method, *args))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        result = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
    torch.save(result, out / f"result_{rank}.pt")


def fork_ranks(world_size: int, fn: Callable, tmp_path: Path, *args: Any, timeout_s: float = 120) -> list[Any]:
    """Run ``fn(rank, world_size, init_method, *args)`` in ``world_size`` forked processes.

    ``init_method`` is a ``file://`` rendezvous in ``tmp_path`` for a gloo group. Returns
    each rank's return value; raises if any rank failed or timed out.
    """
    out = tmp_path / f"ranks_{uuid.uuid4().hex[:8]}"
    out.mkdir()
    init = f"file://{out / 'rendezvous'}"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_child, args=(r, world_size, init, fn, args, out)) for r in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout_s)
    for p in procs:
        if p.is_alive():
            p.kill()
            raise TimeoutError(f"rank process {p.pid} did not finish in {timeout_s}s")
    results = []
    for r in range(world_size):
        path = out / f"result_{r}.pt"
        if not path.exists():
            raise RuntimeError(f"rank {r} exited with code {procs[r].exitcode} and no result")
        status, value = torch.load(path, weights_only=False)
        if status == "error":
            raise RuntimeError(f"rank {r} failed: {value}")
        results.append(value)
    return results
