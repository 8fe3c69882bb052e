"""May this job use an existing run directory, and from which round?

Decided before anything is written, identically on every rank, from the newest readable
checkpoint's metadata and the previous ``run.json`` (:class:`fl.engine.rundir.Existing`):

* a checkpoint whose config fingerprint differs, or one past ``fl.rounds``, refuses the job;
* a checkpoint at ``fl.rounds`` of a run that completed, or at the round where a completed run
  reached a target (``reached_target`` in ``run.json``) that ``fl.target`` still accepts: the run
  is already complete (a stricter target, or none, continues it);
* otherwise the job resumes from the checkpoint;
* no checkpoint but a previous ``run.json``: a completed run cannot be continued (nothing to
  resume from) unless it is the same job, which is then complete; an unfinished attempt of the
  same job (say, killed before its first checkpoint) starts over; another job's record refuses.

Pure: no collectives, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from fl.errors import ConfigError
from fl.engine import target as stop_target
from fl.engine.rundir import Existing

# Keys whose change would make a resumed run differ from the run that wrote the checkpoint.
FINGERPRINT_KEYS = ("seed", "data", "partition", "model", "optim", "strategy", "train.batch_size",
                    "fl.num_clients", "fl.clients_per_round", "fl.local_epochs", "fl.local_epochs_max", "fl.local_steps",
                    "fl.holdout_fraction", "personalization", "attack", "fl.dropout_rate",
                    "fl.client_slowdown_max", "fl.client_slowdown_tail", "fl.round_deadline", "fl.min_clients_per_round",
                    "privacy", "secagg", "compression", "scheduler")

# What a key added to the fingerprint meant in runs written before it existed.
_BEFORE_IT_EXISTED = {"compression": {d: {"_target_": "fl.compression.codecs.NoCompression"}
                                      for d in ("uplink", "downlink")},
                      "scheduler": {"name": "sync"}}

_NOT_RESULT_AFFECTING = ("root", "download", "on_device")  # where data lives, not what it is


def fingerprint(cfg: DictConfig) -> dict:
    out = {}
    for k in FINGERPRINT_KEYS:
        node = OmegaConf.select(cfg, k)
        value = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        if k == "data":
            value = {key: v for key, v in value.items() if key not in _NOT_RESULT_AFFECTING}
        out[k] = value
    return out


@dataclass(frozen=True)
class Resume:
    """``start``: rounds already done; ``complete``: nothing to do, leave the directory untouched."""

    start: int
    complete: bool = False


def decide(cfg: DictConfig, checkpoint: dict | None, existing: Existing) -> Resume:
    """The decision for this job; raises :class:`ConfigError` naming the key when it is refused.

    ``checkpoint``: the newest readable checkpoint's ``round`` and ``fingerprint``, or ``None``.
    """
    now, rounds, where = fingerprint(cfg), int(cfg.fl.rounds), existing.path
    reached = (existing.info or {}).get("reached_target") if existing.status == "completed" else None
    stopped_early = stop_target.still_met(stop_target.of(cfg), reached)
    if checkpoint is not None:
        _same(now, checkpoint["fingerprint"], f"the checkpoint in {where}/checkpoints was written with")
        start = int(checkpoint["round"])
        if start > rounds:
            raise ConfigError("fl.rounds", rounds, f"must be >= {start}, the rounds already done by the checkpoint "
                              f"in {where}/checkpoints")
        if stopped_early and start == int(reached["round"]):
            return Resume(start, complete=True)
        return Resume(start, complete=start == rounds and existing.status == "completed")
    if existing.info is None:
        if existing.foreign:
            raise ConfigError("hydra.run.dir", where, f"is not empty and holds no fl run ({', '.join(existing.foreign[:3])}"
                              f"{', ...' if len(existing.foreign) > 3 else ''}); use a new or empty directory")
        return Resume(0)
    before = existing.info.get("fingerprint")
    if before is not None:
        _same(now, before, f"the run in {where} was started with")
    if existing.status != "completed":
        return Resume(0)  # an unfinished attempt of this job with no checkpoint: start it over
    done = existing.info.get("rounds")
    if before is not None and stopped_early:
        return Resume(int(reached["round"]), complete=True)
    if reached:
        raise ConfigError("fl.target", cfg.fl.target, f"the run in {where} stopped at round {reached['round']}, when "
                          f"{reached['metric']} reached {reached['value']:.4f} (target {reached['target']:g}), and kept "
                          "no checkpoint to continue from (fl.checkpoint_every=0); use a new run dir")
    if before is not None and done == rounds:
        return Resume(rounds, complete=True)
    raise ConfigError("fl.rounds", rounds, f"the run in {where} completed {done} rounds and kept no checkpoint to "
                      "continue from (fl.checkpoint_every=0); use a new run dir")


def _same(now: dict, before: dict, written: str) -> None:
    before = {**_BEFORE_IT_EXISTED, **before}
    changed = [k for k in FINGERPRINT_KEYS if before.get(k) != now[k]]
    if changed:
        key, new, old = _first_difference(changed[0], now[changed[0]], before.get(changed[0]))
        raise ConfigError(key, new, f"{written} {key}={old!r}; resume with the same value or use a new run dir")


def _first_difference(key: str, new: object, old: object) -> tuple[str, object, object]:
    """The dotted key of the first leaf where two config values differ (``optim.lr``, not ``optim``)."""
    if isinstance(new, dict) and isinstance(old, dict):
        for k in list(new) + [k for k in old if k not in new]:
            if new.get(k) != old.get(k):
                return _first_difference(f"{key}.{k}", new.get(k), old.get(k))
    return key, new, old
