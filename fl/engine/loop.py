"""The round loop: sample, train locally, aggregate, evaluate, checkpoint.

:func:`run` is the whole job for one rank, given a composed config (validated here) and
the run directory. Every rank calls it; collectives happen in the same order on all. In an
asynchronous run (``scheduler=fedbuff``) each "round" is a server step of the precomputed
schedule (:mod:`fl.asynchronous.schedule`): its clients train from the versions they downloaded
(a ring of past models), through the same pipeline, transports and server step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import fl
from fl.engine import checkpoint, evaluation, rundir
from fl.engine import target as stop_target
from fl.data.stream import stream_loaders
from fl.engine.server import server_step
from fl.transport.pipeline import ModelPoisoning, Pipeline, StalenessWeight
from fl.asynchronous import schedule as async_schedule
from fl.asynchronous.settings import AsyncSettings
from fl.transport.plain import make_aggregator
from fl.compression.downlink import Downlink
from fl.compression.uplink import Uplink
from fl.config.build import Federation, Job, build_adversary, build_augment, build_codec, build_federation, \
    build_flat_model, build_local_dp, build_privacy, build_privacy_settings, build_secagg, check_trainable, prepare
from fl.training.clients import ClientTraining
from fl.training.local import local_train
from fl.training.store import ClientStore
from fl.training.cohort import assign, client_epochs, drops_out, local_steps, sample_cohort, slowdown
from fl.runtime import allocator
from fl.runtime.comm import Comm
from fl.errors import ConfigError
from fl.secagg.settings import Masking
from fl.training.flat import FlatModel
from fl.privacy.dp_sgd import LocalAccountant
from fl.engine.logs import setup_logging
from fl.engine.metrics import MetricsSink, NullSink
from fl.models import model_name
from fl.runtime.preemption import StopRequest
from fl.engine.records import save_torch, write_json
from fl.engine.resume import Resume, decide, fingerprint
from fl.engine.rundir import Existing, agree_run_dir
from fl.engine.settings import RoundSettings
from fl.runtime.env import DistEnv, process_group
from fl.strategies.base import Strategy
from fl.data.federation import ClientShard
from fl.types import ClientTask, LocalTraining, OptimizerFactory, RoundResult

log = logging.getLogger(__name__)

def run(cfg: DictConfig, run_dir: Path, env: DistEnv | None = None, init_method: str | None = None,
        hydra_files: dict[str, str] | None = None) -> dict:
    """Run the federated job on this rank; returns the run summary (also in ``run.json``).

    Raises :class:`ConfigError` before any work (and before the process group exists)
    when the config is invalid. Nothing is written into ``run_dir`` until the job is known to
    be allowed there: a refused resume, a finished run run again or a data error leave every
    file as it was, and a job that fails before its first round in a new directory removes it.
    ``hydra_files`` (name -> YAML text) are written to ``run_dir/.hydra`` at that point.
    """
    env = env or DistEnv.from_environ()
    setup_logging(env.rank, cfg.runtime.log_level)
    job = prepare(cfg, env.world_size, env.rank, env.local_rank)
    allocator.configure(cfg.runtime.malloc)  # before the data and the model are allocated
    with process_group(env, job.device, job.backend, float(cfg.runtime.timeout_s), init_method), \
            StopRequest() as stop, stream_loaders():
        comm = Comm(env.rank, env.world_size, job.device, float(cfg.runtime.timeout_s))
        run_dir = agree_run_dir(comm, run_dir)
        existing: Existing = comm.broadcast_object(rundir.inspect(run_dir) if comm.is_main else None)
        try:
            rounds = _set_up(cfg, comm, job, run_dir, existing, stop)
        except BaseException:
            if comm.is_main and existing.fresh:
                rundir.remove_fresh(run_dir)
            raise
        if rounds.resume.complete:
            return _already_complete(comm, run_dir, existing)
        info = {**_run_info(cfg, comm, job), "input_shape": list(rounds.fed.spec.input_shape),
                "num_classes": rounds.fed.spec.num_classes, "client_training": rounds.clients.describe()}
        if comm.is_main:
            setup_logging(env.rank, cfg.runtime.log_level, run_dir / "train.log")
            rundir.write_hydra_files(run_dir, hydra_files or {})
            write_json(run_dir / "run.json", {**info, "status": "running"})
            write_json(run_dir / "partition.json", rounds.fed.summary)
        try:
            summary = rounds.run()
        except BaseException as e:
            if comm.is_main:
                status = ("interrupted: stopped at once, the round in flight abandoned" if isinstance(e, KeyboardInterrupt)
                          else f"failed: {type(e).__name__}: {e}")
                write_json(run_dir / "run.json", {**info, "status": status, "end_time": _now()})
            raise
        status = "completed"
        if summary.pop("preempted", False):
            status = "interrupted" if stop.interrupted else "preempted"
        summary = {**info, **summary, "status": status, "end_time": _now()}
        if comm.is_main:
            write_json(run_dir / "run.json", summary)
            log.info("%s", summary_line(summary))
            log.info("run directory %s; watch it with: tensorboard --logdir %s", _shown(run_dir), _shown(run_dir))
        return summary


def summary_line(summary: dict) -> str:
    """What rank 0 prints when a run ends: status, rounds, time per round, final metrics."""
    final = summary.get("final") or {}
    shown = " ".join(f"{k}={final[k]:.4f}" for k in _SUMMARY_KEYS if isinstance(final.get(k), float))
    per_round = summary.get("round_s_mean")
    timing = f", {per_round:.2f} s per round (+{summary.get('eval_s', 0):.1f} s evaluating)" if per_round else ""
    reached = summary.get("reached_target")
    extent = (f"stopped at round {reached['round']} of at most {summary.get('rounds')}: {reached['metric']} reached "
              f"{reached['value']:.4f} (target {reached['target']:g})" if reached else f"{summary.get('rounds')} in all")
    return (f"{summary['status']}: {summary.get('rounds_run', 0)} rounds run, {extent}"
            f"{timing}{'; ' + shown if shown else ''}")


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter to copy)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _set_up(cfg: DictConfig, comm: Comm, job: Job, run_dir: Path, existing: Existing, stop: StopRequest) -> "Rounds":
    """Everything that can refuse the job (data, model, resume), before anything is written."""
    fed = build_federation(cfg, comm, job.device)
    stop_target.check(stop_target.of(cfg), fed.spec.task, fed.spec.num_classes == 2, fed.test is not None,
                      float(cfg.fl.holdout_fraction) > 0)
    fm = build_flat_model(cfg, fed.spec, job.device)
    job.strategy.on_model(fm)
    check_trainable(cfg, fm.module)
    rounds = Rounds(cfg, comm, fed, fm, job.strategy, job.transport, job.make_optimizer, run_dir, stop)
    rounds.set_up(existing)
    return rounds


def _already_complete(comm: Comm, run_dir: Path, existing: Existing) -> dict:
    """A finished run run again: say so, show its final metrics, touch nothing."""
    info = dict(existing.info or {})
    final = info.get("final") or {}
    shown = " ".join(f"{k}={v:.4f}" for k, v in final.items() if k in _SUMMARY_KEYS and isinstance(v, float))
    reached = info.get("reached_target")
    if comm.is_main and reached:
        log.info("%s is already complete: it reached %s=%.4f (target %g) at round %s, finished %s%s; nothing to do. "
                 "Set a stricter fl.target, or fl.target=null, to continue it, or use a new run dir", run_dir,
                 reached["metric"], reached["value"], reached["target"], reached["round"], info.get("end_time", "?"),
                 f": {shown}" if shown else "")
    elif comm.is_main:
        log.info("%s is already complete (%s rounds, finished %s)%s; nothing to do. Raise fl.rounds to continue it, "
                 "or use a new run dir", run_dir, info.get("rounds"), info.get("end_time", "?"),
                 f": {shown}" if shown else "")
    return {**info, "already_complete": True}


_SUMMARY_KEYS = ("train_loss", "test_loss", "test_accuracy", "test_mae", "test_roc_auc", "test_f1",
                 "client_accuracy_mean", "client_accuracy_p10", "client_mae_mean", "client_mae_p90",
                 "client_roc_auc_mean", "client_roc_auc_p10", "client_f1_mean")


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
        self.attack = build_adversary(cfg, fed.spec.num_classes)
        self.augment = build_augment(cfg, fed.spec)
        self.privacy = build_privacy(cfg)
        self.dp_settings = build_privacy_settings(cfg)
        self.secagg = build_secagg(cfg)
        self.local_dp = build_local_dp(cfg, strategy)
        self.accountant: LocalAccountant | None = None
        self.store = ClientStore(run_dir / "client_state", int(cfg.fl.checkpoint_every), int(cfg.fl.keep_checkpoints))
        self.uplink_codec = build_codec(cfg, "uplink")
        self.downlink = Downlink(build_codec(cfg, "downlink"), int(cfg.seed))
        # Residuals stay in memory between checkpoints where only this rank ever hosts the client
        # (one rank, or per-site data); otherwise the rank that hosts it next reads its file.
        stays = comm.world_size == 1 or fed.per_site
        self.residuals = ClientStore(run_dir / "client_residuals", int(cfg.fl.checkpoint_every),
                                     int(cfg.fl.keep_checkpoints), float(cfg.fl.residual_memory_mb) if stays else 0.0
                                     ) if self.uplink_codec.keeps_residual else None
        self.resume = Resume(0)
        self.target = stop_target.of(cfg)
        self.global_flat = fm.flat.detach().clone()
        self.knobs = RoundSettings.of(cfg)
        per_rank = -(-self.knobs.clients_per_round // comm.world_size)
        self.asynchronous = AsyncSettings.of(cfg)
        self.schedule = None if self.asynchronous is None else async_schedule.build(
            int(cfg.fl.num_clients), self.asynchronous.concurrency, self.asynchronous.buffer_size, int(cfg.fl.rounds),
            int(cfg.seed), self._work, self.asynchronous.max_staleness)
        self.versions: dict[int, torch.Tensor] = {}  # asynchronous: the past models clients still train from
        self.sim_clock = 0.0  # synchronous: simulated time so far
        self.clients = ClientTraining(cfg.fl.client_batch, float(cfg.fl.client_batch_memory_mb), fm, strategy,
                                      make_optimizer, list(fed.shards.values()), fed.spec.input_shape, fed.spec.task,
                                      self.plan.batch_size, self.local_dp, per_rank, comm.is_main)

    def set_up(self, existing: Existing) -> None:
        """Collective, before anything is written: the resume decision (may refuse) and the DP budget."""
        self.resume, self.global_flat = self._resume(existing)
        if self.schedule is None:
            self.sim_clock = sum(self._sync_round_time(r) for r in range(self.resume.start))
        if self.local_dp is not None and not self.resume.complete:
            self._check_local_budget()
            self.accountant = self._local_dp_replay(range(self.resume.start))

    def run(self) -> dict:
        cfg, comm = self.cfg, self.comm
        rounds_started = time.time()  # set-up (imports, Hydra, data, partition, model) ends here
        start, global_flat = self.resume.start, self.global_flat
        rounds = int(cfg.fl.rounds)
        sink = MetricsSink(self.run_dir, start) if comm.is_main else NullSink()
        train_s = eval_s = train_cpu_s = 0.0
        last: dict[str, float] = {}
        preempted = False
        reached: dict | None = None
        # A bar only on a terminal: redirected to a file or a CI log it would be carriage-return spam.
        bar = tqdm(total=rounds, initial=start, desc="rounds", unit="round", dynamic_ncols=True,
                   disable=not (comm.is_main and cfg.runtime.progress and sys.stderr.isatty()))
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
                    if evaluated:
                        metrics["eval_s"] = t_eval
                        reached = self._reached(rnd + 1, metrics)
                    sink.log_round(rnd + 1, metrics, evaluated)
                    if result.stop or (cfg.fl.checkpoint_every and ((rnd + 1) % cfg.fl.checkpoint_every == 0
                                                                    or rnd + 1 == rounds or reached)):
                        self._checkpoint(rnd + 1, global_flat)
                    train_s += time.perf_counter() - t0 - t_eval
                    train_cpu_s += time.process_time() - cpu0 - cpu_eval
                    eval_s += t_eval
                    last.update(metrics)
                    bar.set_postfix({k: f"{last[k]:.4f}" for k in ("train_loss", "test_accuracy", "test_mae") if k in last})
                    bar.update()
                    log.info("%s", round_line(rnd + 1, rounds, metrics))
                    if reached:
                        if comm.is_main:
                            log.info("target reached: %s=%.4f (%s) at round %d; the run is complete",
                                     self.target.metric, reached["value"], self.target.describe(), rnd + 1)
                        break
                    if result.stop:
                        preempted = rnd + 1 < rounds
                        if comm.is_main:
                            log.warning("stop requested: checkpoint of round %d written in %s; run again with the "
                                        "same run directory to continue", rnd + 1, self.ckpt_dir)
                        break
        finally:
            bar.close()
            sink.close()
        done = rnd + 1 - start if (preempted or reached) else rounds - start
        if comm.is_main and not preempted:
            self.fm.load_(global_flat)
            save_torch(self.run_dir / "final_model.pt", self.fm.state_dict())
            self.strategy.save_outputs(self.fm, self.run_dir)
        if not last and comm.is_main:  # nothing left to run (resumed at the last round): the last record
            last = {k: v for k, v in (_last_record(self.run_dir / "metrics.jsonl") or {}).items() if k != "round"}
        return {"rounds": rounds, "resumed_from_round": start, "rounds_run": done, "preempted": preempted,
                "train_s": train_s, "train_cpu_s": train_cpu_s, "eval_s": eval_s,
                "round_s_mean": train_s / done if done else None, "rounds_started_unix": rounds_started, "final": last,
                **({"reached_target": reached} if reached else {})}

    def _reached(self, round_num: int, metrics: dict[str, float]) -> dict | None:
        """Collective when a target is set: its record if this evaluation reaches it (decided on rank 0,
        which holds the client metrics), else ``None``; the same on every rank."""
        if self.target is None:
            return None
        mine = self.target.record(round_num, metrics) if self.comm.is_main and self.target.met(metrics) else None
        return self.comm.broadcast_object(mine)

    def _round_metrics(self, rnd: int, result: RoundResult) -> dict[str, float]:
        metrics = {"train_loss": result.train_loss, "clients": result.num_clients, "dropped": result.dropped,
                   "late": result.late, "rejected": result.rejected, "skipped": int(result.skipped),
                   "comm_bytes": result.uplink_bytes + result.downlink_bytes, "uplink_bytes": result.uplink_bytes,
                   "downlink_bytes": result.downlink_bytes, "collective_bytes": result.collective_bytes}
        if self.schedule is not None:
            step = self.schedule.steps[rnd]
            taus = [job.staleness for job in step.jobs]
            metrics.update(sim_time=step.time, staleness_mean=sum(taus) / len(taus), staleness_max=max(taus),
                           stale_dropped=step.stale)
        else:
            metrics["sim_time"] = self.sim_clock
        if self.privacy is not None:
            metrics["dp_epsilon"] = self.dp_settings.epsilon(int(self.cfg.fl.num_clients),  # type: ignore[union-attr]
                                                             int(self.cfg.fl.clients_per_round), rnd + 1)
            metrics["dp_clip_norm"] = self.privacy.clip_norm
        if self.accountant is not None:
            metrics["dp_local_epsilon"] = self.comm.all_reduce_max(self.accountant.worst()[0])
        if result.skipped and result.num_clients < self.cfg.fl.min_clients_per_round and self.comm.is_main:
            log.warning("round %d skipped: %d update(s) arrived, fl.min_clients_per_round=%d; the global model "
                        "is unchanged", rnd + 1, result.num_clients, self.cfg.fl.min_clients_per_round)
        return metrics

    def _train_round(self, rnd: int, global_flat: torch.Tensor) -> RoundResult:
        if self.schedule is not None:
            return self._train_step(rnd, global_flat)
        self.sim_clock += self._sync_round_time(rnd)
        knobs, comm = self.knobs, self.comm
        cohort = sample_cohort(knobs.seed, rnd, knobs.num_clients, knobs.clients_per_round)
        by_rank = assign(cohort, comm.world_size, self.fed.per_site)
        received = self.downlink.received(global_flat)  # what clients train from
        downlink_bytes = len(cohort) * self.downlink.bytes_per_client(len(global_flat))
        pipeline, agg = self._aggregation(rnd, cohort, by_rank)
        training: list[tuple[ClientShard, ClientTask]] = []
        for cid, plan, fate in self._fates(rnd, by_rank[comm.rank]):
            if fate != "train":
                agg.drop(cid, late=fate == "late")
                continue
            shard = self.fed.shards[cid]
            training.append((self.attack.training_shard(cid, shard),
                             ClientTask(cid, rnd, knobs.seed, plan, self.make_optimizer, self.store, self.local_dp,
                                        self.augment, self.fed.spec.task)))
            if self.accountant is not None:
                self.accountant.record(cid, shard.num_train, _steps(shard.num_train, plan))
        for update in self.clients.train(self.strategy, self.fm, received, training):  # batched or one by one
            agg.add(update)  # the pipeline applies the attack of a malicious client
        combined = agg.combine(rnd, self.stop.requested)  # the transport: move and combine numbers
        result = server_step(self.strategy, pipeline, knobs.min_clients_per_round, rnd, global_flat, combined)
        self.downlink.send(rnd, result.new_global)
        return dataclasses.replace(result, downlink_bytes=downlink_bytes)

    def _aggregation(self, rnd: int, cohort: list[int], by_rank: list[list[int]],
                     staleness: StalenessWeight | None = None):
        """The round's update pipeline and the aggregator of its transport (secure sum over ``cohort``)."""
        knobs, comm = self.knobs, self.comm
        uplink = Uplink(self.uplink_codec, knobs.seed, rnd, self.strategy.vector_dim(len(self.fm)), self.residuals,
                        self.strategy.compressible_dim(len(self.fm)))
        secure = isinstance(self.secagg, Masking)
        pipeline = Pipeline.standard(uplink, self.strategy.transforms(), self.privacy, rnd, shares=secure,
                                     poisoning=ModelPoisoning(self.attack, rnd, len(self.fm)), staleness=staleness)
        if secure:
            from fl.transport.secure_sum import SecureSumAggregator  # cryptography: only runs with secagg import it

            agg = SecureSumAggregator(self.strategy, comm, len(self.fm), self.device, cohort, by_rank[comm.rank], rnd,
                                      self.secagg.frac_bits, knobs.min_clients_per_round, None,
                                      self.secagg.dropout == "recover", float(self.secagg.threshold), pipeline=pipeline)
        else:
            agg = make_aggregator(self.transport, self.strategy, comm, len(self.fm), self.device,
                                  max(len(r) for r in by_rank), knobs.min_clients_per_round, pipeline=pipeline)
        return pipeline, agg

    def _train_step(self, k: int, global_flat: torch.Tensor) -> RoundResult:
        """Asynchronous server step ``k`` of the schedule: its buffer's clients train on the ranks, each
        from the version it downloaded; their staleness-weighted updates make version ``k + 1``."""
        knobs, comm = self.knobs, self.comm
        step = self.schedule.steps[k]  # type: ignore[union-attr]
        if k == 0 and not self.versions:
            self.versions[0] = self.downlink.received(global_flat).clone()
        cohort = [job.client_id for job in step.jobs]
        by_rank = assign(cohort, comm.world_size, self.fed.per_site)
        weights = {job.client_id: self.asynchronous.staleness.weight(job.staleness)  # type: ignore[union-attr]
                   for job in step.jobs}
        pipeline, agg = self._aggregation(k, cohort, by_rank, StalenessWeight(weights))
        mine = set(by_rank[comm.rank])
        jobs = sorted((job for job in step.jobs if job.client_id in mine), key=lambda j: (j.base, j.client_id))
        for base in sorted({job.base for job in jobs}):
            training = [(self.attack.training_shard(job.client_id, self.fed.shards[job.client_id]),
                         ClientTask(job.client_id, job.draw, knobs.seed, self._plan(job.draw, job.client_id),
                                    self.make_optimizer, self.store, None, self.augment, self.fed.spec.task))
                        for job in jobs if job.base == base]
            for update in self.clients.train(self.strategy, self.fm, self.versions[base], training):
                agg.add(update)
        combined = agg.combine(k, self.stop.requested)
        result = server_step(self.strategy, pipeline, knobs.min_clients_per_round, k, global_flat, combined)
        downlink_bytes = step.downloads * self.downlink.bytes_per_client(len(global_flat))
        self.downlink.send(k, result.new_global)
        needed = set(self.schedule.ring(k + 1))  # type: ignore[union-attr]
        self.versions[k + 1] = self.downlink.received(result.new_global).clone()
        self.versions = {v: t for v, t in self.versions.items() if v in needed}
        return dataclasses.replace(result, downlink_bytes=downlink_bytes, dropped=step.failed)

    def _plan(self, draw: int, cid: int) -> LocalTraining:
        """Client ``cid``'s local work in round (or asynchronous draw) ``draw``."""
        epochs = client_epochs(self.knobs.seed, draw, cid, self.plan.epochs, self.knobs.local_epochs_max)
        return self.plan if epochs == self.plan.epochs else LocalTraining(epochs, self.plan.steps, self.plan.batch_size)

    def _duration(self, cid: int, plan: LocalTraining) -> float:
        """Simulated seconds of a client's local work, in local steps of the fastest client."""
        knobs = self.knobs
        return _steps(self.fed.num_train(cid), plan) * slowdown(knobs.seed, cid, knobs.slowdown_max, knobs.slowdown_tail)

    def _work(self, cid: int, draw: int) -> tuple[float, bool]:
        """An asynchronous job's simulated duration and whether it fails (the schedule's input)."""
        return (self._duration(cid, self._plan(draw, cid)),
                drops_out(self.knobs.seed, draw, cid, self.knobs.dropout_rate))

    def _sync_round_time(self, rnd: int) -> float:
        knobs = self.knobs
        cohort = sample_cohort(knobs.seed, rnd, knobs.num_clients, knobs.clients_per_round)
        durations = [self._duration(cid, plan) for cid, plan, fate in self._fates(rnd, cohort) if fate != "dropped"]
        return async_schedule.round_time(durations, knobs.round_deadline)

    def _fates(self, rnd: int, hosted: list[int]) -> list[tuple[int, LocalTraining, str]]:
        """Each hosted client's local plan this round and whether it trains, drops out or is late."""
        knobs, out = self.knobs, []
        for cid in hosted:
            plan = self._plan(rnd, cid)
            if drops_out(knobs.seed, rnd, cid, knobs.dropout_rate):
                out.append((cid, plan, "dropped"))
            elif self._late(cid, plan):
                out.append((cid, plan, "late"))
            else:
                out.append((cid, plan, "train"))
        return out

    def _local_dp_replay(self, rounds: range) -> LocalAccountant:
        """The DP-SGD steps this rank's clients take in ``rounds`` (all deterministic), without training."""
        acc = LocalAccountant(self.local_dp, self.plan.batch_size)
        for rnd in rounds:
            cohort = sample_cohort(self.knobs.seed, rnd, self.knobs.num_clients, self.knobs.clients_per_round)
            hosted = assign(cohort, self.comm.world_size, self.fed.per_site)[self.comm.rank]
            for cid, plan, fate in self._fates(rnd, hosted):
                if fate == "train":
                    n = self.fed.shards[cid].num_train
                    acc.record(cid, n, _steps(n, plan))
        return acc

    def _check_local_budget(self) -> None:
        """Refuse (on every rank alike) a run in which some client would spend more than the target."""
        target = self.local_dp.target_epsilon  # type: ignore[union-attr]
        if target is None:
            return
        worst, cid = self._local_dp_replay(range(int(self.cfg.fl.rounds))).worst()
        overall = self.comm.all_reduce_max(worst)
        if overall > target:
            who = f"client {cid}" if worst == overall else "a client on another rank"
            raise ConfigError("privacy.target_epsilon", target,
                              f"over fl.rounds={self.cfg.fl.rounds} {who} would spend epsilon={overall:.3g} at "
                              f"noise_multiplier={self.local_dp.noise_multiplier}; raise the noise or lower "
                              f"fl.rounds or fl.local_epochs")

    def _late(self, cid: int, plan: LocalTraining) -> bool:
        """Whether a straggler cannot finish its local work before the round deadline."""
        deadline = self.knobs.round_deadline
        return deadline is not None and self._duration(cid, plan) > deadline

    def _evaluate(self, rnd: int, global_flat: torch.Tensor) -> dict[str, float]:
        cfg, comm = self.cfg, self.comm
        self.fm.load_(global_flat)
        out: dict[str, float] = {}
        if self.fed.test is not None:
            out.update(evaluation.centralized(self.fm.module, self.fed.test, comm, cfg.train.eval_batch_size,
                                              binary=self.fed.spec.num_classes == 2, task=self.fed.spec.task))
        if cfg.fl.holdout_fraction > 0:
            k = cfg.fl.eval_clients or cfg.fl.num_clients
            by_rank = assign(sample_cohort(cfg.seed, rnd, cfg.fl.num_clients, k, "eval"), comm.world_size,
                             self.fed.per_site)
            out.update(evaluation.federated(self.fm.module, self.fed.shards, by_rank[comm.rank],
                                            max(len(r) for r in by_rank), comm, cfg.train.eval_batch_size,
                                            self.device, self._personalizer(rnd, global_flat),
                                            binary=self.fed.spec.num_classes == 2, task=self.fed.spec.task))
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
                task = ClientTask(cid, rnd, self.cfg.seed, plan, self.make_optimizer, self.store,
                                  objective=self.fed.spec.task)
                local_train(self.fm, self.fm.flat.clone(), self.fed.shards[cid], task)
            self.fm.module.eval()

        return personalize

    def _checkpoint(self, round_num: int, global_flat: torch.Tensor) -> None:
        """Collective: every rank writes the residuals it holds in memory, then rank 0 the checkpoint."""
        if self.residuals is not None and self.residuals.memory:
            self.residuals.write_back()
            self.comm.barrier()
        if self.comm.is_main:
            checkpoint.save(self.ckpt_dir, round_num, {
                "round": round_num, "global": global_flat.detach().cpu(), "strategy": self.strategy.state_dict(),
                "privacy": None if self.privacy is None else self.privacy.state_dict(),
                "downlink": self.downlink.state_dict(),
                "versions": {v: t.detach().cpu() for v, t in self.versions.items()},
                "seed": int(self.cfg.seed), "fingerprint": fingerprint(self.cfg),
            }, int(self.cfg.fl.keep_checkpoints))

    def _resume(self, existing: Existing) -> tuple[Resume, torch.Tensor]:
        """Collective: the resume decision and the global weights, identical on every rank."""
        state = checkpoint.load_latest(self.ckpt_dir) if self.comm.is_main else None
        meta = self.comm.broadcast_object(None if state is None else
                                          {k: state.get(k) for k in ("round", "strategy", "fingerprint", "privacy", "downlink")})
        resume = decide(self.cfg, meta, existing)
        if state is not None and not resume.complete:
            log.info("resuming from %s (round %d)", state["file"], resume.start)
        global_flat = self.fm.flat.detach().clone()
        if meta is not None and not resume.complete:
            self.strategy.load_state_dict(meta["strategy"])
            if self.privacy is not None and meta["privacy"] is not None:
                self.privacy.load_state_dict(meta["privacy"])
            self.downlink.load_state_dict(meta.get("downlink"), self.device)
            if state is not None:
                if state["global"].shape != global_flat.shape:
                    raise ConfigError("model", model_name(self.cfg.model), f"has {len(global_flat)} weights but the checkpoint "
                                      f"in {self.ckpt_dir} holds {len(state['global'])}; use a new run dir")
                global_flat.copy_(state["global"])
        self.comm.broadcast(global_flat)  # also makes the initial weights identical everywhere
        if self.schedule is not None and resume.start > 0 and not resume.complete:
            saved = (state or {}).get("versions") or {}
            for v in self.schedule.ring(resume.start):  # the past models the remaining steps train from
                t = saved[v].to(self.device) if self.comm.is_main else torch.empty_like(global_flat)
                self.versions[v] = self.comm.broadcast(t)
        return resume, global_flat


def _steps(num_train: int, plan: LocalTraining) -> int:
    return local_steps(num_train, plan.epochs, plan.steps, plan.batch_size)


def round_line(round_num: int, rounds: int, m: dict[str, float]) -> str:
    """The one log line per round: clients, loss, accuracy, seconds (training, and evaluation when the
    round was evaluated: ``train_s`` is not the round's wall time when evaluation is slow), bytes."""
    parts = [f"round {round_num}/{rounds}", f"clients={m['clients']}"]
    parts += [f"{k}={m[k]}" for k in ("dropped", "late", "rejected") if m.get(k)]
    parts.append(f"train_loss={m['train_loss']:.4f}")
    parts += [f"{k}={m[k]:.4f}" for k in ("test_accuracy", "test_mae", "test_roc_auc", "client_accuracy_mean",
                                          "client_mae_mean", "client_roc_auc_mean", "personal_accuracy_mean")
              if isinstance(m.get(k), float)]
    if "staleness_mean" in m:  # an asynchronous server step
        parts.append(f"sim_time={m['sim_time']:.0f} staleness={m['staleness_mean']:.1f}")
    parts.append(f"train_s={m['round_s']:.2f}")
    if "eval_s" in m:
        parts.append(f"eval_s={m['eval_s']:.2f}")
    parts.append(f"MB={m['comm_bytes'] / 1e6:.2f}")
    if m.get("downlink_bytes") is not None:
        parts.append(f"(up={m['uplink_bytes'] / 1e6:.2f} down={m['downlink_bytes'] / 1e6:.2f})")
    return " ".join(parts) + (" SKIPPED" if m.get("skipped") else "")


def _run_info(cfg: DictConfig, comm: Comm, job: Job) -> dict:
    return {"fl_version": fl.__version__, "git_commit": _git_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "hostname": platform.node(),
            "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
            "world_size": comm.world_size, "backend": job.backend if comm.distributed else None,
            "device": str(job.device), "transport": job.transport, "start_time": _now(),
            "num_clients": cfg.fl.num_clients, "clients_per_round": cfg.fl.clients_per_round,
            "rounds": int(cfg.fl.rounds), "fingerprint": fingerprint(cfg)}


def _git_commit() -> str | None:
    """The commit of the checkout this package runs from (``None`` outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(fl.__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _last_record(path: Path) -> dict | None:
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
