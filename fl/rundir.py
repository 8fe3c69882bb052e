"""Make every rank, and every restart of a job, use the same run directory.

Hydra resolves ``${now:...}`` in each process separately, so under torchrun the ranks
can pick different directories when they start across a second boundary (hydra #2070).
Rank 0's choice wins; a rank whose own choice differs removes it if Hydra left it empty
(non-zero ranks write no ``.hydra/`` there, see ``conf/config.yaml``).

Under ``torchrun --max-restarts=K`` a restarted attempt would resolve ``${now:...}`` again
and start over in a new directory; :func:`elastic_run_dir` (the ``fl_run_dir`` resolver in
the default ``hydra.run.dir``) sends it back to the first attempt's directory, where the
checkpoints are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

from fl.comm import Comm


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
