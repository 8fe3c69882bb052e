"""Finding and loading run directories: one :class:`Run` per directory holding a ``run.json``.

A run's per-round record merges two sources. TensorBoard holds every round (bytes and seconds
of rounds that were not evaluated too); ``metrics.jsonl`` holds the evaluated rounds at full
precision, and wins where both have a value. A run without its ``tb`` folder still loads: the
unevaluated rounds are then missing, and :func:`fl.report.summary.cumulative` counts each
recorded round's bytes and seconds for the rounds since the previous record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fl.engine.metrics import TAGS
from fl.engine.records import read_json

# Config keys (and groups) that say where or how a run ran, not what it computed; seeds are grouped over.
INCIDENTAL = ("seed", "data.root", "hydra", "runtime", "fl.checkpoint_every", "fl.keep_checkpoints")


def incidental(key: str) -> bool:
    """``key`` (``a.b``, or an override ``a.b=v``) is one of :data:`INCIDENTAL` or below one."""
    key = key.lstrip("+~").split("=", 1)[0]
    return any(key == k or key.startswith(k + ".") for k in INCIDENTAL)


@dataclass(frozen=True)
class Run:
    """One run directory, read.

    ``records``: one dict per round with a record, ordered by ``round`` (1-based); ``config``:
    the composed config flattened to dotted keys; ``overrides``: the Hydra command-line
    overrides that made it (``None`` when the directory has no ``.hydra/overrides.yaml``).
    """

    path: Path
    info: dict[str, Any]
    config: dict[str, Any]
    overrides: tuple[str, ...] | None
    records: tuple[dict[str, float], ...]

    @property
    def seed(self) -> Any:
        return self.config.get("seed", self.info.get("fingerprint", {}).get("seed"))

    @property
    def settings(self) -> tuple[str, ...] | None:
        """The overrides that change what was computed (no seed, paths or logging)."""
        if self.overrides is None:
            return None
        return tuple(o for o in self.overrides if not incidental(o))

    def evaluated(self, metric: str) -> list[dict[str, float]]:
        return [r for r in self.records if r.get(metric) is not None]


def find_runs(paths: list[Path]) -> list[Path]:
    """Every run directory at or below ``paths``, in order (a multirun's points by number).

    Raises ``ValueError`` naming a path that does not exist or holds no run.
    """
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ValueError(f"{path}: no such file or directory")
        if (path / "run.json").is_file():
            found.append(path)
            continue
        below = sorted((p.parent for p in path.rglob("run.json")), key=_natural)
        if not below:
            raise ValueError(f"{path}: holds no run (a run directory has a run.json; a multirun directory "
                             "has run directories below it)")
        found.extend(below)
    return list(dict.fromkeys(found))


def load_run(path: Path) -> Run:
    info = read_json(path / "run.json")
    if not isinstance(info, dict):
        raise ValueError(f"{path / 'run.json'}: not a readable run record")
    config_file, overrides_file = path / ".hydra" / "config.yaml", path / ".hydra" / "overrides.yaml"
    config = flatten(yaml.safe_load(config_file.read_text())) if config_file.is_file() else \
        flatten(info.get("fingerprint", {}))
    overrides = tuple(yaml.safe_load(overrides_file.read_text()) or ()) if overrides_file.is_file() else None
    return Run(path, info, config, overrides, tuple(read_records(path)))


def read_records(path: Path) -> list[dict[str, float]]:
    """Per-round records of one run: TensorBoard's scalars overlaid with ``metrics.jsonl``."""
    rows: dict[int, dict[str, float]] = {}
    for step, key, value in _tensorboard_scalars(path / "tb"):
        rows.setdefault(step, {"round": step})[key] = value
    jsonl = path / "metrics.jsonl"
    if jsonl.is_file():
        for line in jsonl.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                rows.setdefault(int(record["round"]), {}).update(record)
    return [rows[r] for r in sorted(rows)]


def _tensorboard_scalars(tb_dir: Path) -> list[tuple[int, str, float]]:
    if not tb_dir.is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    keys = {tag: key for key, tag in TAGS.items()}
    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, keys[tag], float(e.value)) for tag in events.Tags()["scalars"] if tag in keys
            for e in events.Scalars(tag)]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _natural(path: Path) -> tuple:
    """Multirun points 0, 1, ..., 10 in that order, not 0, 1, 10, 2."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)
