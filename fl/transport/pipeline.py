"""The update pipeline: what happens to a client's update between local training and the model.

A client's vector (``strategy.client_vector``) passes through an ordered list of
:class:`UpdateTransform` s. Each has a *client side*, run on the hosting rank for each client
in pipeline order, and a *server side*, run on the combined sum in reverse order by the server
step (:func:`fl.engine.server.server_step`), whatever transport combined it. A transform declares
``preserves_sum``: its server side applied to the sum of client-side outputs is what it would be
on each of them, which is what lets the vectors ride an all-reduce or secure aggregation's sum.

The standard pipeline of a round (:meth:`Pipeline.standard`), in order:

1. :class:`ModelPoisoning`: the run's model-poisoning attack, on the malicious clients' vectors
   (:mod:`fl.attacks`);
2. the strategy's own transforms (``strategy.transforms``: norm bounding, :class:`NormBound`);
3. :class:`RejectNonFinite`: a NaN or Inf update is refused here, before it can reach anything;
4. :class:`ClientDP`: DP-FedAvg's clip and weight 1 per client; on the server, the round's
   Gaussian noise and the fixed denominator (under secure aggregation each client adds its noise
   share instead, :class:`NoiseShare`, so nobody sees the noiseless sum);
   in an asynchronous run, :class:`StalenessWeight` comes between the clip and the noise share:
   each update times its staleness weight (at most 1, so the sensitivity stays the clip norm);
5. :class:`Compression`: error feedback and the rotation on the client (encoding to the wire format
   and back is the transport's: it decides whether codes are summed as integers); the inverse
   rotation of the sum on the server.

State: DP's clip norm is in the checkpoint (``privacy``), error-feedback residuals in the
crash-consistent client store; the other transforms are stateless (their randomness comes from
(seed, round, client)).
"""

from __future__ import annotations

import logging

import torch

from fl.compression.codecs import all_finite
from fl.compression.uplink import Uplink
from fl.privacy.dp_fedavg import DPFedAvg
from fl.strategies.norm_bound import clip_to_norm
from fl.transport.counters import Counters

log = logging.getLogger(__name__)


class UpdateTransform:
    """One stage of the pipeline (identity by default)."""

    preserves_sum = True

    def client(self, v: torch.Tensor, counters: Counters, cid: int) -> tuple[torch.Tensor, Counters] | None:
        """Client ``cid``'s vector and counters after this stage; ``None`` refuses the update."""
        return v, counters

    def server(self, total: torch.Tensor, counters: Counters, round_idx: int) -> torch.Tensor:
        """The combined sum after this stage's server side."""
        return total

    def denominator(self, counters: Counters) -> float | None:
        """What the sum is divided by, when this stage fixes it (default: the summed weights)."""
        return None


class ModelPoisoning(UpdateTransform):
    """The malicious clients replace the model part (the first ``model_dim`` entries) of their
    vector with the attack's (``attack.delta``), with randomness from (seed, round, client)."""

    def __init__(self, adversary, round_idx: int, model_dim: int) -> None:
        self.adversary, self.round_idx, self.model_dim = adversary, int(round_idx), int(model_dim)

    def client(self, v: torch.Tensor, counters: Counters, cid: int) -> tuple[torch.Tensor, Counters]:
        delta = v[:self.model_dim]
        poisoned = self.adversary.poisoned(delta, cid, self.round_idx)
        return (v if poisoned is delta else torch.cat([poisoned, v[self.model_dim:]])), counters


class NormBound(UpdateTransform):
    """Each update clipped to L2 norm ``max_norm`` (Sun et al. 2019); a weighted mean still."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = float(max_norm)

    def client(self, v: torch.Tensor, counters: Counters, cid: int) -> tuple[torch.Tensor, Counters]:
        return clip_to_norm(v, self.max_norm), counters


class StalenessWeight(UpdateTransform):
    """Asynchronous runs (:mod:`fl.asynchronous`): client ``cid``'s update times its staleness weight
    ``weights[cid]``. The denominator is unchanged (FedBuff): a stale update counts less rather than
    the buffer being renormalized. It runs before DP's clip, so the sensitivity stays the clip norm."""

    def __init__(self, weights: dict[int, float]) -> None:
        self.weights = dict(weights)

    def client(self, v: torch.Tensor, counters: Counters, cid: int) -> tuple[torch.Tensor, Counters]:
        w = self.weights.get(cid, 1.0)
        return (v if w == 1.0 else v * w), counters


class RejectNonFinite(UpdateTransform):
    def client(self, v: torch.Tensor, counters: Counters, cid: int) -> tuple[torch.Tensor, Counters] | None:
        if all_finite(v):
            return v, counters
        log.warning("client %d sent a non-finite update: rejected", cid)
        return None


class ClientDP(UpdateTransform):
    """DP-FedAvg (:mod:`fl.privacy.dp_fedavg`). Client: clip to the current norm, weight 1, report
    whether it was within the norm; ``shares`` (secure aggregation): add the client's noise share.
    Server: the round's noise on the sum (unless the shares carry it); the denominator is the
    expected cohort size; :attr:`unclipped_fraction` is the noised fraction for adaptive clipping."""

    def __init__(self, privacy: DPFedAvg, round_idx: int, shares: bool = False) -> None:
        self.privacy, self.round_idx, self.shares = privacy, int(round_idx), shares
        self.unclipped_fraction: float | None = None

    def client(self, v: torch.Tensor, counters: Counters, cid: int) -> tuple[torch.Tensor, Counters]:
        v, unclipped = self.privacy.clip(v)
        return v, counters.replace(weight=1.0, unclipped=unclipped)

    def server(self, total: torch.Tensor, counters: Counters, round_idx: int) -> torch.Tensor:
        if self.shares:
            self.unclipped_fraction = float(counters.unclipped) / self.privacy.expected_clients
            return total
        total, self.unclipped_fraction = self.privacy.noised_total(total, counters.unclipped, round_idx)
        return total

    def denominator(self, counters: Counters) -> float:
        return float(self.privacy.expected_clients)


class NoiseShare(UpdateTransform):
    """Under secure aggregation, DP-FedAvg's noise is added by the clients: each adds its share of
    the round's Gaussian noise (and of the clipped-count noise), after :class:`ClientDP`'s clip."""

    def __init__(self, privacy: DPFedAvg, round_idx: int) -> None:
        self.privacy, self.round_idx = privacy, int(round_idx)

    def client(self, v: torch.Tensor, counters: Counters, cid: int) -> tuple[torch.Tensor, Counters]:
        noise, count_noise = self.privacy.noise_share(len(v), self.round_idx, cid)
        return v.double() + noise.to(v.device), counters.replace(unclipped=float(counters.unclipped) + count_noise)


class Compression(UpdateTransform):
    """The client side of :class:`~fl.compression.uplink.Uplink` (error feedback, rotation); on the
    server, the sum rotated back. Encoding for the wire is the transport's."""

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink
        self.preserves_sum = uplink.codec.summable

    def client(self, v: torch.Tensor, counters: Counters, cid: int) -> tuple[torch.Tensor, Counters]:
        return self.uplink.prepare(cid, v), counters

    def server(self, total: torch.Tensor, counters: Counters, round_idx: int) -> torch.Tensor:
        return self.uplink.back(total)


class Pipeline:
    """The round's transforms, in client order."""

    def __init__(self, transforms: list[UpdateTransform], uplink: Uplink) -> None:
        self.transforms, self.uplink = list(transforms), uplink

    @classmethod
    def standard(cls, uplink: Uplink, strategy_transforms: list[UpdateTransform] = (),  # type: ignore[assignment]
                 privacy: DPFedAvg | None = None, round_idx: int = 0, shares: bool = False,
                 poisoning: ModelPoisoning | None = None, staleness: StalenessWeight | None = None) -> "Pipeline":
        stages: list[UpdateTransform] = [poisoning] if poisoning is not None else []
        stages += [*strategy_transforms, RejectNonFinite()]
        if privacy is not None:
            stages.append(ClientDP(privacy, round_idx, shares))
        if staleness is not None:
            stages.append(staleness)
        if privacy is not None and shares:
            stages.append(NoiseShare(privacy, round_idx))
        return cls(stages + [Compression(uplink)], uplink)

    @property
    def dp(self) -> ClientDP | None:
        return next((t for t in self.transforms if isinstance(t, ClientDP)), None)

    def client(self, v: torch.Tensor, counters: Counters, cid: int, upto: type | None = None
               ) -> tuple[torch.Tensor, Counters] | None:
        """Every client side in order (those before the first ``upto`` instance, when given)."""
        for t in self.transforms:
            if upto is not None and isinstance(t, upto):
                break
            out = t.client(v, counters, cid)
            if out is None:
                return None
            v, counters = out
        return v, counters

    def server(self, total: torch.Tensor, counters: Counters, round_idx: int) -> torch.Tensor:
        """Every server side, in reverse order, then divided by the denominator."""
        for t in reversed(self.transforms):
            total = t.server(total, counters, round_idx)
        fixed = [d for t in self.transforms if (d := t.denominator(counters)) is not None]
        denominator = fixed[-1] if fixed else float(counters.weight)
        return total / denominator if denominator > 0 else total

    @property
    def unclipped_fraction(self) -> float | None:
        dp = self.dp
        return None if dp is None else dp.unclipped_fraction
