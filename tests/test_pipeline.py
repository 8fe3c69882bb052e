"""The update pipeline: its order, its server sides, and the transports that use it."""

from __future__ import annotations

import pytest
import torch

from fl.attacks import Adversary, SignFlip
from fl.compression.codecs import Quantize, TopK
from fl.compression.uplink import Uplink
from fl.privacy.dp_fedavg import DPFedAvg
from fl.runtime.comm import Comm
from fl.strategies import FedAvg
from fl.strategies.norm_bound import NormBound as NormBoundStrategy
from fl.transport.counters import Counters
from fl.transport.pipeline import ClientDP, Compression, ModelPoisoning, NormBound, Pipeline, RejectNonFinite
from fl.transport.plain import SumAggregator
from fl.types import ClientUpdate

CPU = torch.device("cpu")


def test_the_standard_pipeline_runs_attack_defense_privacy_compression_in_that_order():
    dp = DPFedAvg(1.0, 0.5, 4, seed=0)
    attack = ModelPoisoning(Adversary(SignFlip(factor=10.0), frozenset({1}), 0), 0, 8)
    p = Pipeline.standard(Uplink(Quantize(4), 0, 0, 8), NormBoundStrategy(2.0).transforms(), dp, 0, poisoning=attack)
    assert [type(t) for t in p.transforms] == [ModelPoisoning, NormBound, RejectNonFinite, ClientDP, Compression]
    v = torch.full((8,), 0.1)
    poisoned, counters = p.client(v, Counters(weight=5.0, clients=1.0), cid=1, upto=ClientDP)
    # the attacker's -10x update is clipped by the norm bound (2.0) before DP sees it
    assert float(poisoned.norm()) == pytest.approx(2.0) and float(poisoned[0]) < 0
    out, dp_counters = p.client(v, Counters(weight=5.0, clients=1.0), cid=1)
    assert dp_counters.weight == 1.0 and dp_counters.unclipped == 0.0, "DP: weight 1, clipped"
    assert abs(float(out.norm()) - 1.0) < 1e-5
    honest, _ = p.client(v, Counters(weight=5.0, clients=1.0), cid=0, upto=RejectNonFinite)
    assert torch.equal(honest, v)
    assert p.client(torch.tensor([float("nan")] * 8), Counters(), cid=0) is None, "NaN refused before DP"


def test_server_sides_run_in_reverse_order_and_dp_fixes_the_denominator():
    calls = []

    class Tag(RejectNonFinite):
        def __init__(self, name):
            self.name = name

        def server(self, total, counters, round_idx):
            calls.append(self.name)
            return total + 1

    p = Pipeline([Tag("a"), Tag("b"), Tag("c")], Uplink(None, 0, 0, 3))
    out = p.server(torch.zeros(3), Counters(weight=2.0), 0)
    assert calls == ["c", "b", "a"] and torch.equal(out, torch.full((3,), 1.5))
    dp = DPFedAvg(1.0, 0.0, expected_clients=8, seed=0)
    p = Pipeline.standard(Uplink(None, 0, 0, 3), privacy=dp)
    assert torch.equal(p.server(torch.full((3,), 4.0), Counters(weight=1.0), 0), torch.full((3,), 0.5))


def test_a_transform_says_whether_it_rides_a_sum():
    assert Compression(Uplink(Quantize(4), 0, 0, 10)).preserves_sum
    assert not Compression(Uplink(TopK(0.1), 0, 0, 10)).preserves_sum
    assert NormBound(1.0).preserves_sum and RejectNonFinite().preserves_sum


def test_the_attack_in_the_pipeline_equals_the_adversarys_poisoned_update():
    adversary = Adversary(SignFlip(factor=3.0), frozenset({2}), 0)
    updates = [ClientUpdate(c, torch.randn(6, generator=torch.Generator().manual_seed(c)), 10, torch.tensor(0.0), 10, 1)
               for c in range(4)]
    piped = SumAggregator(FedAvg(), Comm(0, 1, CPU), 6, CPU, pipeline=Pipeline.standard(
        Uplink(None, 0, 0, 6), poisoning=ModelPoisoning(adversary, 0, 6)))
    direct = SumAggregator(FedAvg(), Comm(0, 1, CPU), 6, CPU)
    for u in updates:
        piped.add(u)
        direct.add(adversary.poison(u, 0))
    torch.testing.assert_close(piped.finish(torch.zeros(6), 0).new_global, direct.finish(torch.zeros(6), 0).new_global)
