"""Which clients train this round, and which rank hosts each.

Pure and identical on every rank: the cohort is drawn from ``(seed, round)`` alone.
"""

from __future__ import annotations

import torch

from fl.runtime.seeding import generator


def sample_cohort(
    seed: int, round_idx: int, num_clients: int, clients_per_round: int, purpose: str = "train"
) -> list[int]:
    """``clients_per_round`` distinct client ids, sorted, drawn uniformly without replacement.

    ``purpose`` names the stream, so the evaluation cohort is independent of the training one.
    """
    if clients_per_round == num_clients:
        return list(range(num_clients))
    perm = torch.randperm(num_clients, generator=generator(seed, "cohort", purpose, round_idx))
    return sorted(perm[:clients_per_round].tolist())


def home_rank(client_id: int, world_size: int) -> int:
    """The rank that owns a client's data when data is per site (``data=folder``)."""
    return client_id % world_size


def assign(cohort: list[int], world_size: int, per_site: bool) -> list[list[int]]:
    """The clients each rank trains, by rank.

    Simulation: any rank can read any client, so the cohort is dealt out in contiguous,
    near-equal blocks (sizes differ by at most one). Per-site data: each client trains
    on its home rank.
    """
    if per_site:
        out: list[list[int]] = [[] for _ in range(world_size)]
        for cid in cohort:
            out[home_rank(cid, world_size)].append(cid)
        return out
    base, extra = divmod(len(cohort), world_size)
    out, start = [], 0
    for r in range(world_size):
        size = base + (1 if r < extra else 0)
        out.append(cohort[start:start + size])
        start += size
    return out


def client_epochs(seed: int, round_idx: int, client_id: int, low: int, high: int | None) -> int:
    """The client's local epochs this round: ``low``, or uniform in ``[low, high]`` when ``high`` is
    set (heterogeneous local work), from the client's own (seed, round, client) stream."""
    if high is None or high == low:
        return low
    return int(torch.randint(low, high + 1, (1,), generator=generator(seed, "epochs", round_idx, client_id)))


def drops_out(seed: int, round_idx: int, client_id: int, rate: float) -> bool:
    """Whether the client fails in this round (probability ``rate``, its own stream)."""
    if rate <= 0:
        return False
    return float(torch.rand((), generator=generator(seed, "dropout", round_idx, client_id))) < rate


def slowdown(seed: int, client_id: int, max_slowdown: float, tail: float | None = None) -> float:
    """How many times slower than the fastest client this client is, fixed for the run: log-uniform
    in ``[1, max_slowdown]``, or with ``tail`` = a heavy-tailed Pareto(``tail``) draw (``P(s > x) =
    x^-tail``), capped at ``max_slowdown``. One uniform draw from the client's own stream either way."""
    if max_slowdown <= 1:
        return 1.0
    u = float(torch.rand((), generator=generator(seed, "speed", client_id)))
    if tail is None:
        return float(max_slowdown) ** u
    return min(float(max_slowdown), (1.0 - u) ** (-1.0 / float(tail)))


def sample_idle(seed: int, draw: int, num_clients: int, idle: list[bool], count: int) -> list[int]:
    """``count`` distinct idle clients, sorted, for the ``draw``-th draw of an asynchronous run.

    The same stream as :func:`sample_cohort`'s ``draw``-th round, restricted to idle clients: when
    every client is idle, the draw *is* that round's cohort (synchronous FedAvg as a special case)."""
    if count <= 0:
        return []
    perm = torch.randperm(num_clients, generator=generator(seed, "cohort", "train", draw)).tolist()
    if count == num_clients and all(idle):
        return list(range(num_clients))
    chosen = [c for c in perm if idle[c]][:count]
    return sorted(chosen)


def local_steps(num_train: int, epochs: int, steps: int | None, batch_size: int) -> int:
    """The number of mini-batch steps local training takes."""
    return steps if steps is not None else epochs * -(-num_train // batch_size)
