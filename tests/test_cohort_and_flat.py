import pytest
import torch
from torch import nn

from fl.training.cohort import assign, client_epochs, sample_cohort
from fl.training.flat import FlatModel
from fl.errors import ConfigError
from fl.models import build_model
from fl.runtime.seeding import derive_seed


def test_cohort_is_seeded_distinct_sorted_and_varies_by_round():
    a = sample_cohort(0, 3, 100, 10)
    assert a == sample_cohort(0, 3, 100, 10) and a == sorted(set(a)) and len(a) == 10
    assert a != sample_cohort(0, 4, 100, 10) and a != sample_cohort(1, 3, 100, 10)
    assert a != sample_cohort(0, 3, 100, 10, purpose="eval")
    assert sample_cohort(0, 0, 5, 5) == [0, 1, 2, 3, 4]


def test_assign_spreads_the_cohort_evenly_or_to_home_ranks():
    cohort = [3, 8, 11, 20, 41, 57, 60]
    parts = assign(cohort, 3, per_site=False)
    assert sum(parts, []) == cohort and sorted(len(p) for p in parts) == [2, 2, 3]
    sites = assign(cohort, 3, per_site=True)
    assert all(c % 3 == r for r, p in enumerate(sites) for c in p) and sorted(sum(sites, [])) == cohort


def test_derived_seeds_differ_by_label():
    assert derive_seed(0, "client", 1, 2) == derive_seed(0, "client", 1, 2)
    assert len({derive_seed(0, "client", 1, c) for c in range(100)}) == 100


def test_flat_model_views_write_through_and_export_a_plain_state_dict():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    fm = FlatModel(model)
    n_float = sum(p.numel() for p in model.parameters()) + 2 * 4  # + BN running mean/var
    assert len(fm) == n_float and fm.num_params == n_float - 8
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = fm.flat.clone()
    model.train()
    model(torch.randn(5, 1, 8, 8)).sum().backward()
    opt.step()
    assert not torch.equal(before, fm.flat), "optimizer steps and BN statistics must land in the flat buffer"
    fm.load_(before)
    offset = 36 + 4 + 4 + 4  # conv weight, conv bias, bn weight, bn bias; then the linear weight
    assert torch.equal(model[3].weight.detach().reshape(-1), before[offset:offset + model[3].weight.numel()])
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    fresh.load_state_dict(fm.state_dict())
    torch.testing.assert_close(fresh.eval()(torch.ones(1, 1, 8, 8)), model.eval()(torch.ones(1, 1, 8, 8)))


def test_models_build_for_every_dataset_shape():
    for name in ("cnn", "cnn_padded", "cnn_bn", "cnn_mcmahan", "mlp", "logreg", "resnet18"):
        for shape in ((1, 8, 8), (1, 28, 28), (3, 32, 32)):
            if name == "cnn" and shape[1] < 16:
                with pytest.raises(ConfigError, match=r"model='cnn' is invalid: needs images .* use model=cnn_padded"):
                    build_model(name, shape, 10)
                continue
            model = build_model(name, shape, 10)
            assert model.eval()(torch.zeros(2, *shape)).shape == (2, 10)
    assert sum(p.numel() for p in build_model("cnn_mcmahan", (1, 28, 28), 10).parameters()) == 1_663_370


def test_cnn_is_the_pytorch_mnist_example_cnn():
    model = build_model("cnn", (1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == 21_840
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU", "Flatten", "Linear", "ReLU", "Linear"]
    assert [tuple(p.shape) for p in model.parameters()] == [(10, 1, 5, 5), (10,), (20, 10, 5, 5), (20,), (50, 320),
                                                             (50,), (10, 50), (10,)]


def test_mlp_and_logreg_take_feature_vectors():
    for name, params in (("mlp", 30 * 200 + 200 + 200 * 200 + 200 + 200 * 2 + 2), ("logreg", 30 * 2 + 2)):
        model = build_model(name, (30,), 2)
        assert model(torch.zeros(5, 30)).shape == (5, 2)
        assert sum(p.numel() for p in model.parameters()) == params
    assert build_model({"_target_": "fl.models.mlp", "hidden": [16]}, (30,), 3)(torch.zeros(4, 30)).shape == (4, 3)


def test_client_epochs_are_per_client_seeded_and_in_range():
    draws = [client_epochs(0, 1, c, 1, 4) for c in range(200)]
    assert set(draws) == {1, 2, 3, 4}
    assert draws == [client_epochs(0, 1, c, 1, 4) for c in range(200)]
    assert client_epochs(0, 1, 7, 2, None) == 2
