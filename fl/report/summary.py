"""The report's maths: per-run numbers, runs that differ only by seed grouped, the Markdown table.

Pure functions over :class:`fl.report.runs.Run`; nothing here reads files or draws.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from fl.report.runs import Run, incidental


def cumulative(records: Sequence[dict[str, float]], key: str) -> list[float]:
    """Running total of ``key`` at each record. A record stands for the rounds since the previous
    one (a run whose unevaluated rounds are missing counts them at the next recorded value); a
    record without ``key`` adds nothing."""
    total, previous, out = 0.0, 0, []
    for r in records:
        rnd = int(r["round"])
        value = r.get(key)
        if value is not None:
            total += float(value) * (rnd - previous)
        previous = rnd
        out.append(total)
    return out


def rounds_to(records: Sequence[dict[str, float]], metric: str, target: float) -> int | None:
    """The first round whose ``metric`` reaches ``target`` (``None``: never)."""
    return next((int(r["round"]) for r in records if r.get(metric) is not None and r[metric] >= target), None)


@dataclass(frozen=True)
class RunSummary:
    final: float
    best: float
    rounds: int
    rounds_to_target: int | None
    client_p10: float | None
    total_mb: float
    s_per_round: float | None
    sim_time: float | None = None            # simulated time at the end (runs that record ``sim_time``)
    sim_to_target: float | None = None       # simulated time of the first evaluation at the target


def summarize(run: Run, metric: str = "test_accuracy", target: float | None = None) -> RunSummary:
    """One run's numbers. Raises ``ValueError`` when ``metric`` was never recorded."""
    evaluated = run.evaluated(metric)
    if not evaluated:
        recorded = sorted({k for r in run.records for k in r if k != "round"})
        raise ValueError(f"--metric={metric!r}: {run.path} never recorded it; it recorded: {', '.join(recorded)}")
    p10 = [r["client_accuracy_p10"] for r in run.records if r.get("client_accuracy_p10") is not None]
    seconds = [r["round_s"] for r in run.records if r.get("round_s") is not None]
    return RunSummary(final=float(evaluated[-1][metric]), best=float(max(r[metric] for r in evaluated)),
                      rounds=int(run.records[-1]["round"]),
                      rounds_to_target=None if target is None else rounds_to(evaluated, metric, target),
                      client_p10=float(p10[-1]) if p10 else None,
                      total_mb=cumulative(run.records, "comm_bytes")[-1] / 1e6,
                      # every round's seconds; run.json's mean covers only the last attempt of a resumed run
                      s_per_round=statistics.fmean(seconds) if seconds else run.info.get("round_s_mean"),
                      sim_time=run.records[-1].get("sim_time"),
                      sim_to_target=None if target is None else sim_time_to(evaluated, metric, target))


def sim_time_to(records: Sequence[dict[str, float]], metric: str, target: float) -> float | None:
    """The simulated time (``sim_time``) of the first record whose ``metric`` reaches ``target``."""
    first = next((r for r in records if r.get(metric) is not None and r[metric] >= target), None)
    return None if first is None else first.get("sim_time")


def labels(runs: Sequence[Run], keys: Sequence[str] = ()) -> list[str]:
    """A name per run: what sets it apart from the others, seeds aside.

    With ``keys``, those config values (``strategy._target_=...``). Otherwise the Hydra
    overrides not shared by every run when all runs have them, else the config values that
    differ; runs that differ by seed only share the overrides they all have. Runs with equal
    labels differ only by seed (or not at all) and are grouped.
    """
    if keys:
        missing = [k for k in keys if all(k not in r.config for r in runs)]
        if missing:
            raise ValueError(f"--label={missing[0]!r}: no run has this config key; keys look like "
                             f"{', '.join(sorted(runs[0].config)[:5])}, ...")
        return [" ".join(f"{k}={_short(r.config.get(k))}" for k in keys) for r in runs]
    settings = [r.settings for r in runs]
    if all(s is not None for s in settings):
        common = set.intersection(*(set(s) for s in settings)) if len(runs) > 1 else set()  # type: ignore[arg-type]
        names = [" ".join(o for o in s if o not in common) for s in settings]  # type: ignore[union-attr]
        if not any(names):  # the runs differ by seed only: one row, named by what they share
            names = [" ".join(settings[0])] * len(runs)  # type: ignore[arg-type]
    else:
        differing = sorted(k for k in set().union(*(r.config for r in runs))
                           if not incidental(k) and len({repr(r.config.get(k)) for r in runs}) > 1)
        names = [" ".join(f"{k}={_short(r.config.get(k))}" for k in differing) for r in runs]
    return [name or r.path.name for name, r in zip(names, runs)]


def group(runs: Sequence[Run], names: Sequence[str]) -> dict[str, list[Run]]:
    """Runs by label, in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run, name in zip(runs, names):
        groups.setdefault(name, []).append(run)
    return groups


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (0 for one value) and count of the values present."""

    mean: float
    std: float
    n: int

    @staticmethod
    def of(values: Sequence[float | None]) -> "Spread | None":
        present = [float(v) for v in values if v is not None]
        if not present:
            return None
        std = statistics.stdev(present) if len(present) > 1 else 0.0
        return Spread(statistics.fmean(present), std, len(present))

    def show(self, digits: int, of: int | None = None) -> str:
        text = f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.n > 1 else "")
        return text + (f" ({self.n}/{of} reached)" if of is not None and self.n < of else "")


def table(groups: dict[str, list[Run]], metric: str = "test_accuracy", target: float | None = None) -> str:
    """The Markdown table: one row per group, mean ± standard deviation over its seeds."""
    name = metric.replace("_", " ")
    head = ["run", "seeds", "rounds", f"final {name}", f"best {name}"]
    if target is not None:
        head.append(f"rounds to {target:g}")
    head += ["client accuracy p10", "total MB", "s/round"]
    summaries = {label: [summarize(r, metric, target) for r in runs] for label, runs in groups.items()}
    simulated = any(x.sim_time is not None for s in summaries.values() for x in s)
    if simulated:  # runs that simulate client speeds: their simulated time (fastest-client steps)
        head += ["sim time"] + ([f"sim time to {target:g}"] if target is not None else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label, runs in groups.items():
        s = summaries[label]
        cells = [label.replace("|", "\\|"), str(len(runs)), "/".join(sorted({str(x.rounds) for x in s})),
                 _cell(Spread.of([x.final for x in s]), 4), _cell(Spread.of([x.best for x in s]), 4)]
        if target is not None:
            reached = Spread.of([x.rounds_to_target for x in s])
            cells.append("not reached" if reached is None else reached.show(1 if reached.n > 1 else 0, len(s)))
        cells += [_cell(Spread.of([x.client_p10 for x in s]), 4), _cell(Spread.of([x.total_mb for x in s]), 1),
                  _cell(Spread.of([x.s_per_round for x in s]), 2)]
        if simulated:
            cells.append(_cell(Spread.of([x.sim_time for x in s]), 0))
            if target is not None:
                reached = Spread.of([x.sim_to_target for x in s])
                cells.append("not reached" if reached is None else reached.show(0, len(s)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(spread: Spread | None, digits: int) -> str:
    return "-" if spread is None else spread.show(digits)


def _short(value: Any) -> str:
    """``fl.strategies.fedopt.FedAdam`` -> ``FedAdam``: a target's class name is what differs."""
    text = str(value)
    return text.rsplit(".", 1)[-1] if isinstance(value, str) and text.count(".") >= 2 and " " not in text else text


def curve(runs: Sequence[Run], metric: str, x: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """A group's curve: at each round evaluated in every run, the mean ``x`` (``round``,
    ``comm_mb``: cumulative MB communicated, ``time_s``: cumulative training seconds, or
    ``sim_time``: simulated time, where recorded) and the mean, min and max of ``metric`` over the runs."""
    per_run = []
    for run in runs:
        mb = cumulative(run.records, "comm_bytes")
        secs = cumulative(run.records, "round_s")
        per_run.append({int(r["round"]): {"round": float(r["round"]), "comm_mb": mb[i] / 1e6, "time_s": secs[i],
                                          "sim_time": r.get("sim_time"), "y": float(r[metric])}
                        for i, r in enumerate(run.records) if r.get(metric) is not None and math.isfinite(r[metric])
                        and (x != "sim_time" or r.get("sim_time") is not None)})
    shared = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    xs = [statistics.fmean(p[rnd][x] for p in per_run) for rnd in shared]
    ys = [[p[rnd]["y"] for p in per_run] for rnd in shared]
    return xs, [statistics.fmean(v) for v in ys], [min(v) for v in ys], [max(v) for v in ys]
