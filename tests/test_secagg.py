"""Secure aggregation by pairwise masking: exact cancellation, masked inputs that look uniform,
what passes through the collectives, dropout detection, and refusals."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import fork_ranks, make_cfg, run_job
from fl.transport.plain import SumAggregator
from fl.runtime.comm import Comm
from fl.privacy.dp_fedavg import DPFedAvg
from fl.secagg.masking import MODULUS, ClientKeys, FixedPoint, ring
from fl.transport.secure_sum import SecureSumAggregator
from fl.strategies import FedAvg
from fl.types import ClientUpdate

CPU = torch.device("cpu")


def _update(cid: int, dim: int, scale: float = 1.0) -> ClientUpdate:
    delta = torch.randn(dim, generator=torch.Generator().manual_seed(cid)) * scale
    return ClientUpdate(cid, delta, 10 + 7 * cid, torch.tensor(2.0 * cid), 10 + 7 * cid, 3)


def test_fixed_point_round_trip_error_is_at_most_half_a_step():
    fp = FixedPoint(16)
    x = torch.linspace(-1000, 1000, 100_001, dtype=torch.float64)
    enc = fp.encode(x)
    assert enc.dtype == torch.int64 and int(enc.min()) >= 0 and int(enc.max()) < MODULUS
    assert float((fp.decode(enc) - x).abs().max()) <= 2.0 ** -17
    # sums wrap around the ring and still decode: (-3.5) + 1.25 = -2.25
    assert float(fp.decode(ring(fp.encode(torch.tensor([-3.5])) + fp.encode(torch.tensor([1.25]))))) == -2.25


def test_pairwise_masks_cancel_exactly_in_the_sum():
    keys = {cid: ClientKeys() for cid in (3, 5, 8, 11, 20)}
    publics = {cid: k.public for cid, k in keys.items()}
    masks = [k.mask(cid, publics, 7, 1000) for cid, k in keys.items()]
    total = torch.zeros(1000, dtype=torch.int64)
    for m in masks:
        ring(total.add_(m))
    assert torch.equal(total, torch.zeros(1000, dtype=torch.int64))
    assert not torch.equal(masks[0], masks[1])
    # both ends of a pair derive the same mask; another round gives another one
    assert torch.equal(keys[3].pair_mask(3, 5, publics[5], 7, 10), keys[5].pair_mask(5, 3, publics[3], 7, 10))
    assert not torch.equal(keys[3].pair_mask(3, 5, publics[5], 7, 10), keys[3].pair_mask(3, 5, publics[5], 8, 10))


def test_a_masked_input_is_uniform_and_uncorrelated_with_the_update():
    fp = FixedPoint(20)
    keys = {cid: ClientKeys() for cid in range(4)}
    publics = {cid: k.public for cid, k in keys.items()}
    n = 200_000
    update = torch.randn(n, generator=torch.Generator().manual_seed(0))
    masked = ring(fp.encode(update) + keys[0].mask(0, publics, 0, n))
    u = masked.double() / MODULUS                                  # in [0, 1)
    counts = torch.histc(u, bins=16, min=0, max=1)
    chi2 = float(((counts - n / 16) ** 2 / (n / 16)).sum())
    assert chi2 < 40, f"chi-square {chi2:.1f} with 15 degrees of freedom: not uniform"  # p ~ 5e-4
    corr = float(torch.corrcoef(torch.stack([u, update.double()]))[0, 1])
    assert abs(corr) < 0.01, corr
    plain = fp.encode(update).double() / MODULUS
    assert abs(float(torch.corrcoef(torch.stack([plain, update.double()]))[0, 1])) > 0.1, "the check can fail"


def test_masked_sum_equals_the_plain_weighted_mean_up_to_quantization():
    dim, cohort = 300, [0, 1, 2, 3, 4]
    plain = SumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU)
    secure = SecureSumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, cohort, cohort, 0, frac_bits=20)
    for cid in cohort:
        plain.add(_update(cid, dim))
        secure.add(_update(cid, dim))
    a, b = plain.finish(torch.zeros(dim), 0), secure.finish(torch.zeros(dim), 0)
    # each client's w*v is off by <= 2^-21; the mean divides the sum of 5 errors by sum(w) = 120
    assert float((a.new_global - b.new_global).abs().max()) <= 5 * 2.0 ** -21 / 120 + 1e-7
    assert (b.num_clients, b.num_samples, b.skipped) == (5, a.num_samples, False)
    assert b.train_loss == pytest.approx(a.train_loss, abs=1e-5)


def test_dp_under_secure_aggregation_adds_noise_of_the_central_scale():
    dim, cohort = 100_000, list(range(4))
    dp = DPFedAvg(clip_norm=1.0, noise_multiplier=2.0, expected_clients=4, seed=0)
    secure = SecureSumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, cohort, cohort, 0, 20, privacy=dp)
    for cid in cohort:
        secure.add(ClientUpdate(cid, torch.zeros(dim), 5, torch.tensor(0.0), 5, 1))
    noise = secure.finish(torch.zeros(dim), 0).new_global * 4  # sum of 4 noise shares
    assert abs(float(noise.std()) - 2.0) < 2.0 * 0.01


def test_a_client_that_sends_nothing_fails_the_round_and_leaves_the_model_unchanged(caplog):
    dim, cohort = 50, [2, 4, 9]
    secure = SecureSumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, cohort, cohort, 3, 20)
    secure.add(_update(2, dim))
    secure.drop(4)
    secure.add(_update(9, dim))
    start = torch.ones(dim)
    with caplog.at_level(logging.WARNING, logger="fl"):
        result = secure.finish(start, 3)
    assert result.skipped and result.dropped == 1 and result.num_clients == 2
    assert torch.equal(result.new_global, start)
    assert "client(s) [4]" in caplog.text and "secure aggregation failed" in caplog.text
    # a non-finite update is rejected before masking: the same failure, counted as rejected
    secure = SecureSumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, cohort, cohort, 3, 20)
    for cid in cohort:
        u = _update(cid, dim)
        secure.add(ClientUpdate(cid, u.delta * float("nan"), 1, u.loss_sum, 1, 1) if cid == 9 else u)
    result = secure.finish(start, 3)
    assert result.skipped and result.rejected == 1 and torch.equal(result.new_global, start)


class RecordingComm(Comm):
    """A real gloo Comm that keeps a copy of every tensor this rank puts into a collective."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, torch.Tensor]] = []
        self.objects: list[object] = []

    def all_reduce_sum(self, flat):
        self.sent.append(("all_reduce", flat.clone()))
        return super().all_reduce_sum(flat)

    def all_gather_object(self, obj):
        self.objects.append(obj)
        return super().all_gather_object(obj)


def _two_rank_round(rank: int, world_size: int, init_method: str, dim: int, recover: bool, dropped: int | None
                    ) -> dict:
    """Rank r hosts clients r, r+2, r+4 (``dropped`` sends nothing); returns what it sent,
    its clients' plain weighted sum and the result."""
    from fl.runtime.env import DistEnv, process_group

    with process_group(DistEnv(rank, world_size, rank), CPU, "gloo", 60, init_method):
        comm = RecordingComm(rank, world_size, CPU)
        cohort, hosted = list(range(6)), [c for c in range(6) if c % 2 == rank]
        agg = SecureSumAggregator(FedAvg(), comm, dim, CPU, cohort, hosted, 0, 20, recover=recover)
        plain = torch.zeros(dim, dtype=torch.float64)
        for cid in hosted:
            if cid == dropped:
                agg.drop(cid)
                continue
            u = _update(cid, dim)
            plain += u.delta.double() * u.num_samples
            agg.add(u)
        result = agg.finish(torch.zeros(dim), 0)
        return {"sent": comm.sent, "objects": comm.objects, "plain": plain, "model": result.new_global,
                "skipped": result.skipped, "clients": result.num_clients}


def _plain_mean(clients) -> torch.Tensor:
    updates = [_update(c, 20_000) for c in clients]
    return sum(u.delta.double() * u.num_samples for u in updates) / sum(u.num_samples for u in updates)


@pytest.mark.parametrize("recover, dropped", [(False, None), (True, None), (True, 3)])
def test_ranks_exchange_only_masked_vectors_keys_and_encrypted_shares(tmp_path, recover, dropped):
    dim = 20_000
    out = fork_ranks(2, _two_rank_round, tmp_path, dim, recover, dropped)
    expected = _plain_mean([c for c in range(6) if c != dropped])
    for rank, r in enumerate(out):
        ops = r["sent"]
        assert [(op, t.dtype) for op, t in ops] == [("all_reduce", torch.int64)], "one integer all-reduce, no floats"
        contribution = ops[0][1][:dim].double() / MODULUS
        corr = float(torch.corrcoef(torch.stack([contribution, r["plain"]]))[0, 1])
        assert abs(corr) < 0.05, f"a rank's contribution correlates with its clients' sum: {corr}"
        keys, *rest = r["objects"]
        assert all(len(k) == 32 and len(e) == (32 if recover else 0) for k, e in keys.values()), "public keys only"
        if recover:
            shares, reveal = rest
            assert {u for u, _ in shares} == {c for c in range(6) if c % 2 == rank}
            assert all(len(c) == 2 * 66 + 16 for c in shares.values()), "AES-GCM sealed shares"
            # a survivor reveals, per client, the share of the self-mask seed or of the mask key, never both
            assert len(reveal) == len({(u, v) for u, v in reveal}) and {v for _, v in reveal} <= set(range(6))
        else:
            assert rest == []
        torch.testing.assert_close(r["model"].double(), expected, rtol=0, atol=1e-5)
        assert not r["skipped"] and r["clients"] == 6 - (dropped is not None)
    assert torch.equal(out[0]["model"], out[1]["model"])


SECAGG_RUN = ("secagg=masking", "fl.num_clients=6", "fl.clients_per_round=4", "fl.rounds=3", "fl.eval_every=3",
              "fl.checkpoint_every=0", "optim.lr=0.1", "model=mlp")


@pytest.mark.parametrize("client_batch", ["off", "auto"])
def test_runs_match_plain_fedavg_and_are_world_size_invariant(tmp_path, client_batch):
    """Integer sums do not depend on the order: the model is bit-identical at any world size, with
    clients trained one after another or batched (a batched client's arithmetic does not depend on
    which clients share its chunk)."""
    run = (*SECAGG_RUN, f"fl.client_batch={client_batch}")
    plain = fork_ranks(1, run_job, tmp_path, make_cfg(*run, "secagg=none"), tmp_path / "plain")[0]
    models = {}
    for ws in (1, 2):
        summary = fork_ranks(ws, run_job, tmp_path, make_cfg(*run), tmp_path / f"ws{ws}")[0]
        models[ws] = torch.load(tmp_path / f"ws{ws}" / "final_model.pt", weights_only=True)
        assert summary["final"]["test_accuracy"] == pytest.approx(plain["final"]["test_accuracy"], abs=0.01)
    ref = torch.load(tmp_path / "plain" / "final_model.pt", weights_only=True)
    for k in ref:
        assert torch.equal(models[1][k], models[2][k]), "integer sums: bit-identical at any world size"
        torch.testing.assert_close(models[1][k], ref[k], rtol=0, atol=1e-4)


def test_with_dropout_fail_dropouts_fail_their_rounds_and_the_run_goes_on(tmp_path):
    import json

    run_dir = tmp_path / "drop"
    cfg = make_cfg(*SECAGG_RUN, "secagg.dropout=fail", "fl.dropout_rate=0.2", "fl.rounds=6", "fl.eval_every=1")
    fork_ranks(2, run_job, tmp_path, cfg, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    failed = [r["round"] for r in rows if r["skipped"]]
    assert failed == [r["round"] for r in rows if r["dropped"] > 0] and failed, rows
    assert len(failed) < len(rows), "some rounds have no dropout and succeed"


@pytest.mark.parametrize("strategy", ["median", "krum", "trimmed_mean"])
def test_strategies_that_need_individual_updates_are_refused(tmp_path, strategy):
    with pytest.raises(RuntimeError, match=r"secagg='masking' is invalid: hides every individual update"):
        fork_ranks(1, run_job, tmp_path, make_cfg(*SECAGG_RUN, f"strategy={strategy}"), tmp_path / strategy)


def test_with_dp_and_adaptive_clipping_the_model_is_bit_identical_at_any_world_size(tmp_path):
    run = (*SECAGG_RUN, "privacy=dp_fedavg", "privacy.clip_norm=0.5", "privacy.noise_multiplier=0.5",
           "privacy.target_quantile=0.5", "privacy.count_noise=0.5")
    out = {ws: fork_ranks(ws, run_job, tmp_path, make_cfg(*run), tmp_path / f"dp{ws}")[0] for ws in (1, 2)}
    a, b = (torch.load(tmp_path / f"dp{ws}" / "final_model.pt", weights_only=True) for ws in (1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert out[1]["final"]["dp_clip_norm"] == out[2]["final"]["dp_clip_norm"] != 0.5


def test_bad_secagg_settings_name_the_key():
    from fl.config.build import prepare
    from fl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"secagg.frac_bits=50 is invalid: must be an integer >= 8 and <= 40"):
        prepare(make_cfg("secagg=masking", "secagg.frac_bits=50"), 1)
    with pytest.raises(ConfigError, match=r"secagg._target_='fl.secagg.Shamir' is invalid: cannot be imported"):
        prepare(make_cfg("secagg=masking", "secagg._target_=fl.secagg.Shamir"), 1)
    with pytest.raises(ConfigError, match=r"secagg.dropout='ignore' is invalid: must be one of recover, fail"):
        prepare(make_cfg("secagg=masking", "secagg.dropout=ignore"), 1)


def test_shamir_any_t_shares_rebuild_the_secret_and_fewer_do_not():
    import itertools
    import secrets

    from fl.secagg.masking import combine, split

    secret = secrets.token_bytes(32)
    shares = split(secret, 6, 3)
    for xs in itertools.combinations(range(1, 7), 3):
        assert combine({x: shares[x - 1] for x in xs}) == secret
    with pytest.raises(ValueError, match="fewer than t"):
        combine({1: shares[0], 2: shares[1]})


def test_sealed_shares_open_only_for_their_receiver_and_detect_tampering():
    from cryptography.exceptions import InvalidTag

    from fl.secagg.masking import seal, unseal

    a, b, c = ClientKeys(), ClientKeys(), ClientKeys()
    sealed = seal(a.agree(b.public), 1, 2, 5, b"share")
    assert unseal(b.agree(a.public), 1, 2, 5, sealed) == b"share"
    for key, args in ((c.agree(a.public), (1, 2, 5)), (b.agree(a.public), (2, 1, 5)), (b.agree(a.public), (1, 2, 6))):
        with pytest.raises(InvalidTag):
            unseal(key, *args, sealed)
    with pytest.raises(InvalidTag):
        unseal(b.agree(a.public), 1, 2, 5, sealed[:-1] + bytes([sealed[-1] ^ 1]))


def test_recovery_removes_the_masks_of_dropped_clients_down_to_the_threshold():
    dim, cohort = 64, list(range(7))  # threshold 0.5: floor(3.5) + 1 = 4 shares needed
    for dropped in ([5], [0, 3, 6]):
        secure = SecureSumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, cohort, cohort, 2, 20, recover=True)
        plain = SumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU)
        for cid in cohort:
            if cid in dropped:
                secure.drop(cid)
                plain.drop(cid)
            else:
                secure.add(_update(cid, dim))
                plain.add(_update(cid, dim))
        a, b = plain.finish(torch.zeros(dim), 2), secure.finish(torch.zeros(dim), 2)
        assert not b.skipped and b.num_clients == 7 - len(dropped) and b.dropped == len(dropped)
        torch.testing.assert_close(b.new_global, a.new_global, rtol=0, atol=1e-6)
    secure = SecureSumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, cohort, cohort, 2, 20, recover=True)
    for cid in cohort:
        secure.add(_update(cid, dim)) if cid < 3 else secure.drop(cid)
    result = secure.finish(torch.ones(dim), 2)
    assert result.skipped and torch.equal(result.new_global, torch.ones(dim)), "3 survivors < threshold 4: fails"


def test_with_recovery_dropouts_cost_nothing_but_their_updates(tmp_path):
    import json

    runs = {}
    for secagg in ("none", "masking"):
        run_dir = tmp_path / secagg
        fork_ranks(2, run_job, tmp_path, make_cfg(*SECAGG_RUN, f"secagg={secagg}", "fl.dropout_rate=0.2",
                                                  "fl.rounds=6", "fl.eval_every=1"), run_dir)
        runs[secagg] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["dropped"] for r in runs["masking"]) and not any(r["skipped"] for r in runs["masking"])
    assert [r["clients"] for r in runs["masking"]] == [r["clients"] for r in runs["none"]]
    a, b = (torch.load(tmp_path / s / "final_model.pt", weights_only=True) for s in ("none", "masking"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4)
