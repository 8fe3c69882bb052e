"""data=csv: per-site tables, categories and scaling agreed without moving a row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import REPO, fork_ranks
from fl import cli
from fl.runtime.comm import Comm
from fl.data import tabular
from fl.errors import ConfigError

# Three "hospitals": age and dose numeric, ward categorical (ward C only at site 2), outcome the
# label: 1 when the dose is above 1.4 (learnable from the features).
SITES = {
    0: [(30 + i, round(1.0 + 0.1 * i, 2), "A" if i % 2 else "B") for i in range(30)],
    1: [(50 + i, round(2.0 - 0.05 * i, 2), "B") for i in range(25)],
    2: [(70 - i, round(0.5 + 0.2 * i, 2), "C" if i % 3 else "A") for i in range(20)],
}
SITES = {c: [(*r, int(r[1] > 1.4)) for r in rows] for c, rows in SITES.items()}


def _write(folder: Path, sites=SITES, header=("age", "dose", "ward", "outcome")) -> str:
    for cid, rows in sites.items():
        with open(folder / f"site_{cid}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    return str(folder / "site_{client}.csv")


class RecordingComm(Comm):
    """A Comm that keeps what crosses it (as the secure-aggregation tests do)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.objects, self.tensors = [], []

    def all_gather_object(self, obj):
        self.objects.append(obj)
        return super().all_gather_object(obj)

    def all_reduce_sum(self, flat):
        self.tensors.append(flat.clone())
        return super().all_reduce_sum(flat)


def _load(rank, world_size, init_method, root):
    from fl.runtime.env import DistEnv, process_group

    with process_group(DistEnv(rank, world_size, rank), torch.device("cpu"), "gloo", 30, init_method):
        comm = RecordingComm(rank, world_size, torch.device("cpu"))
        mine = [c for c in SITES if c % world_size == rank]
        data, schema, sums = tabular.load_sites(comm, root, mine, "outcome", None, [])
        return {c: (d.x, d.y) for c, d in data.items()}, schema, sums, comm.objects, comm.tensors


def test_scaling_and_categories_are_agreed_without_moving_a_row(tmp_path):
    root = _write(tmp_path)
    results = fork_ranks(2, _load, tmp_path, root)
    schema = results[0][1]
    assert schema.numeric == ["age", "dose"] and schema.categorical == {"ward": ["A", "B", "C"]}
    assert schema.classes == ["0", "1"] and schema.width == 5
    # the global statistics are those of the pooled rows
    pooled = torch.tensor([[r[0], r[1]] for rows in SITES.values() for r in rows], dtype=torch.float64)
    x = torch.cat([x for result in results for x, _ in result[0].values()])
    torch.testing.assert_close(x[:, :2].double().mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[:, :2].double().std(0, unbiased=False), torch.ones(2, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    sums = results[0][2]
    torch.testing.assert_close(sums[1:3] / sums[0], pooled.mean(0))
    # site 1 has no ward C, yet its one-hot block has the C column (all zero)
    site1 = results[1][0][1][0]
    assert site1.shape[1] == 5 and site1[:, 4].abs().sum() == 0 and site1[:, 3].sum() == len(SITES[1])
    # what crossed the ranks: names and 5 summed numbers, never a row
    for _, _, _, objects, tensors in results:
        assert [t.numel() for t in tensors] == [1 + 2 * 2]
        text = json.dumps(objects)
        assert "ward" in text
        for rows in SITES.values():
            for age, dose, _, _ in rows:
                assert f'"{dose}"' not in text and f'"{age}"' not in text


def test_a_csv_federation_trains_end_to_end(tmp_path, capsys):
    root = _write(tmp_path)
    run_dir = tmp_path / "run"
    code = cli.main(["data=csv", f"data.root='{root}'", "data.target=outcome", "fl.num_clients=3", "fl.rounds=10",
                     "model=logreg", "optim.lr=0.5", "fl.holdout_fraction=0.3", "runtime.progress=false",
                     f"hydra.run.dir={run_dir}"],
                    config_dir=str(REPO / "conf"))
    assert code == 0, capsys.readouterr().err[-2000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["input_shape"] == [5] and info["num_classes"] == 2
    assert info["final"]["client_accuracy_mean"] > 0.8 and info["final"]["client_roc_auc_mean"] > 0.8
    partition = json.loads((run_dir / "partition.json").read_text())
    assert partition["categorical"] == {"ward": ["A", "B", "C"]} and partition["classes"] == ["0", "1"]


def test_bad_tables_are_one_line_naming_the_key(tmp_path):
    good = _write(tmp_path)
    with pytest.raises(ConfigError, match=r"data.target='label' is invalid: is not a column of .*site_0.csv"):
        tabular.local_schema(tabular.read_table(Path(good.format(client=0))), "label", None, [])
    odd = tmp_path / "odd"
    odd.mkdir()
    _write(odd, {0: SITES[0]})
    _write(odd, {1: [(r[0], r[2], r[3]) for r in SITES[1]]}, header=("age", "ward", "outcome"))
    parts = [tabular.local_schema(tabular.read_table(odd / f"site_{c}.csv"), "outcome", None, []) for c in (0, 1)]
    with pytest.raises(ConfigError, match=r"data.root='.*site_1.csv' is invalid: has feature columns that differ "
                                          r"from .*site_0.csv's: dose"):
        tabular.agree(parts)


def _diabetes_sites(folder: Path) -> tuple[str, str, float]:
    """scikit-learn's diabetes data (442 patients, 10 features, a disease-progression score) as three
    hospitals' CSV files and a test table; returns their paths and the test MSE of a centrally fitted
    least-squares model (the reference a federated linear model should reach)."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).numpy()
    test, train = perm[:88], perm[88:]
    header = [f"f{j}" for j in range(x.shape[1])] + ["progression"]
    for cid, rows in enumerate(torch.tensor_split(torch.as_tensor(train), 3)):
        with open(folder / f"clinic_{cid}.csv", "w", newline="") as f:
            csv.writer(f).writerows([header] + [[*x[i], y[i]] for i in rows.tolist()])
    with open(folder / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([header] + [[*x[i], y[i]] for i in test])
    design = torch.cat([torch.as_tensor(x[train]), torch.ones(len(train), 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, torch.as_tensor(y[train]).unsqueeze(1)).solution
    pred = torch.cat([torch.as_tensor(x[test]), torch.ones(len(test), 1, dtype=torch.float64)], 1) @ coef
    return str(folder / "clinic_{client}.csv"), str(folder / "test.csv"), float(((pred[:, 0] - torch.as_tensor(y[test])) ** 2).mean())


def test_a_regression_target_trains_to_the_central_least_squares_fit(tmp_path, capsys):
    root, test_root, central_mse = _diabetes_sites(tmp_path)
    run_dir = tmp_path / "run"
    code = cli.main(["data=csv", f"data.root='{root}'", f"data.test_root='{test_root}'", "data.target=progression",
                     "data.task=regression", "fl.num_clients=3", "fl.rounds=30", "model=logreg", "optim.lr=0.05",
                     "runtime.progress=false", f"hydra.run.dir={run_dir}"], config_dir=str(REPO / "conf"))
    assert code == 0, capsys.readouterr().err[-2000:]
    info = json.loads((run_dir / "run.json").read_text())
    final = info["final"]
    assert info["num_classes"] == 1 and "test_accuracy" not in final
    # a linear model trained federatedly reaches the pooled least-squares fit (MSE ~3,100 vs ~6,100 for
    # predicting the mean); MAE and per-client MAE are reported too
    assert final["test_mse"] < 1.1 * central_mse, (final["test_mse"], central_mse)
    assert 0 < final["test_mae"] < 60 and final["client_mae_p90"] >= final["client_mae_mean"] > 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["test_mse"] < lines[0]["test_mse"]
    partition = json.loads((run_dir / "partition.json").read_text())
    assert "target_mean" in partition["clients"]["0"] and partition["classes"] == []


def test_a_regression_target_with_a_classification_loss_is_refused(tmp_path, capsys):
    root, _, _ = _diabetes_sites(tmp_path)
    base = ["data=csv", f"data.root='{root}'", "data.target=progression", "fl.num_clients=3",
            f"hydra.run.dir={tmp_path / 'run'}"]
    code = cli.main([*base, "data.task=regression", "train.loss=cross_entropy"], config_dir=str(REPO / "conf"))
    err = capsys.readouterr().err
    assert code == 2 and "train.loss='cross_entropy' is invalid: is a classification loss but the data's target is " \
                          "a regression target (data.task=regression); use train.loss=mse or auto" in err
    code = cli.main([*base, "data.task=regression", "attack=label_flip"], config_dir=str(REPO / "conf"))
    assert code == 2 and "attack='label_flip' is invalid: works on class labels" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"data.target='f0' is invalid: is a regression target .* non-numeric "
                                          r"value 'x'"):
        tabular.local_schema(tabular.Table("t.csv", ["f0", "g"], [["x", "1"]]), "f0", None, [], regression=True)
    assert not (tmp_path / "run").exists()


def test_parquet_sites_read_as_their_csv_twins(tmp_path):
    """The same three sites as Parquet files (typed columns, not text) give the same schema and tensors."""
    pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (pip install -e '.[parquet]')")
    import pyarrow.parquet as pq

    csv_root = _write(tmp_path)
    for cid, rows in SITES.items():
        columns = list(zip(*rows, strict=True))
        table = pa.table({"age": pa.array(columns[0], pa.int64()), "dose": pa.array(columns[1], pa.float64()),
                          "ward": pa.array(columns[2], pa.string()), "outcome": pa.array(columns[3], pa.int64())})
        pq.write_table(table, tmp_path / f"site_{cid}.parquet")
    csv_parts, pq_parts = ([tabular.local_schema(tabular.read_table(tabular.site_path(root, c)), "outcome", None, [])
                            for c in SITES] for root in (csv_root, str(tmp_path / "site_{client}.parquet")))
    assert tabular.agree(pq_parts) == tabular.agree(csv_parts)
    schema = tabular.agree(pq_parts)
    for c in SITES:
        a = tabular.encode(tabular.read_table(tabular.site_path(csv_root, c)), "outcome", schema)
        b = tabular.encode(tabular.read_table(tmp_path / f"site_{c}.parquet"), "outcome", schema)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
