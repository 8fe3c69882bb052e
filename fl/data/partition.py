"""Partitioners: split a labelled dataset's indices over clients.

Pure functions: labels and a seed in, one index tensor per client out. Every rank
computes the same partition from the same seed, so no data or indices cross ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from fl.errors import ConfigError

PARTITIONERS = ("iid", "dirichlet", "shards")


def iid(num_samples: int, num_clients: int, seed: int) -> list[torch.Tensor]:
    """Uniformly random, near-equal split (sizes differ by at most one)."""
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return [p.clone() for p in torch.tensor_split(perm, num_clients)]


def dirichlet(
    labels: torch.Tensor, num_clients: int, alpha: float, seed: int, min_samples: int = 2, max_tries: int = 1000
) -> list[torch.Tensor]:
    """Label skew: each class is split over clients by proportions drawn from Dir(alpha).

    Small ``alpha`` gives few classes per client; large ``alpha`` approaches IID. Draws
    are repeated (deterministically) until every client has ``min_samples`` samples, the
    usual practice (e.g. Hsu et al. 2019; NIID-Bench).
    """
    rng = np.random.default_rng(seed)
    y = labels.cpu().numpy()
    classes = np.unique(y)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props) * len(idx)).astype(np.int64)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        sizes = [sum(len(c) for c in p) for p in parts]
        if min(sizes) >= min_samples:
            return [torch.from_numpy(np.sort(np.concatenate(p))).long() for p in parts]
    raise ConfigError(
        "partition.alpha", alpha,
        f"no Dirichlet draw in {max_tries} tries gave every one of {num_clients} clients {min_samples} samples; "
        "raise alpha or lower fl.num_clients",
    )


def shards(labels: torch.Tensor, num_clients: int, shards_per_client: int, seed: int) -> list[torch.Tensor]:
    """McMahan et al. 2017's pathological non-IID split.

    Sort by label, cut into ``num_clients * shards_per_client`` equal shards, give each
    client ``shards_per_client`` random shards (so about that many classes each).
    """
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise ConfigError(
            "partition.shards_per_client", shards_per_client,
            f"fl.num_clients * shards_per_client = {num_shards} exceeds the {len(labels)} training samples",
        )
    order = torch.sort(labels.cpu(), stable=True).indices
    pieces = torch.tensor_split(order, num_shards)
    assignment = torch.randperm(num_shards, generator=torch.Generator().manual_seed(seed))
    return [
        torch.sort(torch.cat([pieces[s] for s in assignment[c * shards_per_client:(c + 1) * shards_per_client]])).values
        for c in range(num_clients)
    ]


def holdout_split(indices: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split one client's indices into (train, held-out) by seed; held-out is non-empty when
    ``fraction > 0`` and the client has at least two samples."""
    n = len(indices)
    n_hold = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_hold = min(max(n_hold, 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return indices[perm[n_hold:]], indices[perm[:n_hold]]
