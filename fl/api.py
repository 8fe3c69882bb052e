"""Run a job from Python (a notebook, a script): one process, world size 1, no torchrun.

    from hydra import compose, initialize_config_dir
    import fl.api

    with initialize_config_dir(config_dir="/path/to/fl/conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["fl.rounds=5", "fl.num_clients=4"])
    result = fl.api.run_job(cfg, "outputs/notebook")
    result.summary["final"]["test_accuracy"], result.model     # the trained torch.nn.Module

The job is the same as ``python train.py`` with those overrides: validated first (a mistake
raises :class:`fl.errors.ConfigError` naming the key), the same run directory records, the
same resume rules (calling it again with the same directory continues or says it is complete).
The job's ``runtime.malloc`` (default ``keep``: :mod:`fl.runtime.allocator`) then applies to this
process from that point on; ``runtime.malloc=system`` leaves it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from fl.engine.loop import run
from fl.models import build_model
from fl.runtime.env import DistEnv


@dataclass(frozen=True)
class JobResult:
    """``summary``: what ``run.json`` holds; ``model``: the final global model; ``run_dir``: where it all is."""

    summary: dict
    model: torch.nn.Module
    run_dir: Path


def run_job(cfg: DictConfig, run_dir: str | Path | None = None) -> JobResult:
    """Run the job ``cfg`` (a composed config; not modified) in this process and return its result.

    ``run_dir`` defaults to ``outputs/api/<date>_<time>``. Raises :class:`~fl.errors.ConfigError`
    before any work when the config is invalid.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))  # validation fills nulls: keep the caller's config
    folder = Path(run_dir) if run_dir is not None else Path("outputs") / "api" / datetime.now().strftime(
        "%Y-%m-%d_%H-%M-%S")
    summary = run(cfg, folder, DistEnv(0, 1, 0))
    model = build_model(cfg.model, summary["input_shape"], int(summary["num_classes"]))
    model.load_state_dict(torch.load(folder / "final_model.pt", weights_only=True))
    return JobResult(summary, model.eval(), folder)
