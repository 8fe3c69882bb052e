import pytest
import torch

from fl.transport.plain import GatherAggregator, SumAggregator, choose_transport
from fl.runtime.comm import Comm
from fl.errors import ConfigError
from fl.strategies import FedAvg
from fl.strategies.base import Strategy, weighted_mean
from fl.types import ClientUpdate

CPU = torch.device("cpu")


def _updates(k=5, dim=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [ClientUpdate(c, torch.randn(dim, generator=g), int(torch.randint(1, 100, (1,), generator=g)),
                         torch.tensor(float(c + 1)), 10 * (c + 1), 3) for c in range(k)]


def test_weighted_mean_matches_the_formula():
    v = torch.randn(4, 6, dtype=torch.float64)
    w = torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64)
    expected = sum(w[i] * v[i] for i in range(4)) / w.sum()
    torch.testing.assert_close(weighted_mean(v, w), expected)


def test_fedavg_server_step():
    g, agg = torch.ones(3), torch.tensor([1.0, -2.0, 0.5])
    torch.testing.assert_close(FedAvg().server_update(g, agg), g + agg)
    torch.testing.assert_close(FedAvg(server_lr=0.5).server_update(g, agg), g + 0.5 * agg)
    with pytest.raises(ConfigError, match="strategy.server_lr"):
        FedAvg(server_lr=0.0)


@pytest.mark.parametrize("cls", [SumAggregator, GatherAggregator])
def test_both_transports_give_fedavg_by_formula(cls):
    ups = _updates()
    comm = Comm(0, 1, CPU)
    args = (FedAvg(), comm, 11, CPU) + ((len(ups),) if cls is GatherAggregator else ())
    agg = cls(*args)
    for u in ups:
        agg.add(u)
    g = torch.zeros(11)
    result = agg.finish(g, 0)
    n = torch.tensor([float(u.num_samples) for u in ups])
    expected = sum(n[i] * ups[i].delta for i in range(len(ups))) / n.sum()
    torch.testing.assert_close(result.new_global, g + expected, rtol=1e-5, atol=1e-6)
    assert result.num_clients == 5 and result.num_samples == int(n.sum())
    assert result.train_loss == pytest.approx(sum(range(1, 6)) / sum(10 * c for c in range(1, 6)))


def test_gather_ignores_padding_rows():
    ups = _updates(k=2)
    agg = GatherAggregator(FedAvg(), Comm(0, 1, CPU), 11, CPU, rows_per_rank=4)
    for u in ups:
        agg.add(u)
    result = agg.finish(torch.zeros(11), 0)
    w = torch.tensor([float(u.num_samples) for u in ups])
    torch.testing.assert_close(result.new_global, weighted_mean(torch.stack([u.delta for u in ups]), w))
    assert result.num_clients == 2


class _Median(Strategy):
    is_weighted_mean = False


def test_transport_choice():
    assert choose_transport("auto", FedAvg()) == "allreduce"
    assert choose_transport("gather", FedAvg()) == "gather"
    assert choose_transport("auto", _Median()) == "gather"
    with pytest.raises(ConfigError, match="strategy.transport='allreduce'.*needs every client update"):
        choose_transport("allreduce", _Median())
    with pytest.raises(ConfigError, match="strategy.transport='ring'"):
        choose_transport("ring", FedAvg())
