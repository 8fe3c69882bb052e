"""Federated training entry point.

    torchrun --standalone --nproc_per_node=2 train.py [hydra overrides]
    python train.py [hydra overrides]            # world size 1, no process group
    python train.py -m strategy=fedavg,fedprox   # a sweep: every point checked before the first runs

The package does the work: :func:`fl.cli.main` checks every job, runs it through Hydra and
turns a user's mistake into one line and exit status 2 (see ``fl/cli.py``).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from fl.cli import main

if __name__ == "__main__":
    code = main(config_dir=str(Path(__file__).resolve().parent / "conf"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the job is over: a late Ctrl-C must not interrupt the exit
    sys.exit(code)
