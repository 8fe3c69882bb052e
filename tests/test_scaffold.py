"""SCAFFOLD against the paper's Algorithm 1 (option II) written out by hand, and its state handling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import fork_ranks, make_cfg, run_job
from fl.training.cohort import sample_cohort
from fl.data.datasets import load_digits
from fl.data.federation import partition_indices, simulated_clients
from fl.data.partition import Dirichlet
from fl.engine.loop import run
from fl.models import build_model
from fl.runtime.env import DistEnv
from fl.runtime.seeding import derive_seed, generator
from fl.training.store import read_state, write_state

SEED, N, S, ROUNDS, STEPS, B, LR = 2, 6, 4, 3, 4, 16, 0.1
OVERRIDES = (f"seed={SEED}", f"fl.num_clients={N}", f"fl.clients_per_round={S}", f"fl.rounds={ROUNDS}",
             f"fl.local_steps={STEPS}", f"train.batch_size={B}", f"optim.lr={LR}", "partition=dirichlet",
             "strategy=scaffold", "fl.eval_every=100")


def _by_hand() -> dict[str, torch.Tensor]:
    train, _, spec = load_digits(0.2, 0)
    shards = simulated_clients(train, partition_indices(train.y, N, Dirichlet(0.5), SEED),
                               0.1, SEED)
    torch.manual_seed(derive_seed(SEED, "init"))
    model = build_model("cnn_padded", spec.input_shape, spec.num_classes)
    names = [k for k, _ in model.named_parameters()]
    x = {k: v.clone() for k, v in model.named_parameters()}
    c = {k: torch.zeros_like(v) for k, v in x.items()}
    c_i = {cid: {k: torch.zeros_like(v) for k, v in x.items()} for cid in range(N)}
    for rnd in range(ROUNDS):
        dy = {k: torch.zeros_like(v) for k, v in x.items()}
        dc = {k: torch.zeros_like(v) for k, v in x.items()}
        cohort = sample_cohort(SEED, rnd, N, S)
        for cid in cohort:
            with torch.no_grad():
                for k, p in model.named_parameters():
                    p.copy_(x[k])
            idx, g = shards[cid].train_idx, generator(SEED, "batches", rnd, cid)
            steps = 0
            while steps < STEPS:
                perm = torch.randperm(len(idx), generator=g)
                for b in range(0, len(idx), B):
                    if steps == STEPS:
                        break
                    rows = idx[perm[b:b + B]]
                    model.zero_grad()
                    F.cross_entropy(model(train.x[rows]), train.y[rows]).backward()
                    with torch.no_grad():
                        for k, p in model.named_parameters():
                            p -= LR * (p.grad - c_i[cid][k] + c[k])  # y <- y - lr (g - c_i + c)
                    steps += 1
            y = {k: p.detach().clone() for k, p in model.named_parameters()}
            new_ci = {k: c_i[cid][k] - c[k] + (x[k] - y[k]) / (STEPS * LR) for k in names}  # option II
            for k in names:
                dy[k] += (y[k] - x[k]) / S
                dc[k] += (new_ci[k] - c_i[cid][k]) / S
            c_i[cid] = new_ci
        x = {k: x[k] + dy[k] for k in names}
        c = {k: c[k] + S / N * dc[k] for k in names}
    return x


def test_scaffold_equals_the_paper_algorithm(tmp_path):
    run(make_cfg(*OVERRIDES, "fl.checkpoint_every=0"), tmp_path / "run", DistEnv())
    engine = torch.load(tmp_path / "run" / "final_model.pt", weights_only=True)
    for k, v in _by_hand().items():
        torch.testing.assert_close(engine[k], v, rtol=0, atol=1e-5, msg=f"{k} differs")


def _train_loss(path, model_name):
    train, _, spec = load_digits(0.2, 0)
    model = build_model(model_name, spec.input_shape, spec.num_classes)
    model.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        return F.cross_entropy(model.eval()(train.x), train.y).item()


def test_scaffold_beats_fedavg_on_strongly_non_iid_data(tmp_path):
    common = ("model=logreg", "partition=shards", "partition.shards_per_client=2", "fl.num_clients=10",
              "fl.rounds=15", "fl.local_steps=20", "optim.lr=0.05", "fl.checkpoint_every=0", "fl.eval_every=100")
    losses = {}
    for strategy in ("fedavg", "scaffold"):
        run(make_cfg(*common, f"strategy={strategy}"), tmp_path / strategy, DistEnv())
        losses[strategy] = _train_loss(tmp_path / strategy / "final_model.pt", "logreg")
    assert losses["scaffold"] < 0.8 * losses["fedavg"], losses


def _final(tmp_path, name, world_size, *overrides):
    run_dir = tmp_path / name
    fork_ranks(world_size, run_job, tmp_path, make_cfg(*OVERRIDES, *overrides), run_dir)
    return torch.load(run_dir / "final_model.pt", weights_only=True), run_dir


def test_scaffold_is_world_size_invariant(tmp_path):
    one, _ = _final(tmp_path, "one", 1, "fl.checkpoint_every=0")
    two, _ = _final(tmp_path, "two", 2, "fl.checkpoint_every=0")  # clients move between ranks across rounds
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5)


def test_resume_after_a_crash_ignores_client_state_written_after_the_checkpoint(tmp_path):
    full, _ = _final(tmp_path, "full", 2, "fl.rounds=4", "fl.checkpoint_every=2")
    _, crashed = _final(tmp_path, "crashed", 2, "fl.rounds=3", "fl.checkpoint_every=2")
    (crashed / "checkpoints" / "round_000003.pt").unlink()  # died before round 3's checkpoint was written
    poisoned = list(crashed.glob("client_state/*/round_000002.bin"))
    assert poisoned, "round index 2 must have written client state"
    for path in poisoned:  # whatever a crashed attempt left must not be read
        state = read_state(path)
        write_state(path, {"c": torch.full_like(state["c"], 1e3)})
    resumed, _ = _final(tmp_path, "crashed", 2, "fl.rounds=4", "fl.checkpoint_every=2")
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_scaffold_refuses_optimizers_it_cannot_correct():
    import pytest

    from fl.config.build import build_optimizer_factory
    from fl.errors import ConfigError
    from fl.strategies.scaffold import Scaffold
    from fl.types import StrategyContext

    for bad in (("optim=adam",), ("optim.momentum=0.9",)):
        cfg = make_cfg(*bad)
        with pytest.raises(ConfigError, match="plain local SGD"):
            Scaffold().check(StrategyContext(10, 5, build_optimizer_factory(cfg)))


def test_client_store_reads_before_the_round_and_prunes(tmp_path):
    from fl.training.store import ClientStore

    store = ClientStore(tmp_path, checkpoint_every=2, keep_checkpoints=1)  # keeps 4 rounds back
    cpu = torch.device("cpu")
    for r in range(10):
        store.save(3, r, {"c": torch.tensor([float(r)])})
    assert float(store.load(3, 7, cpu)["c"]) == 6.0 and store.load(3, 0, cpu) is None
    assert store.load(4, 5, cpu) is None
    assert sorted(int(p.stem[6:]) for p in (tmp_path / "3").iterdir()) == [4, 5, 6, 7, 8, 9]
