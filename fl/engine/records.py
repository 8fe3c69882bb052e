"""Files a run writes: atomically (temp file, fsync, rename) and as strict JSON.

A record is either the old file or the new one, never a half-written one, even when the
process is killed mid-write. Non-finite floats (a diverged loss) are written as ``null``:
``NaN`` is not JSON, and tools that read ``run.json`` or ``metrics.jsonl`` would reject it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def jsonable(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (dicts, lists and tuples walked)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (``allow_nan=False`` after :func:`jsonable`); unknown types by ``str``."""
    return json.dumps(jsonable(obj), indent=indent, default=str, allow_nan=False)


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` atomically (a killed job never leaves half a model)."""
    import torch

    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
