"""Train many clients at once: their weights stacked along a client axis, one step for all.

A chunk of a rank's clients (:class:`~fl.training.job.LocalJob`) trains as one computation:
the weights are a ``[N, P]`` tensor, ``torch.func.vmap`` over ``grad`` of a
``functional_call`` gives every client's gradient of its own mini-batch loss in one forward
and backward pass, and a functional SGD (momentum, dampening, Nesterov, weight decay, as
``torch.optim.SGD``) steps all of them. Clients are sorted by their number of local steps, so
at every step the clients still training are a prefix of the chunk: a finished client stops
taking part, its data is never padded with fake steps. Within a step, a client's short last
batch of an epoch is padded and its padding weighs zero in the loss.

On a CPU, a sequential model of common layers (convolutions, pooling, activations, dropout,
flatten, linear) runs through :mod:`fl.training.grouped` instead of ``vmap``: the same gradients
as grouped convolutions in channels-last layout and batched matrix products, about 1.7 times as
fast there for the seed CNN. Other models, and every model on a GPU, run under ``vmap``.

The result equals training the clients one after another (:func:`fl.training.local.local_train`)
up to float rounding: each client draws its batches from its own ``(seed, round, client)``
stream exactly as the serial path does, and ``nn.Dropout`` draws its masks from the client's
dropout stream in the same order and shape as the serial forward pass does (on the CPU the
masks are bit-identical; CUDA's fused dropout kernel draws differently, so there they are equal
in distribution). Any other random operation in the model is refused (``vmap``'s
``randomness="error"``), and the run trains serially.

Sample-level DP (``privacy=dp_sgd_local``) is batched too: a second ``vmap`` over a client's
examples gives the per-example gradients, clipped as Opacus clips them, summed, noised from the
client's noise stream in Opacus' order and divided by the expected batch size; a client whose
Poisson batch is empty takes no step, as on the serial path.

Not batched (the run trains serially and says why, :mod:`fl.training.clients`): models with
buffers (BatchNorm's running statistics, so FedBN's per-client statistics too), optimizers other
than SGD, data streamed from disk. Ditto's personal models train batched as a second pass.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fl.data.augment import augment
from fl.data.datasets import TensorData
from fl.data.federation import ClientShard
from fl.data.stream import batches
from fl.runtime.seeding import generator
from fl.training import grouped, pool
from fl.training.flat import FlatModel
from fl.training.job import LocalJob
from fl.privacy.dp_sgd import poisson_batches
from fl.training.cohort import local_steps
from fl.training.local import batch_indices
from fl.training.objective import per_sample_loss
from fl.types import ClientUpdate, OptimizerFactory

_SGD_KEYS = {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable",
             "fused"}


@dataclass(frozen=True)
class SGD:
    """``torch.optim.SGD``'s update rule, for stacked weights."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    maximize: bool = False

    @staticmethod
    def of(make_optimizer: OptimizerFactory) -> "SGD | str":
        """The SGD settings of an ``optim`` partial, or why it is not one batched training can run."""
        if not (isinstance(make_optimizer, functools.partial) and make_optimizer.func is torch.optim.SGD):
            name = getattr(getattr(make_optimizer, "func", make_optimizer), "__name__", make_optimizer)
            return f"optim is {name}; batched training steps plain torch.optim.SGD only"
        extra = set(make_optimizer.keywords) - _SGD_KEYS
        if make_optimizer.args or extra:
            return f"optim=sgd with arguments {sorted(extra) or make_optimizer.args} batched training does not know"
        kw = {k: v for k, v in make_optimizer.keywords.items() if k in {f.name for f in dataclasses.fields(SGD)}}
        return SGD(**{k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                      for k, v in kw.items()})

    def step(self, w: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, first: bool,
             stepping: torch.Tensor | None = None, fresh: torch.Tensor | None = None) -> torch.Tensor | None:
        """One step on ``w`` in place (``[k, P]``) with gradients ``g``; returns the momentum buffer.

        ``stepping`` (``[k]`` bool): only these clients step (DP-SGD skips an empty Poisson batch);
        ``fresh``: those taking their first step, whose momentum starts at their gradient.
        """
        d = -g if self.maximize else g
        if self.weight_decay:
            d = d.add(w, alpha=self.weight_decay)
        if self.momentum:
            if stepping is not None:
                if buf is None:
                    buf = torch.zeros_like(d)
                moved = torch.where(fresh[:, None], d, buf * self.momentum + d * (1 - self.dampening))  # type: ignore[index]
                buf.copy_(torch.where(stepping[:, None], moved, buf))
            elif first or buf is None:
                buf = d.clone()
            else:
                buf.mul_(self.momentum).add_(d, alpha=1 - self.dampening)
            d = d.add(buf, alpha=self.momentum) if self.nesterov else buf
        if stepping is None:
            w.add_(d, alpha=-self.lr)
        else:
            w.copy_(torch.where(stepping[:, None], w - self.lr * d, w))
        return buf


class _Dropout(nn.Module):
    """``nn.Dropout`` reading its mask from the client's stream (drawn outside ``vmap``)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return _MASKS.take(self, x)


class _MaskFeed:
    """The masks of one forward pass, in call order; or, while probing, the calls' shapes."""

    def __init__(self) -> None:
        self.masks: Sequence[torch.Tensor] | None = None
        self.calls: list[tuple[float, tuple[int, ...]]] | None = None
        self.next = 0

    def take(self, layer: _Dropout, x: torch.Tensor) -> torch.Tensor:
        if self.calls is not None:  # probing: record the per-sample shape
            self.calls.append((layer.p, tuple(x.shape[1:])))
            return x
        if self.masks is None or self.next >= len(self.masks):
            raise RuntimeError("a dropout layer ran without a mask: the model calls its dropout layers in a "
                               "different order from one forward pass to the next")
        mask = self.masks[self.next]
        self.next += 1
        return x * mask


_MASKS = _MaskFeed()


def why_not_model(module: nn.Module) -> str | None:
    """Why ``module`` cannot be trained batched (before trying it), or ``None``."""
    named = [n for n, b in module.named_buffers() if b is not None]
    if named:
        return f"the model has buffers ({', '.join(named[:3])}{', ...' if len(named) > 3 else ''}: BatchNorm " \
               f"statistics are per client), which batched training does not stack"
    return None


class BatchedTrainer:
    """Trains chunks of clients together. One per rank, built once; see the module docstring.

    ``memory_mb`` bounds the estimated memory of one chunk (weights, gradients, momentum and the
    strategy's per-client vectors for each client, plus activations of its batch); ``max_clients``
    caps a chunk's size outright. ``grouped_on_cpu=False`` runs every model under ``vmap`` (to
    compare the two paths).
    """

    def __init__(self, fm: FlatModel, sgd: SGD, objective: str, input_shape: Sequence[int], memory_mb: float,
                 max_clients: int | None = None, grouped_on_cpu: bool = True) -> None:
        self.sgd, self.objective = sgd, objective
        self.memory_mb, self.max_clients = float(memory_mb), max_clients
        self.module = _batched_twin(fm.module, faster_pooling=fm.flat.device.type == "cpu")
        self.names = [n for n, _ in self.module.named_parameters()]
        self.shapes = [p.shape for _, p in self.module.named_parameters()]
        self.numels = [p.numel() for _, p in self.module.named_parameters()]
        self.dim = len(fm)
        self.device = fm.flat.device
        self.input_shape = tuple(int(s) for s in input_shape)
        # On a CPU, a sequential model of known layers runs as grouped convolutions in channels-last
        # layout (fl.training.grouped), faster there than vmap's; anything else runs under vmap.
        if self.device.type != "cpu":
            why = "the device is not a CPU"
        elif not grouped_on_cpu:
            why = "grouped_on_cpu=False"
        else:
            why = grouped.why_not(fm.module, input_shape)
        self.grouped = grouped.Grouped(fm.module, self.names) if why is None else None
        self.path = "grouped convolutions, channels-last" if why is None else f"torch.func.vmap: {why}"  # for the log
        self._grad = self._grouped_grad if self.grouped is not None else \
            vmap(grad(self._loss, has_aux=True), randomness="error")
        self._dp_grad = vmap(self._clipped_sum, in_dims=(0, 0, 0, 0, 0, None), randomness="error")
        self.calls, self.activations = self._probe()

    # -- the per-client function vmap runs -------------------------------------------------------
    def _forward(self, params: tuple[torch.Tensor, ...], x: torch.Tensor, masks: tuple[torch.Tensor, ...]
                 ) -> torch.Tensor:
        """The model on ``x`` with weights ``params``, its dropout layers reading ``masks``."""
        _MASKS.masks, _MASKS.next = masks, 0
        try:
            return functional_call(self.module, dict(zip(self.names, params)), (x,))
        finally:
            _MASKS.masks = None

    def _loss(self, params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
              masks: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._forward(params, x, masks)
        total = (per_sample_loss(out, y, self.objective) * weight).sum()
        return total / weight.sum().clamp_min(1), total.detach()

    def _grouped_grad(self, params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor,
                      weight: torch.Tensor, masks: tuple[torch.Tensor, ...]
                      ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """What the vmapped :meth:`_loss` gradient returns, through :class:`fl.training.grouped.Grouped`:
        the gradient of the sum of the clients' losses is each client's own gradient."""
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_() for p in params]
            out = self.grouped.forward(leaves, x, masks)  # type: ignore[union-attr]
            n, b = out.shape[:2]
            per = per_sample_loss(out.reshape(n * b, *out.shape[2:]), y.reshape(n * b, *y.shape[2:]),
                                  self.objective).view(n, b) * weight
            total = per.sum(1)
            loss = (total / weight.sum(1).clamp_min(1)).sum()
            grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
        return grads, total.detach()

    def _sample_loss(self, params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor,
                     masks: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._forward(params, x[None], masks)
        loss = per_sample_loss(out, y[None], self.objective).sum()
        return loss, loss.detach()

    def _clipped_sum(self, params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                     masks: tuple[torch.Tensor, ...], clip: float) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """One client's per-example gradients, each clipped to norm ``clip`` as Opacus clips them
        (factor ``min(1, clip / (norm + 1e-6))``), summed over its real examples."""
        # The weights are expanded along the example axis rather than passed unbatched (in_dims=None):
        # on this torch build, vmap of grad with unbatched weights returned a wrong gradient for one
        # example of a batch of four or more (a Linear with bias followed by more layers).
        per_example = tuple(p.expand(x.shape[0], *p.shape) for p in params)
        grads, losses = vmap(grad(self._sample_loss, has_aux=True))(per_example, x, y, masks)
        norms = torch.stack([g.reshape(g.shape[0], -1).norm(2, dim=-1) for g in grads], 1).norm(2, dim=1)
        factor = (clip / (norms + 1e-6)).clamp(max=1.0) * weight
        return tuple(torch.einsum("i,i...", factor, g) for g in grads), (losses * weight).sum()

    def _probe(self) -> tuple[list[tuple[float, tuple[int, ...]]], int]:
        """Dropout calls (rate, per-sample shape) of one forward pass, and activations per sample."""
        sizes: list[int] = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel()) if torch.is_tensor(o) else None)
                 for m in self.module.modules() if not list(m.children())]
        _MASKS.calls = []
        try:
            with torch.no_grad():
                self.module.train()(torch.zeros((1, *self.input_shape), device=self.device))
            calls = _MASKS.calls
        finally:
            _MASKS.calls = None
            for h in hooks:
                h.remove()
        return calls, sum(sizes)

    def check(self, dp: bool = False) -> None:
        """Run one batched step on zeros (with ``dp``, a DP-SGD step): raises what ``vmap`` raises for a
        model it cannot run."""
        w = torch.zeros(2, self.dim, device=self.device)
        x = torch.zeros((2, 2, *self.input_shape), device=self.device)
        y = torch.zeros((2, 2), dtype=torch.long if self.objective == "classification" else torch.float32,
                        device=self.device)
        masks = tuple(torch.ones((2, 2, *shape), device=self.device) for _, shape in self.calls)
        step = (lambda *a: self._dp_grad(*a, 1.0)) if dp else self._grad
        step(self._views(w), x, y, torch.ones(2, 2, device=self.device), masks)

    def _views(self, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``w`` (``[k, P]``) cut into stacked parameter views ``[k, *shape]``."""
        out, offset = [], 0
        for shape, n in zip(self.shapes, self.numels):
            out.append(w[:, offset:offset + n].view(w.shape[0], *shape))
            offset += n
        return tuple(out)

    # -- chunks --------------------------------------------------------------------------------
    def chunk_size(self, batch_size: int, per_client_vectors: int) -> int:
        """Clients per chunk that fit ``memory_mb``: per client, ``4 + per_client_vectors`` weight-sized
        vectors (weights, start, gradient, momentum; the strategy's) and about three copies of the
        batch's activations (forward values, their gradients, the dropout masks)."""
        per_client = 4 * ((4 + per_client_vectors) * self.dim + 3 * self.activations * batch_size)
        fit = max(1, int(self.memory_mb * 2 ** 20 // per_client))
        return fit if self.max_clients is None else min(fit, self.max_clients)

    def train(self, jobs: list[tuple[LocalJob, ClientShard]]) -> list[ClientUpdate]:
        """Train the jobs (``(job, the client's training shard)``) in chunks; one update per job, in order."""
        if not jobs:  # every client this rank hosts dropped out, or it hosts none this round
            return []
        plans = [(_positions(job, shard, self.device), job, shard) for job, shard in jobs]
        order = sorted(range(len(plans)), key=lambda i: -len(plans[i][0]))  # stable: ties keep job order
        size = self.chunk_size(max(min(job.task.plan.batch_size, shard.num_train) for job, shard in jobs), 2)
        out: list[ClientUpdate | None] = [None] * len(plans)
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            for i, update in zip(chunk, self._train_chunk([plans[i] for i in chunk])):
                out[i] = update
        return out  # type: ignore[return-value]

    def _train_chunk(self, plans: list[tuple[list[torch.Tensor], LocalJob, ClientShard]]) -> list[ClientUpdate]:
        """Clients sorted by steps, descending: at step ``t`` the first ``k_t`` still train."""
        n = len(plans)
        device = self.device
        start = torch.stack([job.start.to(device) for _, job, _ in plans])
        w = start.clone()
        prox_mu, anchor, linear = _stacked_terms([job for _, job, _ in plans], self.dim, device)
        steps = [len(pos) for pos, _, _ in plans]
        feed = _Feed(plans, device, self.input_shape)
        drop_g = [generator(job.task.seed, "dropout", job.task.round_idx, job.task.client_id, device=device)
                  for _, job, _ in plans]  # the stream serial training seeds the global generator with
        dp = plans[0][1].task.dp
        noise_g = [generator(job.task.seed, "dp_sgd_noise", job.task.round_idx, job.task.client_id, device=device)
                   for _, job, _ in plans] if dp is not None else []
        stepped = torch.zeros(n, dtype=torch.bool, device=device)
        loss_sum = torch.zeros(n, device=device)
        seen = [0] * n
        buf: torch.Tensor | None = None
        for t in range(steps[0] if n else 0):
            k = sum(s > t for s in steps)
            x, y, weight, rows = feed.step(t, k)
            b = x.shape[1]
            masks = self._masks(drop_g[:k], rows, b, x.dtype)
            if dp is None:
                grads, totals = self._lanes(self._grad, self._views(w[:k]), x, y, weight, masks)
                g = torch.cat([gi.reshape(k, -1) for gi in grads], 1)
                if prox_mu is not None:
                    g = g + prox_mu[:k] * (w[:k] - anchor[:k])  # type: ignore[index]
                if linear is not None:
                    g = g + linear[:k]
                head = self.sgd.step(w[:k], g, None if buf is None else buf[:k], first=t == 0)
                if buf is None:
                    buf = head  # the first step's momentum: every client of the chunk takes it (k == n)
            else:
                sums, totals = self._lanes(self._dp_grad, self._views(w[:k]), x, y, weight, masks,
                                           float(dp.max_grad_norm))
                g = torch.cat([gi.reshape(k, -1) for gi in sums], 1)
                stepping = torch.tensor([r > 0 for r in rows], device=device)
                g = (g + self._noise(noise_g[:k], rows, float(dp.noise_multiplier * dp.max_grad_norm))) \
                    / plans[0][1].task.plan.batch_size  # Opacus: the expected batch size
                if buf is None and self.sgd.momentum:
                    buf = torch.zeros(n, self.dim, device=device)
                self.sgd.step(w[:k], g, None if buf is None else buf[:k], False, stepping, stepping & ~stepped[:k])
                stepped[:k] |= stepping
            loss_sum[:k] += totals
            for i in range(k):
                seen[i] += rows[i]
        return [ClientUpdate(job.task.client_id, w[i] - start[i], shard.num_train, loss_sum[i], seen[i], steps[i])
                for i, (_, job, shard) in enumerate(plans)]

    @staticmethod
    def _lanes(fn, views: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
               masks: tuple[torch.Tensor, ...], *rest) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """``fn`` (a batched gradient) of the first ``k`` clients. Over a single client, ``vmap`` and
        the grouped path run other kernels than over several (an ungrouped convolution), whose
        float rounding differs; a client would then train differently when it is alone in its chunk,
        which depends on the world size. A lone client is computed as two identical lanes."""
        if x.shape[0] != 1:
            return fn(views, x, y, weight, masks, *rest)
        two = lambda t: torch.cat([t, t])  # noqa: E731
        grads, totals = fn(tuple(map(two, views)), two(x), two(y), two(weight), tuple(map(two, masks)), *rest)
        return tuple(g[:1] for g in grads), totals[:1]

    def _noise(self, gens: list[torch.Generator], rows: list[int], std: float) -> torch.Tensor:
        """DP-SGD's noise ``[k, P]``: per client that steps, one normal draw per parameter tensor, in
        order, from its noise stream (as Opacus draws it); zero for a client with an empty batch."""
        out = torch.zeros(len(gens), self.dim, device=self.device)
        if std == 0:
            return out
        for i, g in enumerate(gens):
            if rows[i]:
                out[i] = torch.cat([torch.normal(0.0, std, size=tuple(shape), device=self.device, generator=g).reshape(-1)
                                    for shape in self.shapes])
        return out

    def _masks(self, gens: list[torch.Generator], rows: list[int], b: int, dtype: torch.dtype
               ) -> tuple[torch.Tensor, ...]:
        """Each dropout call's masks ``[k, b, *shape]``, client ``i``'s first ``rows[i]`` drawn from its
        stream as ``F.dropout`` draws them (``bernoulli_(1 - p)``, then ``/ (1 - p)``), call by call."""
        out = [torch.ones((len(gens), b, *shape), device=self.device, dtype=dtype) for _, shape in self.calls]
        for i, g in enumerate(gens):
            for (p, shape), m in zip(self.calls, out):
                if p == 1:
                    m[i].zero_()
                    continue
                keep = torch.empty((rows[i], *shape), device=self.device, dtype=dtype).bernoulli_(1 - p, generator=g)
                m[i, :rows[i]] = keep.div_(1 - p)
        return tuple(out)


def _batched_twin(module: nn.Module, faster_pooling: bool = False) -> nn.Module:
    """A copy of ``module`` whose ``nn.Dropout`` layers take their masks from the clients' streams;
    with ``faster_pooling`` (on a CPU), its 2x2 max-pooling layers are
    :class:`fl.training.pool.MaxPool2x2` (the same values and gradients, faster there; a GPU's own
    pooling kernel is one launch where this is several)."""
    twin = copy.deepcopy(module)
    for parent in twin.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, _Dropout(child.p))
            elif faster_pooling and pool.replaceable(child):
                setattr(parent, name, pool.MaxPool2x2())
    return twin


def _positions(job: LocalJob, shard: ClientShard, device: torch.device) -> list[torch.Tensor]:
    """The client's mini-batches, from its batch stream exactly as the serial path draws them."""
    task, plan, n = job.task, job.task.plan, shard.num_train
    g = generator(task.seed, "batches", task.round_idx, task.client_id, device=device)
    if task.dp is not None:
        return list(poisson_batches(n, min(1.0, plan.batch_size / n), local_steps(n, plan.epochs, plan.steps,
                                                                                   plan.batch_size), g, device))
    return list(batch_indices(n, plan, g, device))


class _Feed:
    """The chunk's mini-batches, step by step: ``x [k, b, ...]``, ``y [k, b]``, the padding's zero
    weights ``[k, b]`` and each client's real batch size, for the first ``k`` clients.

    When the clients share one in-memory dataset and nothing augments, a step is one gather from
    a padded ``[k, b]`` index; otherwise each client's batch is read (and augmented) on its own.
    """

    def __init__(self, plans: list[tuple[list[torch.Tensor], LocalJob, ClientShard]], device: torch.device,
                 input_shape: Sequence[int]) -> None:
        self.device = device
        # A step is padded to the clients' common batch size, not to its longest batch, so a client's
        # arithmetic does not depend on which clients share its chunk, and so not on the world size.
        widths = {job.task.plan.batch_size for _, job, _ in plans}
        self.width = max(1, int(widths.pop())) if len(widths) == 1 else 1
        data = plans[0][2].data
        self.shared = data if isinstance(data, TensorData) and all(
            shard.data is data and not (job.task.augment is not None and job.task.augment.active)
            for _, job, shard in plans) else None
        if self.shared is not None:
            self.rows = [[shard.train_idx[p.to(shard.train_idx.device)].to(data.x.device) for p in pos]
                         for pos, _, shard in plans]
        else:
            self.feeds = [_client_feed(pos, job, shard, device) for pos, job, shard in plans]
            self.x_shape, self.x_dtype = tuple(input_shape), torch.float32
            self.y_dtype = data.y.dtype
            self.y_shape = tuple(data.y.shape[1:])

    def step(self, t: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        if self.shared is not None:
            sel = [self.rows[i][t] for i in range(k)]
            rows = [int(r.numel()) for r in sel]
            b = max(self.width, max(rows))  # >= 1: an empty Poisson batch still has valid shapes
            if min(rows) == b:
                index = torch.stack(sel)
            else:
                index = torch.zeros(k, b, dtype=torch.long, device=sel[0].device)  # padding reads row 0, weighs 0
                for i, r in enumerate(sel):
                    index[i, :rows[i]] = r
            lengths = torch.tensor(rows, device=index.device)
            weight = (torch.arange(b, device=index.device) < lengths[:, None]).float()
            x, y = self.shared.x[index], self.shared.y[index]
            return x.to(self.device), y.to(self.device), weight.to(self.device), rows
        got = [next(self.feeds[i]) for i in range(k)]
        rows = [0 if xb is None else xb.shape[0] for xb, _ in got]
        b = max(self.width, max(rows))  # >= 1: an empty Poisson batch still has valid shapes
        x = torch.zeros((k, b, *self.x_shape), device=self.device, dtype=self.x_dtype)
        y = torch.zeros((k, b, *self.y_shape), device=self.device, dtype=self.y_dtype)
        weight = torch.zeros(k, b, device=self.device)
        for i, (xb, yb) in enumerate(got):
            if rows[i]:
                x[i, :rows[i]], y[i, :rows[i]], weight[i, :rows[i]] = xb, yb, 1.0
        return x, y, weight, rows


def _client_feed(positions: list[torch.Tensor], job: LocalJob, shard: ClientShard, device: torch.device):
    """``(x, y)`` per step for one client, augmented from its own stream when the task says so."""
    task = job.task
    aug = task.augment if task.augment is not None and task.augment.active else None
    g_aug = None if aug is None else generator(task.seed, "augment", task.round_idx, task.client_id, device=device)
    idx = shard.train_idx
    for _, xb, yb in batches(shard.data, (idx[p.to(idx.device)] for p in positions), device):
        yield (xb if aug is None or xb is None else augment(xb, aug, g_aug)), yb


def _stacked_terms(jobs: list[LocalJob], dim: int, device: torch.device
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The jobs' local terms stacked: ``prox_mu [N, 1]``, ``anchor [N, P]``, ``linear [N, P]`` (or ``None``)."""
    terms = [job.term for job in jobs]
    if all(t is None for t in terms):
        return None, None, None
    prox = [t is not None and bool(t.prox_mu) and t.prox_anchor is not None for t in terms]
    lin = [t is not None and t.linear is not None for t in terms]
    zeros = torch.zeros(dim, device=device)
    prox_mu = anchor = linear = None
    if any(prox):
        prox_mu = torch.tensor([[t.prox_mu if p else 0.0] for t, p in zip(terms, prox)], device=device)
        anchor = torch.stack([t.prox_anchor.to(device) if p else zeros for t, p in zip(terms, prox)])  # type: ignore[union-attr]
    if any(lin):
        linear = torch.stack([t.linear.to(device) if p else zeros for t, p in zip(terms, lin)])  # type: ignore[union-attr]
    return prox_mu, anchor, linear


def data_reason(shards: Sequence[ClientShard]) -> str | None:
    """Why the federation's data cannot feed batched training, or ``None``."""
    if any(not isinstance(s.data, TensorData) for s in shards):
        return "the data is read from disk batch by batch; batched training reads in-memory tensors"
    return None
