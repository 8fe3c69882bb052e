"""The command line: ``python train.py [-m] [overrides]`` and the same under torchrun.

Every job on the command line is checked first (:mod:`fl.config.preflight`); then Hydra runs them.
A user's mistake, from whatever layer (Hydra's grammar, a key, a value, a component, the
data, the run directory, a checkpoint), ends as one line naming the key, the value and what
is allowed, with exit status 2; ``FL_TRACEBACK=1`` or ``runtime.log_level=DEBUG`` adds the
traceback. A rank lost mid-collective is one line and exit 1. Ctrl-C stops after the round
with a checkpoint (exit 130), SIGTERM likewise (exit 143); a finished run run again exits 0.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fl.errors import ConfigError
from fl.engine.logs import setup_logging
from fl.runtime.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED
from fl.engine.rundir import elastic_run_dir
from fl.runtime.env import DistEnv, report_to_launcher

log = logging.getLogger("fl")

EXIT_USER_ERROR = 2
EXIT_COLLECTIVE = 1


def _register_resolvers() -> None:
    # A restarted torchrun attempt (--max-restarts) goes back to the first attempt's run directory.
    if not OmegaConf.has_resolver("fl_run_dir"):
        OmegaConf.register_new_resolver("fl_run_dir", elastic_run_dir)


def _debug(argv: list[str]) -> bool:
    return os.environ.get("FL_TRACEBACK", "") not in ("", "0") or "runtime.log_level=DEBUG" in argv


QUIET_RANK_GRACE_S = 10.0  # how long a quiet rank waits for rank 0 to print the mistakes it also found


def _quiet_rank() -> bool:
    """Under torchrun, ranks other than 0 give their reason to the launcher only: every rank finds the
    same mistake, and the launcher's report names the rank whose reason differs."""
    return "TORCHELASTIC_ERROR_FILE" in os.environ and os.environ.get("RANK", "0") != "0"


def _fail(message: str, code: int, debug: bool, kind: str = "ConfigError") -> int:
    if not _quiet_rank() or debug:
        log.error("%s", message, exc_info=debug)
    report_to_launcher(f"{kind}: {message}")
    return code


def main(argv: list[str] | None = None, config_dir: str | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from hydra.core.global_hydra import GlobalHydra

    argv = list(sys.argv[1:] if argv is None else argv)
    config_dir = str(Path(config_dir or Path.cwd() / "conf").resolve())
    env = DistEnv.from_environ()
    debug = _debug(argv)
    setup_logging(env.rank)
    _register_resolvers()
    try:
        if check_command_line(argv, env, config_dir, debug):
            return EXIT_USER_ERROR
        status = [0]
        GlobalHydra.instance().clear()
        saved, sys.argv = sys.argv, [sys.argv[0] if sys.argv else "train.py", *argv]
        try:
            import hydra

            hydra.main(version_base="1.3", config_path=config_dir, config_name="config")(
                lambda cfg: _job(cfg, status, debug))()
        finally:
            sys.argv = saved
            GlobalHydra.instance().clear()
        return status[0]
    except KeyboardInterrupt:
        return _fail("interrupted (Ctrl-C); the run directory keeps what it had: run the same command again to "
                     "continue from the latest checkpoint", EXIT_INTERRUPTED, debug, "KeyboardInterrupt")
    except SystemExit as e:  # a sweep stopped by a signal: the job's exit status
        return int(e.code or 0)


def check_command_line(argv: list[str], env: DistEnv, config_dir: str, debug: bool = False) -> bool:
    """Check every job of ``argv`` for ``env``; print one line per mistake. True when there was one."""
    from fl.config import preflight

    errors = preflight.check(argv, env, config_dir)
    for line, exc in errors:
        if not _quiet_rank() or debug:
            log.error("%s", line, exc_info=(type(exc), exc, exc.__traceback__) if debug and exc else None)
    if errors:
        report_to_launcher(f"ConfigError: {errors[0][0]}")  # torchrun's summary shows it as the root cause
        if _quiet_rank() and not debug:
            # Rank 0 finds the same mistakes and prints them. A quiet rank that exited first would have
            # torchrun stop rank 0 before it printed: wait for rank 0's exit to end the job instead.
            time.sleep(QUIET_RANK_GRACE_S)
    return bool(errors)


def _job(cfg: DictConfig, status: list[int], debug: bool) -> None:
    """One job (Hydra's task function). A stop request ends a sweep; a user error goes on to the next point."""
    from hydra.core.hydra_config import HydraConfig

    from fl.runtime.comm import CollectiveError
    from fl.engine.loop import run

    hc = HydraConfig.get()
    files = {"config.yaml": OmegaConf.to_yaml(cfg), "overrides.yaml": OmegaConf.to_yaml(list(hc.overrides.task)),
             "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc)}))}
    debug = debug or cfg.runtime.get("log_level") == "DEBUG"
    try:
        summary = run(cfg, Path(hc.runtime.output_dir), hydra_files=files)
    except ConfigError as e:
        status[0] = _fail(f"{e}", EXIT_USER_ERROR, debug)
        return
    except CollectiveError as e:
        status[0] = _fail(f"{e}", EXIT_COLLECTIVE, debug, "CollectiveError")
        return
    if summary["status"] == "preempted":  # checkpoint written: requeue and run again to continue
        raise SystemExit(EXIT_PREEMPTED)
    if summary["status"] == "interrupted":
        raise SystemExit(EXIT_INTERRUPTED)
