"""torchrun, quietly: ``python -m fl.launch [torchrun options] train.py [overrides]``.

It takes exactly torchrun's arguments and runs torchrun's own launcher. The difference is how
it ends: when a worker fails, torchrun prints a Python traceback of its own and a failure
report of some 40 lines after the worker's one-line reason; this keeps the reason alone (rank
0 prints its own; another rank's is printed as ``[launcher] rank R failed (exit N): <reason>``)
and exits with that worker's status (2 for a user's mistake). On Ctrl-C or SIGTERM the workers still stop after their round with a
checkpoint (torchrun forwards the signal); this exits 130 or 143 without a traceback.
It also checks fl's command line once before any worker starts (a mistake is one line, and
``--max-restarts`` does not restart a job that cannot run). ``scripts/run_local.sh`` (``make
run``) launches through it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def _reason(failure: object) -> str | None:
    """The one-line reason a worker wrote to its error file (``fl.runtime.env.report_to_launcher``), if any."""
    data = getattr(failure, "error_file_data", None) or {}
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    return str(message).splitlines()[0] if message else None


def _mistaken(args: object) -> bool:
    """Check fl's command line once, as rank 0 of the job's world size, before any worker starts:
    a mistake is then one line, and ``--max-restarts`` does not restart a job that cannot run."""
    script = Path(getattr(args, "training_script"))
    low, _, high = str(getattr(args, "nnodes")).partition(":")
    try:
        nodes = int(low)
        world_size = int(getattr(args, "nproc_per_node")) * nodes
    except ValueError:  # "auto", "gpu": the workers check for themselves
        return False
    if high and int(high) != nodes:  # an elastic MIN:MAX range: the world size is not known yet
        return False
    if script.name != "train.py" or not (script.parent / "conf").is_dir() or "-m" in sys.argv:
        return False
    from fl.cli import check_command_line
    from fl.engine.logs import setup_logging
    from fl.runtime.env import DistEnv

    setup_logging(0)
    argv = list(getattr(args, "training_script_args"))
    return check_command_line(argv, DistEnv(0, world_size, 0), str(script.parent / "conf"))


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if _mistaken(args):
        return 2
    for name in list(logging.root.manager.loggerDict):  # their report repeats the workers' reasons
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        reason = _reason(failure)
        if rank != 0 or reason is None:  # rank 0 has printed its reason itself; the others only report it
            what = reason or (f"killed by {failure.signal_name()}" if failure.exitcode < 0 else "no reason recorded")
            print(f"[launcher] rank {rank} failed (exit {code}): {what}", file=sys.stderr)
        return code
    except SignalException as e:
        print(f"[launcher] stopped by {e.sigval.name}; the workers wrote a checkpoint when they could: run the same "
              "command again to continue", file=sys.stderr)
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
