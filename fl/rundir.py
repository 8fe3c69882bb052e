"""Make every rank use the same run directory.

Hydra resolves ``${now:...}`` in each process separately, so under torchrun the ranks
can pick different directories when they start across a second boundary (hydra #2070).
Rank 0's choice wins; a rank whose own choice differs removes it if Hydra left it empty
(non-zero ranks write no ``.hydra/`` there, see ``conf/config.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from fl.comm import Comm


def agree_run_dir(comm: Comm, local: Path) -> Path:
    """Collective: rank 0's run directory, on every rank."""
    chosen = Path(comm.broadcast_object(str(local.resolve())))
    if chosen != local.resolve() and local.is_dir() and not any(local.iterdir()):
        local.rmdir()
    return chosen
