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

from fl.errors import ConfigError
from fl.loop import run
from fl.runtime import report_to_launcher

# Only rank 0 keeps Hydra's .hydra/ folder (resolved config, overrides): the other ranks
# would otherwise create their own run directories when their ${now:} differs.
OmegaConf.register_new_resolver("fl_rank0_only", lambda value: value if os.environ.get("RANK", "0") == "0" else None)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as e:  # a user mistake: one line, no traceback, exit status 2
        logging.getLogger("fl").error("%s", e)
        report_to_launcher(f"{type(e).__name__}: {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
