"""The engine against FedAvg written out by hand, with the same seeded streams."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import make_cfg
from fl.training.cohort import sample_cohort
from fl.data.datasets import load_digits
from fl.data.federation import partition_indices, simulated_clients
from fl.data.partition import Dirichlet
from fl.engine.loop import run
from fl.models import build_model
from fl.runtime.env import DistEnv
from fl.runtime.seeding import derive_seed, generator


def test_engine_equals_hand_written_fedavg(tmp_path):
    seed, clients, per_round, rounds, batch, lr = 3, 6, 4, 2, 16, 0.1
    cfg = make_cfg(f"seed={seed}", f"fl.num_clients={clients}", f"fl.clients_per_round={per_round}",
                   f"fl.rounds={rounds}", f"train.batch_size={batch}", f"optim.lr={lr}", "partition=dirichlet",
                   "fl.checkpoint_every=0", "strategy.server_lr=0.7")
    run(cfg, tmp_path / "run", DistEnv())
    engine = torch.load(tmp_path / "run" / "final_model.pt", weights_only=True)

    train, _, spec = load_digits(0.2, 0)
    parts = partition_indices(train.y, clients, Dirichlet(0.5), seed)
    shards = simulated_clients(train, parts, 0.1, seed)
    torch.manual_seed(derive_seed(seed, "init"))
    model = build_model("cnn_padded", spec.input_shape, spec.num_classes)
    global_w = {k: v.clone() for k, v in model.state_dict().items()}
    for rnd in range(rounds):
        total, weight = {k: torch.zeros_like(v) for k, v in global_w.items()}, 0
        for cid in sample_cohort(seed, rnd, clients, per_round):
            model.load_state_dict(global_w)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            idx = shards[cid].train_idx
            perm = torch.randperm(len(idx), generator=generator(seed, "batches", rnd, cid))
            for b in range(0, len(idx), batch):
                rows = idx[perm[b:b + batch]]
                loss = F.cross_entropy(model(train.x[rows]), train.y[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
            for k, v in model.state_dict().items():
                total[k] += len(idx) * (v - global_w[k])
            weight += len(idx)
        global_w = {k: global_w[k] + 0.7 * total[k] / weight for k in global_w}

    for k in global_w:
        torch.testing.assert_close(engine[k], global_w[k], rtol=0, atol=1e-5, msg=f"{k} differs")
