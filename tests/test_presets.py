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


@pytest.mark.parametrize("row, strategy, partition, epochs, batch, rounds", [
    ("fedsgd_iid", "fl.strategies.fedsgd.FedSGD", "iid", 1, None, 626),
    ("fedsgd_noniid", "fl.strategies.fedsgd.FedSGD", "shards", 1, None, 483),
    ("fedavg_iid", "fl.strategies.FedAvg", "iid", 5, 10, 20),
    ("fedavg_noniid", "fl.strategies.FedAvg", "shards", 5, 10, 229),
])
def test_mcmahan_presets_match_the_paper(row, strategy, partition, epochs, batch, rounds, tmp_path):
    """Table 2's rows: the paper's CNN, 100 clients of 600 images, C=0.1, at most 1.5x the paper's rounds."""
    cfg = make_cfg(f"experiment=mcmahan/{row}", f"data.root={tmp_path}")
    validate(cfg, 2)
    batch_size = cfg.strategy.batch_size if "FedSGD" in strategy else cfg.train.batch_size
    assert (cfg.model._target_, cfg.strategy._target_, partition_name(cfg.partition), cfg.fl.local_epochs,
            batch_size) == ("fl.models.cnn_mcmahan", strategy, partition, epochs, batch)
    assert (cfg.fl.num_clients, cfg.fl.clients_per_round, cfg.fl.holdout_fraction) == (100, 10, 0)
    assert cfg.fl.rounds == int(1.5 * rounds + 0.5) and option_name("data", cfg.data) == "mnist"
    assert (cfg.fl.target, cfg.fl.target_metric) == (0.99, "test_accuracy"), "a row stops at 99%"
    if partition == "shards":
        assert cfg.partition.shards_per_client == 2


COMPARED = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fednova"]


def test_comparison_presets_share_one_workload_and_differ_in_the_strategy(tmp_path):
    from omegaconf import OmegaConf

    assert sorted(p.stem for p in (REPO / "conf" / "experiment" / "compare").glob("*.yaml")) == sorted([*COMPARED, "base"])
    workloads = set()
    for name in COMPARED:
        cfg = make_cfg(f"experiment=compare/{name}", f"data.root={tmp_path}")
        validate(cfg, 2)
        assert option_name("strategy", cfg.strategy) == name
        assert (option_name("data", cfg.data), partition_name(cfg.partition), cfg.partition.alpha) == \
            ("fashion_mnist", "dirichlet", 0.1)
        workload = OmegaConf.to_container(cfg, resolve=False)
        workload.pop("strategy")
        workload["optim"].pop("lr")  # tuned per strategy, the rest is shared
        workloads.add(repr(workload))
    assert len(workloads) == 1


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
