"""Federated training entry point.

    torchrun --standalone --nproc_per_node=2 train.py [hydra overrides]
    python train.py [hydra overrides]            # world size 1, no process group
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fl.comm import CollectiveError
from fl.errors import ConfigError
from fl.loop import run
from fl.preemption import EXIT_PREEMPTED
from fl.rundir import elastic_run_dir
from fl.runtime import report_to_launcher

# Only rank 0 keeps Hydra's .hydra/ folder (resolved config, overrides): the other ranks
# would otherwise create their own run directories when their ${now:} differs.
OmegaConf.register_new_resolver("fl_rank0_only", lambda value: value if os.environ.get("RANK", "0") == "0" else None)
# A restarted torchrun attempt (--max-restarts) goes back to the first attempt's run directory.
OmegaConf.register_new_resolver("fl_run_dir", elastic_run_dir)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        summary = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as e:  # a user mistake: one line, no traceback, exit status 2
        logging.getLogger("fl").error("%s", e)
        report_to_launcher(f"{type(e).__name__}: {e}")
        sys.exit(2)
    except CollectiveError as e:  # another rank died or hangs: name this rank and the operation
        logging.getLogger("fl").error("%s", e)
        report_to_launcher(f"{type(e).__name__}: {e}")
        sys.exit(1)
    if summary["status"] == "preempted":  # checkpoint written: requeue and run again to continue
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    main()
