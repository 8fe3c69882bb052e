"""The run directory: the same one on every rank and every restart, and a record that only a
run allowed to continue it may change.

Hydra resolves ``${now:...}`` in each process separately, so under torchrun the ranks
can pick different directories when they start across a second boundary (hydra #2070).
Rank 0's choice wins; a rank whose own choice differs removes it if Hydra left it empty
(Hydra writes no ``.hydra/`` of its own: rank 0 writes it once the job is accepted).

Under ``torchrun --max-restarts=K`` a restarted attempt would resolve ``${now:...}`` again
and start over in a new directory; :func:`elastic_run_dir` (the ``fl_run_dir`` resolver in
the default ``hydra.run.dir``) sends it back to the first attempt's directory, where the
checkpoints are.

:func:`inspect` reads what a directory already holds before anything is written, so the job
can refuse (a changed config, a finished run) and leave every file as it was.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from fl.runtime.comm import Comm
from fl.engine.records import read_json, write_text


def agree_run_dir(comm: Comm, local: Path) -> Path:
    """Collective: rank 0's run directory, on every rank."""
    chosen = Path(comm.broadcast_object(str(local.resolve())))
    if chosen != local.resolve() and local.is_dir() and not any(local.iterdir()):
        local.rmdir()
    return chosen


def elastic_run_dir(proposed: str, environ: Mapping[str, str] | None = None) -> str:
    """The run directory for this torchrun attempt: ``proposed`` on the first attempt, the
    first attempt's directory on a restart (same ``TORCHELASTIC_RUN_ID``).

    Rank 0 records its choice in ``<top>/.torchelastic/<run id>`` (``<top>`` is the first
    component of ``proposed``, ``outputs`` by default). Other ranks follow rank 0 anyway
    (:func:`agree_run_dir`). Outside torchrun this returns ``proposed``.
    """
    env = os.environ if environ is None else environ
    run_id = env.get("TORCHELASTIC_RUN_ID")
    if not run_id or env.get("RANK", "0") != "0":
        return proposed
    marker = Path(Path(proposed).parts[0]) / ".torchelastic" / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    if int(env.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and marker.is_file():
        return marker.read_text().strip()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(proposed + "\n")
    return proposed


# What fl writes into a run directory; anything else there belongs to someone else.
RUN_ENTRIES = frozenset({".hydra", "run.json", "partition.json", "train.log", "metrics.jsonl", "tb", "checkpoints",
                         "client_state", "final_model.pt", "cluster_models.pt", "clusters.json"})


@dataclass(frozen=True)
class Existing:
    """What a run directory held before this job touched it (read by rank 0, then broadcast).

    ``info`` is the previous ``run.json`` (``None`` when there is none or it is unreadable);
    ``fresh``: the directory did not exist or was empty, so a job that fails before its first
    round may remove it again; ``foreign``: entries that no fl run writes.
    """

    path: str
    info: dict | None
    has_checkpoints: bool
    fresh: bool
    foreign: tuple[str, ...]

    @property
    def status(self) -> str | None:
        return None if self.info is None else str(self.info.get("status"))


def inspect(run_dir: Path) -> Existing:
    entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    checkpoints = run_dir / "checkpoints"
    has_ckpt = checkpoints.is_dir() and any(p.suffix == ".pt" for p in checkpoints.iterdir())
    info = read_json(run_dir / "run.json")
    return Existing(str(run_dir), info if isinstance(info, dict) else None, has_ckpt, not entries,
                    tuple(e for e in entries if e not in RUN_ENTRIES))


def remove_fresh(run_dir: Path) -> None:
    """Remove a run directory this job created, and leave no empty ``outputs/<date>/`` behind (only
    that default layout's date folder: a parent the user chose is theirs, even when empty)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent
    if parent.parent.name not in ("outputs", "multirun"):
        return
    try:
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    except OSError:
        pass


def write_hydra_files(run_dir: Path, files: dict[str, str]) -> None:
    """Hydra's ``.hydra/`` record (config.yaml, overrides.yaml, hydra.yaml), written only once the job
    may use this directory, and atomically, so a refused or interrupted start never leaves a bad one."""
    for name, text in files.items():
        write_text(run_dir / ".hydra" / name, text)
