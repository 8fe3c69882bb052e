"""Validate a composed config before any work starts.

Every check raises :class:`~fl.errors.ConfigError` naming the key, the value and what is
allowed. Settings that have no effect are warned about, not silently ignored. Unknown keys
and unknown group options are already refused by Hydra when it composes the config.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from fl.asynchronous import settings as scheduler
from fl.transport.plain import TRANSPORTS
from fl.data import folder
from fl.engine import target as stop_target
from fl.data.datasets import SITE_DATASETS
from fl.errors import ConfigError
from fl.runtime.allocator import MODES as MALLOC_MODES
from fl.runtime.env import BACKENDS

log = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _int(cfg: DictConfig, key: str, low: int, high: int | None = None, allow_none: bool = False) -> None:
    value = cfg_get(cfg, key)
    if value is None and allow_none:
        return
    upper = "" if high is None else f" and <= {high}"
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise ConfigError(key, value, f"must be an integer >= {low}{upper}" + (" (or null)" if allow_none else ""))


def _choice(cfg: DictConfig, key: str, allowed: tuple[object, ...]) -> None:
    value = cfg_get(cfg, key)
    if value not in allowed:
        raise ConfigError(key, value, f"must be one of {', '.join(map(str, allowed))}")


def cfg_get(cfg: DictConfig, key: str) -> object:
    node: object = cfg
    for part in key.split("."):
        node = node[part]  # type: ignore[index]
    return node


def validate(cfg: DictConfig, world_size: int, rank: int = 0) -> None:
    """Check ``cfg`` for a job of ``world_size`` ranks; fill ``fl.num_clients`` and
    ``fl.clients_per_round`` when null. ``rank`` selects which per-site folders to check."""
    _int(cfg, "seed", 0)
    _int(cfg, "fl.rounds", 1)
    if "_target_" not in cfg.data:
        _choice(cfg, "data.name", SITE_DATASETS)
    _choice(cfg, "strategy.transport", TRANSPORTS)
    _choice(cfg, "runtime.backend", BACKENDS)
    _choice(cfg, "runtime.device", ("auto", "cpu", "cuda"))
    _choice(cfg, "runtime.log_level", LOG_LEVELS)
    _choice(cfg, "runtime.malloc", MALLOC_MODES)
    if not (isinstance(cfg.runtime.timeout_s, (int, float)) and cfg.runtime.timeout_s > 0):
        raise ConfigError("runtime.timeout_s", cfg.runtime.timeout_s, "must be a number of seconds > 0")

    _int(cfg, "fl.num_clients", world_size, allow_none=True)
    with open_dict(cfg):
        if cfg.fl.num_clients is None:
            cfg.fl.num_clients = world_size
        num_clients = cfg.fl.num_clients
    if num_clients < world_size:
        raise ConfigError("fl.num_clients", num_clients, f"must be >= the number of ranks ({world_size})")
    scheduler.validate(cfg)  # an asynchronous run's buffer size is fl.clients_per_round
    with open_dict(cfg):
        if cfg.fl.clients_per_round is None:
            cfg.fl.clients_per_round = num_clients
    _int(cfg, "fl.clients_per_round", 1, num_clients)
    if cfg.fl.clients_per_round < world_size:
        log.warning("fl.clients_per_round=%d < %d ranks: some ranks train no client each round",
                    cfg.fl.clients_per_round, world_size)
    _int(cfg, "fl.local_epochs", 1)
    _int(cfg, "fl.local_steps", 1, allow_none=True)
    _int(cfg, "fl.local_epochs_max", cfg.fl.local_epochs, allow_none=True)
    if cfg.fl.local_epochs_max is not None and cfg.fl.local_steps is not None:
        log.warning("fl.local_steps=%d is set: fl.local_epochs_max=%d has no effect", cfg.fl.local_steps,
                    cfg.fl.local_epochs_max)
    if cfg.fl.local_steps is not None and cfg.fl.local_epochs != 1:
        log.warning("fl.local_steps=%d is set: fl.local_epochs=%d has no effect", cfg.fl.local_steps,
                    cfg.fl.local_epochs)
    _int(cfg, "fl.eval_every", 1)
    stop_target.of(cfg)
    _int(cfg, "fl.eval_clients", 1, num_clients, allow_none=True)
    if cfg.fl.eval_clients is not None and cfg.fl.holdout_fraction == 0:
        log.warning("fl.eval_clients=%d has no effect: fl.holdout_fraction=0 leaves no held-out data",
                    cfg.fl.eval_clients)
    _int(cfg, "fl.min_client_samples", 1)
    batch = cfg.fl.client_batch
    if batch not in ("auto", "off") and not (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1):
        raise ConfigError("fl.client_batch", batch, "must be auto, off or a number of clients >= 1 per chunk")
    _number(cfg, "fl.client_batch_memory_mb", 0, low_open=True, allowed="must be a number of megabytes > 0")
    _int(cfg, "fl.checkpoint_every", 0)
    _number(cfg, "fl.residual_memory_mb", 0, allowed="must be a number of megabytes >= 0 (0: a file per client and round)")
    _int(cfg, "fl.keep_checkpoints", 1)
    hf = cfg.fl.holdout_fraction
    if not (isinstance(hf, (int, float)) and 0 <= hf < 1):
        raise ConfigError("fl.holdout_fraction", hf, "must be a number in [0, 1)")
    _int(cfg, "train.batch_size", 1)
    _int(cfg, "train.eval_batch_size", 1)

    _choice(cfg, "personalization.name", ("none", "finetune"))
    if cfg.personalization.name == "finetune":
        _int(cfg, "personalization.steps", 1)
        if cfg.fl.holdout_fraction == 0:
            log.warning("personalization=finetune has no effect: fl.holdout_fraction=0 leaves nothing to evaluate")
    _validate_participation(cfg)
    _validate_optim(cfg)
    _validate_partition(cfg, num_clients)
    _validate_data(cfg, num_clients, world_size, rank)


def _number(cfg: DictConfig, key: str, low: float, high: float | None = None, low_open: bool = False,
            allowed: str | None = None) -> float:
    value = cfg_get(cfg, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bounds = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high})"
        raise ConfigError(key, value, allowed or f"must be a number in {bounds}")
    return float(value)


def _validate_participation(cfg: DictConfig) -> None:
    _number(cfg, "fl.dropout_rate", 0, 1)
    _number(cfg, "fl.client_slowdown_max", 1)
    if cfg.fl.client_slowdown_tail is not None:
        _number(cfg, "fl.client_slowdown_tail", 0, low_open=True,
                allowed="must be null (log-uniform slowdowns) or a Pareto tail index > 0 (smaller: heavier tail)")
        if cfg.fl.client_slowdown_max == 1:
            log.warning("fl.client_slowdown_tail=%s has no effect with fl.client_slowdown_max=1 (the cap)",
                        cfg.fl.client_slowdown_tail)
    if cfg.fl.round_deadline is not None:
        _number(cfg, "fl.round_deadline", 0, low_open=True,
                allowed="must be null or a number > 0 (local steps of the fastest client)")
        if cfg.fl.client_slowdown_max == 1:
            log.info("fl.round_deadline=%s with fl.client_slowdown_max=1: every client runs at full speed",
                     cfg.fl.round_deadline)
    elif cfg.fl.client_slowdown_max > 1 and cfg.scheduler.name == "sync":
        log.info("fl.client_slowdown_max=%s without fl.round_deadline: every round waits for its slowest client "
                 "(the sim_time metric)", cfg.fl.client_slowdown_max)
    _int(cfg, "fl.min_clients_per_round", 1, int(cfg.fl.clients_per_round))


def _validate_optim(cfg: DictConfig) -> None:
    for key in ("lr", "weight_decay", "momentum"):
        if key in cfg.optim:
            value = cfg.optim[key]
            bad = not isinstance(value, (int, float)) or value < 0 or (key == "lr" and value == 0)
            if bad or (key == "momentum" and value >= 1):
                allowed = {"lr": "must be > 0", "weight_decay": "must be >= 0", "momentum": "must be in [0, 1)"}
                raise ConfigError(f"optim.{key}", value, allowed[key])


def _validate_partition(cfg: DictConfig, num_clients: int) -> None:
    """fl's own key of the group; the partitioner checks its own when it is built (fl.config.build)."""
    _int(cfg, "partition.label_groups", 1, num_clients)
    if cfg.data.get("name") in ("folder", "csv"):
        name = partition_name(cfg.partition)
        if name != "iid":
            log.warning("partition=%s has no effect with data=%s: each site keeps its own data", name, cfg.data.name)
        if cfg.partition.label_groups > 1:
            log.warning("partition.label_groups=%d has no effect with data=%s", cfg.partition.label_groups,
                        cfg.data.name)


def partition_name(node: DictConfig) -> str:
    """The option name (``dirichlet``) of a partition node, else its ``_target_``."""
    return option_name("partition", node)


def option_name(group: str, node: DictConfig) -> str:
    """The name of the bundled option (``conf/<group>/<name>.yaml``) whose ``_target_`` the node has,
    else the ``_target_`` itself (a user's own component)."""
    target = str(node.get("_target_", ""))
    return _bundled_targets(group).get(target, target)


@functools.lru_cache(maxsize=None)
def _bundled_targets(group: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted((Path(__file__).resolve().parents[2] / "conf" / group).glob("*.yaml")):
        for line in path.read_text().splitlines():
            if line.startswith("_target_:"):
                out.setdefault(line.split(":", 1)[1].strip(), path.stem)
    return out


def _validate_data(cfg: DictConfig, num_clients: int, world_size: int, rank: int) -> None:
    d = cfg.data
    if d.get("augment") is not None:
        _int(cfg, "data.augment.crop", 0)
        _choice(cfg, "data.augment.flip", (True, False))
    for key, check in (("stream", lambda: _choice(cfg, "data.stream", (True, False))),
                       ("workers", lambda: _int(cfg, "data.workers", 0)),
                       ("prefetch", lambda: _int(cfg, "data.prefetch", 1))):
        if key in d:
            check()
    if "_target_" in d:  # a data component: it imports and takes the group's keys
        import inspect

        from fl.config.components import check_arguments, instantiate_component, locate
        from fl.data.component import FL_KEYS

        target = locate("data", d.get("_target_"))
        if inspect.isclass(target) and callable(getattr(target, "load", None)):
            instantiate_component("data", d, skip=FL_KEYS)  # a loader object checks its keys when built
        else:  # a function or a Dataset class: building it would load the data
            args = {k: v for k, v in d.items() if not str(k).startswith("_") and k not in FL_KEYS}
            check_arguments("data", target, args, set())
    elif d.name == "csv":
        if "{client}" not in str(d.root):
            raise ConfigError("data.root", d.root, "must contain '{client}', e.g. /data/hospital_{client}.csv")
        for cid in (c for c in range(num_clients) if c % world_size == rank):
            if not Path(str(d.root).format(client=cid)).is_file():
                raise ConfigError("data.root", d.root, f"client {cid}: {str(d.root).format(client=cid)} must be a CSV "
                                  "or Parquet file")
        if d.test_root is not None and not Path(str(d.test_root)).is_file():
            raise ConfigError("data.test_root", d.test_root, "must be a CSV or Parquet file (or null)")
    elif d.name == "folder":
        _int(cfg, "data.image_size", 4)
        _choice(cfg, "data.channels", (1, 3))
        hosted = [c for c in range(num_clients) if c % world_size == rank]
        folder.check_sites(str(d.root), hosted)
        if d.test_root is not None:
            if not Path(str(d.test_root)).is_dir():
                raise ConfigError("data.test_root", d.test_root, "must be a folder of class folders (or null)")
            folder.check_class_folders(Path(str(d.test_root)), key="data.test_root")
