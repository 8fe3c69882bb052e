"""The ``scheduler`` group: synchronous rounds (``sync``) or asynchronous server steps (``async``).

Checked before any work (:func:`validate`, from :func:`fl.config.validate.validate`, and
:func:`check`, once the strategy is built). In an asynchronous run a "round" is a server step:
``fl.rounds`` counts steps, and ``fl.clients_per_round`` is the buffer size, the updates each
step applies (``scheduler.buffer_size`` sets it too). What each key means is in
``conf/scheduler/fedbuff.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, open_dict

from fl.asynchronous.staleness import FUNCTIONS, Staleness
from fl.errors import ConfigError

MODES = ("sync", "async")


@dataclass(frozen=True)
class AsyncSettings:
    concurrency: int
    buffer_size: int
    staleness: Staleness
    max_staleness: int | None

    @classmethod
    def of(cls, cfg: DictConfig) -> "AsyncSettings | None":
        s = cfg.scheduler
        if s.name != "async":
            return None
        return cls(int(s.concurrency), int(s.buffer_size),
                   Staleness(str(s.staleness), float(s.staleness_exponent), float(s.hinge_a), int(s.hinge_b)),
                   None if s.max_staleness is None else int(s.max_staleness))


def validate(cfg: DictConfig) -> None:
    """Check the group and fill its nulls; runs before ``fl.clients_per_round`` is filled, because an
    asynchronous run's buffer size *is* that key."""
    s = cfg.scheduler
    if s.name not in MODES:
        raise ConfigError("scheduler.name", s.name, f"must be one of {', '.join(MODES)}")
    if s.name == "sync":
        return
    fl = cfg.fl
    num_clients = int(fl.num_clients)
    buffer = s.get("buffer_size")
    if buffer is not None:
        _int("scheduler.buffer_size", buffer, 1, num_clients)
        if fl.clients_per_round is not None and fl.clients_per_round != buffer:
            raise ConfigError("scheduler.buffer_size", buffer, f"is the number of updates per server step, which "
                              f"fl.clients_per_round={fl.clients_per_round} also sets; set one of them")
    with open_dict(cfg):
        if buffer is None:
            s.buffer_size = buffer = num_clients if fl.clients_per_round is None else fl.clients_per_round
        fl.clients_per_round = buffer
        if s.concurrency is None:
            s.concurrency = min(num_clients, 2 * int(buffer))
    _int("scheduler.concurrency", s.concurrency, 1, num_clients)
    if s.staleness not in FUNCTIONS:
        raise ConfigError("scheduler.staleness", s.staleness, f"must be one of {', '.join(FUNCTIONS)}")
    if not (_is_number(s.staleness_exponent) and s.staleness_exponent >= 0):
        raise ConfigError("scheduler.staleness_exponent", s.staleness_exponent, "must be a number >= 0")
    if not (_is_number(s.hinge_a) and s.hinge_a > 0):
        raise ConfigError("scheduler.hinge_a", s.hinge_a, "must be a number > 0")
    _int("scheduler.hinge_b", s.hinge_b, 0)
    if s.max_staleness is not None:
        _int("scheduler.max_staleness", s.max_staleness, 0)
    if fl.round_deadline is not None:
        raise ConfigError("fl.round_deadline", fl.round_deadline, "must be null with scheduler=async: no step waits "
                          "for a deadline (updates arrive when they arrive); scheduler.max_staleness drops old ones")


def check(cfg: DictConfig, strategy: object, local_dp: bool) -> None:
    """Refuse what an asynchronous run cannot do, once the strategy is built."""
    if cfg.scheduler.name != "async":
        return
    name = type(strategy).__name__
    if not (getattr(strategy, "is_weighted_mean", False) and strategy.vector_dim(1) == 1  # type: ignore[attr-defined]
            and not getattr(strategy, "personalizes", False)):
        raise ConfigError("strategy", name, "cannot run with scheduler=async: a server step applies the staleness-"
                          "weighted mean of model deltas, so the strategy must average model deltas and keep no "
                          "per-client model (fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad, fedsgd, "
                          "norm_bound)")
    if local_dp:
        raise ConfigError("privacy", "dp_sgd_local", "cannot run with scheduler=async: its accountant counts each "
                          "client's rounds of a synchronous schedule; use privacy=dp_fedavg (noise per server step)")


def _int(key: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        upper = "" if high is None else f" and <= {high}"
        raise ConfigError(key, value, f"must be an integer >= {low}{upper}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
