"""Every config group option and experiment preset composes and validates."""

import pytest

from conftest import REPO, make_cfg
from fl.config.validate import option_name, partition_name, validate


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")))
def test_experiments_compose_and_validate(experiment, tmp_path):
    if experiment.startswith("dp_"):  # the privacy tables' workloads, on the bundled digits
        privacy = "dp_fedavg" if experiment == "dp_digits" else "dp_sgd_local"
        cfg = make_cfg(f"experiment={experiment}", f"privacy={privacy}")
        validate(cfg, 2)
        assert option_name("data", cfg.data) == "digits" and cfg.fl.num_clients in (50, 5)
        return
    if experiment == "hospitals":  # per-site tables written from scikit-learn's bundled breast-cancer data
        from fl.data.hospitals import make

        make(tmp_path)
        cfg = make_cfg(f"experiment={experiment}", f"data.root='{tmp_path}/site_{{client}}.csv'",
                       f"data.test_root={tmp_path}/test.csv")
        validate(cfg, 2)
        assert cfg.data.name == "csv" and cfg.fl.num_clients == 4
        return
    cfg = make_cfg(f"experiment={experiment}", f"data.root={tmp_path}")  # download=true: files not needed yet
    validate(cfg, 2)
    sizes = {"bench_cross_device": (1000, 50, 10), "bench": (100, 10, 32)}.get(experiment, (100, 10, 10))  # E=5, B=10 presets
    assert option_name("data", cfg.data) == "mnist" and \
        (cfg.fl.num_clients, cfg.fl.clients_per_round, cfg.train.batch_size) == sizes


def test_mcmahan_presets_match_the_paper():
    for name, partition in (("mnist_cnn_iid", "iid"), ("mnist_cnn_noniid", "shards")):
        cfg = make_cfg(f"experiment={name}")
        assert (cfg.model._target_, partition_name(cfg.partition), cfg.fl.local_epochs, cfg.train.batch_size) == \
            ("fl.models.cnn_mcmahan", partition, 5, 10)


@pytest.mark.parametrize("group, options", [
    ("model", ["cnn_padded", "cnn_bn", "cnn_mcmahan", "mlp", "logreg", "resnet18"]),
    ("partition", ["iid", "dirichlet", "shards"]),
    ("optim", ["sgd", "adam"]),
    ("data", ["digits", "synthetic"]),
    ("attack", ["none", "sign_flip", "scale", "gaussian", "label_flip", "nan_update"]),
])
def test_group_options_validate(group, options):
    for option in options:
        validate(make_cfg(f"{group}={option}"), 1)


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "strategy").glob("*.yaml")))
def test_every_strategy_builds_and_picks_its_transport(name):
    from fl.transport.plain import choose_transport
    from fl.config.build import build_strategy

    cfg = make_cfg(f"strategy={name}", "fl.num_clients=10")
    validate(cfg, 2)
    from fl.config.build import build_optimizer_factory
    from fl.types import StrategyContext

    strategy, requested = build_strategy(cfg)
    strategy.check(StrategyContext(cfg.fl.num_clients, cfg.fl.clients_per_round, build_optimizer_factory(cfg)))
    expected = "gather" if name in ("median", "trimmed_mean", "krum", "multi_krum", "clustered") else "allreduce"
    assert choose_transport(requested, strategy) == expected
