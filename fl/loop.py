"""The round loop: sample, train locally, aggregate, evaluate, checkpoint.

:func:`run` is the whole job for one rank, given a composed config (validated here) and
the run directory. Every rank calls it; collectives happen in the same order on all.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import fl
from fl import checkpoint, evaluation
from fl.aggregation import choose_transport, make_aggregator
from fl.build import Federation, build_attack, build_federation, build_flat_model, build_optimizer_factory, \
    build_local_dp, build_privacy, build_strategy, check_secagg
from fl.client import local_train
from fl.client_store import ClientStore
from fl.cohort import assign, client_epochs, drops_out, local_steps, sample_cohort, slowdown
from fl.comm import Comm
from fl.config import dp_epsilon, validate
from fl.errors import ConfigError
from fl.flat import FlatModel
from fl.local_dp import LocalAccountant, unsupported_layers
from fl.logs import setup_logging
from fl.metrics import MetricsSink, NullSink
from fl.preemption import StopRequest
from fl.rundir import agree_run_dir
from fl.runtime import DistEnv, process_group, resolve_backend, resolve_device
from fl.secure_sum import SecureSumAggregator
from fl.strategies.base import Strategy
from fl.types import ClientTask, LocalTraining, OptimizerFactory, RoundResult, StrategyContext

log = logging.getLogger(__name__)

# Keys whose change would make a resumed run differ from the run that wrote the checkpoint.
FINGERPRINT_KEYS = ("seed", "data", "partition", "model", "optim", "strategy", "train.batch_size",
                    "fl.num_clients", "fl.clients_per_round", "fl.local_epochs", "fl.local_epochs_max", "fl.local_steps",
                    "fl.holdout_fraction", "personalization", "attack", "fl.dropout_rate",
                    "fl.client_slowdown_max", "fl.round_deadline", "fl.min_clients_per_round", "privacy", "secagg")


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


def run(cfg: DictConfig, run_dir: Path, env: DistEnv | None = None, init_method: str | None = None) -> dict:
    """Run the federated job on this rank; returns the run summary (also in ``run.json``).

    Raises :class:`ConfigError` before any work (and before the process group exists)
    when the config is invalid.
    """
    env = env or DistEnv.from_environ()
    setup_logging(env.rank, cfg.runtime.log_level)
    validate(cfg, env.world_size, env.rank)
    device = resolve_device(cfg.runtime.device, env.local_rank)
    backend = resolve_backend(cfg.runtime.backend, device)
    strategy, requested = build_strategy(cfg)
    transport = choose_transport(requested, strategy)
    build_privacy(cfg, strategy, transport, 1)  # refuse impossible combinations before any work
    check_secagg(cfg, strategy, transport)
    build_local_dp(cfg, strategy)
    make_optimizer = build_optimizer_factory(cfg)
    strategy.check(StrategyContext(int(cfg.fl.num_clients), int(cfg.fl.clients_per_round), make_optimizer,
                                   int(cfg.seed)))
    with process_group(env, device, backend, float(cfg.runtime.timeout_s), init_method), StopRequest() as stop:
        comm = Comm(env.rank, env.world_size, device, float(cfg.runtime.timeout_s))
        run_dir = agree_run_dir(comm, run_dir)
        if comm.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(env.rank, cfg.runtime.log_level, run_dir / "train.log" if comm.is_main else None)
        info = _run_info(cfg, comm, backend, device, transport)
        _write_json(comm, run_dir / "run.json", {**info, "status": "running"})
        try:
            fed = build_federation(cfg, comm, device)
            fm = build_flat_model(cfg, fed.spec, device)
            strategy.on_model(fm)
            if cfg.privacy.name == "dp_sgd_local" and (problems := unsupported_layers(fm.module)):
                raise ConfigError("model", cfg.model.name, f"privacy=dp_sgd_local cannot train it: {problems[0]}")
            _write_json(comm, run_dir / "partition.json", fed.summary)
            summary = Rounds(cfg, comm, fed, fm, strategy, transport, make_optimizer, run_dir, stop).run()
        except BaseException as e:
            _write_json(comm, run_dir / "run.json", {**info, "status": f"failed: {type(e).__name__}: {e}",
                                                     "end_time": _now()})
            raise
        status = "preempted" if summary.pop("preempted", False) else "completed"
        summary = {**info, **summary, "status": status, "end_time": _now()}
        _write_json(comm, run_dir / "run.json", summary)
        return summary


class Rounds:
    """State and steps of the round loop for one rank."""

    def __init__(self, cfg: DictConfig, comm: Comm, fed: Federation, fm: FlatModel, strategy: Strategy,
                 transport: str, make_optimizer: OptimizerFactory, run_dir: Path,
                 stop: StopRequest | None = None) -> None:
        self.cfg, self.comm, self.fed, self.fm = cfg, comm, fed, fm
        self.strategy, self.transport, self.make_optimizer = strategy, transport, make_optimizer
        self.run_dir, self.ckpt_dir = run_dir, run_dir / "checkpoints"
        self.device = fm.flat.device
        self.stop = stop or StopRequest()
        self.plan = LocalTraining(int(cfg.fl.local_epochs), cfg.fl.local_steps, int(cfg.train.batch_size))
        self.attack = build_attack(cfg, fed.spec.num_classes)
        self.privacy = build_privacy(cfg, strategy, transport, len(fm))
        self.local_dp = build_local_dp(cfg, strategy)
        self.accountant: LocalAccountant | None = None
        self.store = ClientStore(run_dir / "client_state", int(cfg.fl.checkpoint_every), int(cfg.fl.keep_checkpoints))

    def run(self) -> dict:
        cfg, comm = self.cfg, self.comm
        start, global_flat = self._resume()
        if self.local_dp is not None:
            self._check_local_budget()
            self.accountant = self._local_dp_replay(range(start))
        rounds = int(cfg.fl.rounds)
        sink = MetricsSink(self.run_dir, start) if comm.is_main else NullSink()
        train_s = eval_s = train_cpu_s = 0.0
        last: dict[str, float] = {}
        preempted = False
        bar = tqdm(total=rounds, initial=start, desc="rounds", unit="round", dynamic_ncols=True,
                   disable=not (comm.is_main and cfg.runtime.progress))
        try:
            with logging_redirect_tqdm(loggers=[logging.getLogger("fl")]):
                for rnd in range(start, rounds):
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    result = self._train_round(rnd, global_flat)
                    global_flat = result.new_global
                    metrics = self._round_metrics(rnd, result)
                    evaluated = (rnd + 1) % cfg.fl.eval_every == 0 or rnd + 1 == rounds or result.stop
                    t_eval, cpu_eval = time.perf_counter(), time.process_time()
                    if evaluated:
                        metrics.update(self._evaluate(rnd, global_flat))
                    t_eval, cpu_eval = time.perf_counter() - t_eval, time.process_time() - cpu_eval
                    metrics["round_s"] = time.perf_counter() - t0 - t_eval
                    sink.log_round(rnd + 1, metrics, evaluated)
                    if result.stop or (cfg.fl.checkpoint_every and ((rnd + 1) % cfg.fl.checkpoint_every == 0
                                                                    or rnd + 1 == rounds)):
                        self._checkpoint(rnd + 1, global_flat)
                    train_s += time.perf_counter() - t0 - t_eval
                    train_cpu_s += time.process_time() - cpu0 - cpu_eval
                    eval_s += t_eval
                    last.update(metrics)
                    bar.set_postfix({k: f"{last[k]:.4f}" for k in ("train_loss", "test_accuracy") if k in last})
                    bar.update()
                    log.info("%s", round_line(rnd + 1, rounds, metrics))
                    if result.stop:
                        preempted = rnd + 1 < rounds
                        if comm.is_main:
                            log.warning("stop requested: checkpoint of round %d written in %s; run again with the "
                                        "same run directory to continue", rnd + 1, self.ckpt_dir)
                        break
        finally:
            bar.close()
            sink.close()
        done = rnd + 1 - start if preempted else rounds - start
        if comm.is_main and not preempted:
            self.fm.load_(global_flat)
            torch.save(self.fm.state_dict(), self.run_dir / "final_model.pt")
            self.strategy.save_outputs(self.fm, self.run_dir)
        return {"rounds": rounds, "resumed_from_round": start, "rounds_run": done, "preempted": preempted,
                "train_s": train_s, "train_cpu_s": train_cpu_s, "eval_s": eval_s,
                "round_s_mean": train_s / done if done else None, "final": last}

    def _round_metrics(self, rnd: int, result: RoundResult) -> dict[str, float]:
        metrics = {"train_loss": result.train_loss, "clients": result.num_clients, "dropped": result.dropped,
                   "late": result.late, "rejected": result.rejected, "skipped": int(result.skipped),
                   "comm_bytes": result.comm_bytes}
        if self.privacy is not None:
            metrics["dp_epsilon"] = dp_epsilon(self.cfg, rnd + 1)
            metrics["dp_clip_norm"] = self.privacy.clip_norm
        if self.accountant is not None:
            metrics["dp_local_epsilon"] = self.comm.all_reduce_max(self.accountant.worst()[0])
        if result.skipped and result.num_clients < self.cfg.fl.min_clients_per_round and self.comm.is_main:
            log.warning("round %d skipped: %d update(s) arrived, fl.min_clients_per_round=%d; the global model "
                        "is unchanged", rnd + 1, result.num_clients, self.cfg.fl.min_clients_per_round)
        return metrics

    def _train_round(self, rnd: int, global_flat: torch.Tensor) -> RoundResult:
        cfg, comm = self.cfg, self.comm
        cohort = sample_cohort(cfg.seed, rnd, cfg.fl.num_clients, cfg.fl.clients_per_round)
        by_rank = assign(cohort, comm.world_size, self.fed.per_site)
        if cfg.secagg.name == "masking":
            agg = SecureSumAggregator(self.strategy, comm, len(self.fm), self.device, cohort, by_rank[comm.rank], rnd,
                                      int(cfg.secagg.frac_bits), int(cfg.fl.min_clients_per_round), self.privacy,
                                      cfg.secagg.dropout == "recover", float(cfg.secagg.threshold))
        else:
            agg = make_aggregator(self.transport, self.strategy, comm, len(self.fm), self.device,
                                  max(len(r) for r in by_rank), int(cfg.fl.min_clients_per_round), self.privacy)
        for cid, plan, fate in self._fates(rnd, by_rank[comm.rank]):
            if fate != "train":
                agg.drop(cid, late=fate == "late")
                continue
            shard = self.fed.shards[cid]
            task = ClientTask(cid, rnd, cfg.seed, plan, self.make_optimizer, self.store, self.local_dp)
            update = self.strategy.client_update(self.fm, global_flat, self.attack.training_shard(cid, shard), task)
            agg.add(self.attack.poison(update, rnd))
            if self.accountant is not None:
                self.accountant.record(cid, shard.num_train, _steps(shard.num_train, plan))
        return agg.finish(global_flat, rnd, self.stop.requested)

    def _fates(self, rnd: int, hosted: list[int]) -> list[tuple[int, LocalTraining, str]]:
        """Each hosted client's local plan this round and whether it trains, drops out or is late."""
        cfg, out = self.cfg, []
        for cid in hosted:
            epochs = client_epochs(cfg.seed, rnd, cid, self.plan.epochs, cfg.fl.local_epochs_max)
            plan = self.plan if epochs == self.plan.epochs else LocalTraining(epochs, self.plan.steps,
                                                                               self.plan.batch_size)
            if drops_out(cfg.seed, rnd, cid, float(cfg.fl.dropout_rate)):
                out.append((cid, plan, "dropped"))
            elif self._late(cid, self.fed.shards[cid].num_train, plan):
                out.append((cid, plan, "late"))
            else:
                out.append((cid, plan, "train"))
        return out

    def _local_dp_replay(self, rounds: range) -> LocalAccountant:
        """The DP-SGD steps this rank's clients take in ``rounds`` (all deterministic), without training."""
        acc = LocalAccountant(self.local_dp, self.plan.batch_size)
        for rnd in rounds:
            cohort = sample_cohort(self.cfg.seed, rnd, self.cfg.fl.num_clients, self.cfg.fl.clients_per_round)
            hosted = assign(cohort, self.comm.world_size, self.fed.per_site)[self.comm.rank]
            for cid, plan, fate in self._fates(rnd, hosted):
                if fate == "train":
                    n = self.fed.shards[cid].num_train
                    acc.record(cid, n, _steps(n, plan))
        return acc

    def _check_local_budget(self) -> None:
        """Refuse (on every rank alike) a run in which some client would spend more than the target."""
        target = self.cfg.privacy.target_epsilon
        if target is None:
            return
        worst, cid = self._local_dp_replay(range(int(self.cfg.fl.rounds))).worst()
        overall = self.comm.all_reduce_max(worst)
        if overall > target:
            who = f"client {cid}" if worst == overall else "a client on another rank"
            raise ConfigError("privacy.target_epsilon", target,
                              f"over fl.rounds={self.cfg.fl.rounds} {who} would spend epsilon={overall:.3g} at "
                              f"noise_multiplier={self.cfg.privacy.noise_multiplier}; raise the noise or lower "
                              f"fl.rounds or fl.local_epochs")

    def _late(self, cid: int, num_train: int, plan: LocalTraining) -> bool:
        """Whether a straggler cannot finish its local work before the round deadline."""
        deadline = self.cfg.fl.round_deadline
        if deadline is None:
            return False
        steps = local_steps(num_train, plan.epochs, plan.steps, plan.batch_size)
        return steps * slowdown(self.cfg.seed, cid, float(self.cfg.fl.client_slowdown_max)) > float(deadline)

    def _evaluate(self, rnd: int, global_flat: torch.Tensor) -> dict[str, float]:
        cfg, comm = self.cfg, self.comm
        self.fm.load_(global_flat)
        out: dict[str, float] = {}
        if self.fed.test is not None:
            out.update(evaluation.centralized(self.fm.module, self.fed.test, comm, cfg.train.eval_batch_size))
        if cfg.fl.holdout_fraction > 0:
            k = cfg.fl.eval_clients or cfg.fl.num_clients
            by_rank = assign(sample_cohort(cfg.seed, rnd, cfg.fl.num_clients, k, "eval"), comm.world_size,
                             self.fed.per_site)
            out.update(evaluation.federated(self.fm.module, self.fed.shards, by_rank[comm.rank],
                                            max(len(r) for r in by_rank), comm, cfg.train.eval_batch_size,
                                            self.device, self._personalizer(rnd, global_flat)))
        return out

    def _personalizer(self, rnd: int, global_flat: torch.Tensor):
        """What federated evaluation calls to load client ``cid``'s own model, or ``None``."""
        finetune = self.cfg.personalization.name == "finetune"
        if not (finetune or self.strategy.personalizes):
            return None

        def personalize(cid: int) -> None:
            self.strategy.personal_model(self.fm, global_flat, cid, rnd, self.store, self.fed.shards[cid])
            if finetune:
                plan = LocalTraining(1, int(self.cfg.personalization.steps), self.plan.batch_size)
                task = ClientTask(cid, rnd, self.cfg.seed, plan, self.make_optimizer, self.store)
                local_train(self.fm, self.fm.flat.clone(), self.fed.shards[cid], task)
            self.fm.module.eval()

        return personalize

    def _checkpoint(self, round_num: int, global_flat: torch.Tensor) -> None:
        if self.comm.is_main:
            checkpoint.save(self.ckpt_dir, round_num, {
                "round": round_num, "global": global_flat.detach().cpu(), "strategy": self.strategy.state_dict(),
                "privacy": None if self.privacy is None else self.privacy.state_dict(),
                "seed": int(self.cfg.seed), "fingerprint": fingerprint(self.cfg),
            }, int(self.cfg.fl.keep_checkpoints))

    def _resume(self) -> tuple[int, torch.Tensor]:
        """Collective: (rounds already done, global weights), identical on every rank."""
        state = checkpoint.load_latest(self.ckpt_dir) if self.comm.is_main else None
        meta = self.comm.broadcast_object(None if state is None else
                                          {k: state.get(k) for k in ("round", "strategy", "fingerprint", "privacy")})
        global_flat = self.fm.flat.detach().clone()
        start = 0
        if meta is not None:
            now = fingerprint(self.cfg)
            changed = [k for k in FINGERPRINT_KEYS if meta["fingerprint"].get(k) != now[k]]
            if changed:
                k = changed[0]
                raise ConfigError(k, now[k], f"the checkpoint in {self.ckpt_dir} was written with "
                                  f"{k}={meta['fingerprint'].get(k)!r}; resume with the same value or a new run dir")
            start = int(meta["round"])
            if start > self.cfg.fl.rounds:
                raise ConfigError("fl.rounds", self.cfg.fl.rounds,
                                  f"must be >= {start}, the rounds already done by the checkpoint in {self.ckpt_dir}")
            self.strategy.load_state_dict(meta["strategy"])
            if self.privacy is not None and meta["privacy"] is not None:
                self.privacy.load_state_dict(meta["privacy"])
            if state is not None:
                global_flat.copy_(state["global"])
        self.comm.broadcast(global_flat)  # also makes the initial weights identical everywhere
        return start, global_flat


def _steps(num_train: int, plan: LocalTraining) -> int:
    return local_steps(num_train, plan.epochs, plan.steps, plan.batch_size)


def round_line(round_num: int, rounds: int, m: dict[str, float]) -> str:
    """The one log line per round: clients, loss, accuracy, seconds, bytes."""
    parts = [f"round {round_num}/{rounds}", f"clients={m['clients']}"]
    parts += [f"{k}={m[k]}" for k in ("dropped", "late", "rejected") if m.get(k)]
    parts.append(f"train_loss={m['train_loss']:.4f}")
    parts += [f"{k}={m[k]:.4f}" for k in ("test_accuracy", "client_accuracy_mean", "personal_accuracy_mean") if k in m]
    parts += [f"s={m['round_s']:.2f}", f"MB={m['comm_bytes'] / 1e6:.2f}"]
    return " ".join(parts) + (" SKIPPED" if m.get("skipped") else "")


def _run_info(cfg: DictConfig, comm: Comm, backend: str, device: torch.device, transport: str) -> dict:
    return {"fl_version": fl.__version__, "git_commit": _git_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "hostname": platform.node(),
            "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
            "world_size": comm.world_size, "backend": backend if comm.distributed else None,
            "device": str(device), "transport": transport, "start_time": _now(),
            "num_clients": cfg.fl.num_clients, "clients_per_round": cfg.fl.clients_per_round}


def _git_commit() -> str | None:
    """The commit of the checkout this package runs from (``None`` outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(fl.__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _write_json(comm: Comm, path: Path, obj: dict) -> None:
    if comm.is_main:
        path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
