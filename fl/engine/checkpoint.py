"""Checkpoints: written atomically by rank 0, loaded with ``weights_only=True``.

A checkpoint holds the global model (flat), the strategy's server state, the number of
completed rounds, the seed and the config fingerprint. There is no RNG stream state to
save: every random stream is derived from (seed, round, client) (see ``fl.runtime.seeding``), so
resuming at round r replays exactly what an uninterrupted run does from round r.

Each ``round_XXXXXX.pt`` has a ``.sha256`` beside it, written before the checkpoint is
renamed into place; a file whose bytes do not match (truncated, bit rot, a half-copied
file) is as unreadable as one that does not parse.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from fl.errors import ConfigError
from fl.engine.records import write_text

log = logging.getLogger(__name__)

_NAME = re.compile(r"^round_(\d{6})\.pt$")


def checkpoint_path(folder: Path, round_num: int) -> Path:
    return folder / f"round_{round_num:06d}.pt"


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def save(folder: Path, round_num: int, payload: dict[str, Any], keep: int) -> Path:
    """Write ``payload`` for ``round_num`` via temp file + fsync + rename; keep the newest ``keep``."""
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, round_num)
    tmp = final.with_name(final.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    write_text(_digest_path(final), _sha256(tmp) + "\n")
    os.replace(tmp, final)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink()
        _digest_path(old).unlink(missing_ok=True)
    return final


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path) -> None:
    digest = _digest_path(path)
    if not digest.exists():
        raise ValueError(f"{digest.name} is missing")
    if digest.read_text().strip() != _sha256(path):
        raise ValueError("its SHA-256 does not match " + digest.name)


def load_latest(folder: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint, or ``None`` when there is none.

    An unreadable (e.g. truncated) newest file is skipped with a warning and the previous
    one is used; if checkpoints exist but none can be read, that is an error, never a
    silent start from scratch.
    """
    paths = list_checkpoints(folder)
    for path in reversed(paths):
        try:
            _verify(path)
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, and said so
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path.name, e)
            continue
        state["file"] = path.name
        return state
    if paths:
        raise ConfigError("hydra.run.dir", str(folder.parent), f"holds {len(paths)} checkpoint(s) in checkpoints/ and "
                          "none is readable (see the warnings above); refusing to start over on top of them: move "
                          "them away to start afresh, or use a new run dir")
    return None
