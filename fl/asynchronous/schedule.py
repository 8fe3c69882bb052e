"""The event schedule of an asynchronous run, computed up front: who trains from which model
version, when each finishes, and which updates each server step applies.

Simulated time is counted in *local steps of the fastest client*, the unit of
``fl.round_deadline``: a job of client ``c`` takes ``steps_c * s_c``, with ``s_c`` its fixed
slowdown (:func:`fl.training.cohort.slowdown`). Nothing in the schedule depends on training, so
it is a pure function of (seed, config): every rank computes the same one, and a resumed run
recomputes it instead of saving it.

The rules (FedBuff, Nguyen et al. 2022):

1. at time 0, ``concurrency`` clients are drawn and start from version 0;
2. at each time some jobs finish, in (time, start order): a failed job (``fl.dropout_rate``)
   sends nothing; an update whose staleness (the current version minus the version it started
   from) exceeds ``max_staleness`` is dropped; any other enters the buffer, and every
   ``buffer_size`` buffered updates are one server step, which makes the next version;
3. then as many idle clients as jobs finished are drawn (the ``d``-th draw, from
   :func:`~fl.training.cohort.sample_idle`) and start from the newest version.

With ``concurrency = buffer_size = clients_per_round``, equal speeds and equal local work, every
server step is exactly a synchronous FedAvg round: the same cohort, from the same model, with the
same per-client randomness (a job's random streams use its draw index as the round).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable

from fl.training.cohort import sample_idle


@dataclass(frozen=True)
class Job:
    """One client's local training: drawn in draw ``draw``, from model version ``base``."""

    client_id: int
    draw: int
    base: int
    start: float
    finish: float
    staleness: int = 0  # versions applied between its start and its arrival


@dataclass(frozen=True)
class Step:
    """Server step ``index``: applied at simulated ``time``, to the updates of ``jobs`` (sorted by
    client id); ``stale`` and ``failed`` count the jobs that arrived since the previous step and were
    dropped; ``downloads`` counts the jobs that started from the version this step replaces; ``keep``
    are the versions jobs still running after it started from (and the new one): the ring's content."""

    index: int
    time: float
    jobs: tuple[Job, ...]
    stale: int = 0
    failed: int = 0
    downloads: int = 0
    keep: tuple[int, ...] = ()


@dataclass
class Schedule:
    steps: list[Step]

    def ring(self, step: int) -> list[int]:
        """The model versions held as server step ``step`` starts: those of the jobs in flight (none
        older than ``max_staleness`` allows), whatever the run's length, so a checkpoint holds what a
        longer run resumed from it needs. At most ``min(concurrency, max_staleness + 1) + 1``."""
        return [0] if step == 0 else list(self.steps[step - 1].keep)


Work = Callable[[int, int], tuple[float, bool]]  # (client, draw) -> (duration, fails)


def build(num_clients: int, concurrency: int, buffer_size: int, num_steps: int, seed: int,
          work: Work, max_staleness: int | None = None) -> Schedule:
    """The first ``num_steps`` server steps. ``work(client, draw)`` gives a job's simulated duration
    and whether it fails."""
    idle = [True] * num_clients
    running: list[tuple[float, int, Job, bool]] = []  # (finish, start order, job, fails)
    order = draw = version = 0
    downloads: dict[int, int] = {}

    def start(count: int, now: float) -> None:
        nonlocal order, draw
        for cid in sample_idle(seed, draw, num_clients, idle, count):
            duration, fails = work(cid, draw)
            idle[cid] = False
            heapq.heappush(running, (now + duration, order, Job(cid, draw, version, now, now + duration), fails))
            downloads[version] = downloads.get(version, 0) + 1
            order += 1
        draw += 1

    start(concurrency, 0.0)
    steps: list[Step] = []
    buffer: list[Job] = []
    stale = failed = 0
    while len(steps) < num_steps:
        now = running[0][0]
        finished = []
        while running and running[0][0] == now:
            finished.append(heapq.heappop(running)[2:])
        for job, fails in finished:
            idle[job.client_id] = True
            tau = version - job.base
            if fails:
                failed += 1
            elif max_staleness is not None and tau > max_staleness:
                stale += 1
            else:
                buffer.append(Job(job.client_id, job.draw, job.base, job.start, job.finish, tau))
                if len(buffer) == buffer_size:
                    oldest = 0 if max_staleness is None else version + 1 - max_staleness
                    keep = {r[2].base for r in running if r[2].base >= oldest} | {version + 1}
                    steps.append(Step(version, now, tuple(sorted(buffer, key=lambda j: j.client_id)), stale, failed,
                                      downloads.get(version, 0), tuple(sorted(keep))))
                    version += 1
                    buffer, stale, failed = [], 0, 0
                    if len(steps) == num_steps:
                        break
        start(len(finished), now)
    return Schedule(steps)


def round_time(durations: list[float], deadline: float | None) -> float:
    """A synchronous round's simulated time: it waits for its slowest client that trains, or until the
    deadline when some client is late."""
    longest = max(durations, default=0.0)
    return longest if deadline is None or longest <= deadline else float(deadline)
