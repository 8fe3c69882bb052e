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


def test_the_round_counters_are_one_record_encoded_as_a_tail():
    from fl.transport.counters import NAMES, WIDTH, Counters

    c = Counters(weight=12.0, loss_sum=torch.tensor(3.5), seen=7.0, clients=2.0, rejected=1.0, late=1.0)
    tail = c.encode("cpu")
    assert tail.shape == (WIDTH,) and WIDTH == len(NAMES) == 10
    assert Counters.decode(tail) == c.replace(loss_sum=3.5)
    assert float(tail[Counters.index("rejected")]) == 1.0 and float(tail[Counters.index("late")]) == 1.0
    # tails add up: the sum of two encoded records decodes to the field-wise sum
    both = Counters.decode(tail + Counters(dropped=2.0, stop=1.0).encode("cpu"))
    assert (both.weight, both.dropped, both.stop, both.rejected) == (12.0, 2.0, 1.0, 1.0)
    assert Counters(rejected=1).encode(dtype=torch.int64).dtype == torch.int64


def test_the_server_step_skips_a_round_with_too_few_updates_and_applies_it_otherwise():
    from fl.engine.server import Combined, server_step
    from fl.transport.counters import Counters

    g, agg = torch.zeros(3), torch.ones(3)
    two = Combined(agg, Counters(weight=20.0, loss_sum=4.0, seen=8.0, clients=2.0, dropped=1.0), 96)
    applied = server_step(FedAvg(), None, 2, 0, g, two)
    assert torch.equal(applied.new_global, agg) and not applied.skipped
    assert (applied.num_clients, applied.num_samples, applied.train_loss, applied.dropped) == (2, 20, 0.5, 1)
    skipped = server_step(FedAvg(), None, 3, 0, g, two)
    assert skipped.skipped and torch.equal(skipped.new_global, g)
    assert server_step(FedAvg(), None, 1, 0, g, Combined(agg, Counters(clients=2.0), 0, failed=True)).skipped
