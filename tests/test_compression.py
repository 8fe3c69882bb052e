"""Compression: the codecs' maths, honest byte counts, error feedback, and the codecs riding the
real transports (all-reduce, gather, secure aggregation) and the round loop."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import fork_ranks, make_cfg, run_job
from fl.compression import hadamard
from fl.compression.codecs import Cast, Key, NoCompression, Quantize, RandK, TopK
from fl.compression.topk import top_indices
from fl.compression.uplink import Uplink
from fl.config.build import prepare
from fl.errors import ConfigError
from fl.runtime.comm import Comm
from fl.strategies import FedAvg
from fl.training.store import ClientStore, read_state
from fl.transport.plain import GatherAggregator, SumAggregator
from fl.transport.secure_sum import SecureSumAggregator
from fl.types import ClientUpdate

CPU = torch.device("cpu")
CODECS = [NoCompression(), Cast("float16"), Cast("bfloat16"), Quantize(1), Quantize(3), Quantize(8),
          Quantize(4, rotate=True), TopK(0.01), TopK(0.2), RandK(0.1), RandK(0.25, bits=4)]


def _vector(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_stochastic_quantization_is_unbiased_with_the_formula_variance():
    q, x, scale = Quantize(2), torch.linspace(-0.9, 0.9, 37), 1.0
    draws = torch.stack([q.decode(q.encode(x, Key(0, r, 3), scale), Key(0, r, 3)) for r in range(4000)])
    step = q.step(scale)
    p = ((x + scale) / step) % 1
    variance = step ** 2 * p * (1 - p)
    # the mean of 4000 draws is within 5 standard errors of x, entry by entry
    assert ((draws.mean(0) - x).abs() <= 5 * (variance / 4000).sqrt() + 1e-6).all()
    assert float(draws.var(0).sum()) == pytest.approx(float(variance.sum()), rel=0.05)
    torch.testing.assert_close(draws.var(0), variance, rtol=0.35, atol=1e-3)  # entries with p near 0 are noisy
    torch.testing.assert_close(draws.unique(), torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))  # 2 bits: 4 levels
    # deterministic rounding would be biased: the check can fail
    biased = (((x + scale) / step).round() * step - scale)
    assert not ((biased - x).abs() <= 5 * (variance / 4000).sqrt() + 1e-6).all()


def test_the_rotation_is_orthonormal_and_its_own_inverse_and_spreads_an_outlier():
    v = torch.zeros(5000)
    v[17] = 10.0
    x = hadamard.rotate(v, seed=1, round_idx=2)
    assert len(x) == 5000 and hadamard.blocks(5000) == [4096, 512, 256, 128, 8], "no padding"
    assert float(x.norm()) == pytest.approx(10.0, rel=1e-5)
    assert float(x.abs().max()) == pytest.approx(10 / 64, rel=1e-5), "one outlier spread over its 4096-block"
    assert int((x != 0).sum()) == 4096
    torch.testing.assert_close(hadamard.unrotate(x, 5000, 1, 2), v, atol=1e-5, rtol=0)
    dense = _vector(5000)  # (a one-hot vector would only see its own entry's sign change)
    assert not torch.equal(hadamard.rotate(dense, 1, 3), hadamard.rotate(dense, 1, 2)), "a new rotation each round"


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("n", [1, 33, 1000, 4099])
def test_counted_bytes_equal_the_serialized_message(codec, n):
    v = _vector(n)
    x = codec.forward(v, Key(0, 0, 1))
    enc = codec.encode(x, Key(0, 0, 1), float(x.abs().max()))
    assert enc.nbytes == len(codec.serialize(enc))


def test_compression_ratios_are_what_the_formats_say():
    n = 100_000
    v = _vector(n)
    sizes = {c.name: c.encode(c.forward(v, Key(0, 0, 0)), Key(0, 0, 0), 1.0).nbytes for c in CODECS}
    assert sizes["none"] == 4 * n and sizes["fp16"] == sizes["bf16"] == 2 * n
    assert sizes["1bit"] == n // 8 + 4 and sizes["8bit"] == n + 4
    assert sizes["4bit+rotation"] == n // 2 + 4
    assert sizes["top-0.01+EF"] == 4 + 8 * 1000, "1%: values plus int32 indices"
    assert sizes["top-0.2+EF"] == 4 + 4 * 20_000 + n // 8, "20%: a bitmap is shorter than indices"
    assert sizes["rand-0.1"] == 4 * 10_000, "the round's seed names the coordinates"
    assert sizes["rand-0.25+4bit"] == 25_000 // 2 + 4, "a quarter of the entries, 4 bits each, and the scale"


def test_top_k_keeps_the_largest_entries_and_random_k_is_unbiased():
    v = _vector(1000)
    top = TopK(0.05)
    sent = top.decode(top.encode(v, Key(0, 0, 0)), Key(0, 0, 0))
    kept = sent != 0
    assert int(kept.sum()) == 50 and float(v[kept].abs().min()) >= float(v[~kept].abs().max())
    rk = RandK(0.1)
    mean = torch.stack([rk.decode(rk.encode(v, Key(0, r)), Key(0, r)) for r in range(3000)]).mean(0)
    assert float((mean - v).abs().mean()) < 0.15 * float(v.abs().mean())
    same_round = [rk.decode(rk.encode(_vector(1000, s), Key(0, 7, s)), Key(0, 7, s)) != 0 for s in (1, 2)]
    assert torch.equal(same_round[0], same_round[1]), "every client of a round keeps the same coordinates"


def test_random_k_keeps_k_distinct_sorted_coordinates_each_as_often_as_the_fraction():
    rk, dim, rounds = RandK(0.1), 1000, 2000
    picks = [rk.indices(dim, Key(5, r), "cpu") for r in range(rounds)]
    for idx in picks[:20]:
        assert len(idx) == 100 and bool((idx[1:] > idx[:-1]).all()) and 0 <= int(idx[0]) and int(idx[-1]) < dim
    assert not torch.equal(picks[0], picks[1]), "each round draws its own coordinates"
    assert torch.equal(picks[3], rk.indices(dim, Key(5, 3, 9), "cpu")), "a function of the seed and the round only"
    counts = torch.bincount(torch.cat(picks), minlength=dim).double()
    sd = (rounds * 0.1 * 0.9) ** 0.5  # each coordinate is kept in a round with probability 0.1
    assert float((counts - rounds * 0.1).abs().max()) < 5 * sd


def test_quantized_random_k_is_unbiased_with_random_k_plus_quantization_variance():
    # 10 of 40 coordinates per round (p = 1/4, rescaled by 4), 2 bits on [-1, 1] for the kept ones
    rk, x, scale, draws = RandK(0.25, bits=2), torch.linspace(-0.9, 0.9, 40), 1.0, 8000
    keys = [Key(0, r, 3) for r in range(draws)]
    out = torch.stack([rk.decode(rk.encode(x, key, scale), key) for key in keys])
    step = rk.quantizer.step(scale)
    frac = ((x + scale) / step) % 1
    p = 0.25
    variance = x ** 2 * (1 / p - 1) + step ** 2 * frac * (1 - frac) / p
    assert ((out.mean(0) - x).abs() <= 5 * (variance / draws).sqrt()).all(), "unbiased"
    assert float(out.var(0).sum()) == pytest.approx(float(variance.sum()), rel=0.05)
    assert float(out.var(0).sum()) > 1.1 * float((x ** 2 * (1 / p - 1)).sum()), "quantization adds variance"
    assert rk.encode(x, keys[0], scale).nbytes == 3 + 4, "10 codes of 2 bits in 3 bytes, and the scale"


def test_error_feedback_sent_plus_residual_is_the_sum_of_raw_updates(tmp_path):
    store = ClientStore(tmp_path / "res", checkpoint_every=1, keep_checkpoints=10)
    raw_sum, sent_sum = torch.zeros(500), torch.zeros(500)
    for rnd in range(6):
        up = Uplink(TopK(0.02), seed=0, round_idx=rnd, dim=500, residuals=store)
        v = _vector(500, rnd)
        decoded, _ = up.send(4, up.prepare(4, v))
        raw_sum += v
        sent_sum += decoded
        residual = store.load(4, rnd + 1, CPU)["residual"]
        torch.testing.assert_close(sent_sum + residual, raw_sum, atol=1e-5, rtol=0)
    assert float(residual.norm()) > 0, "top-2% leaves something unsent"
    no_ef = Uplink(TopK(0.02, error_feedback=False), seed=0, round_idx=0, dim=500, residuals=None)
    assert not no_ef.codec.keeps_residual


def test_residuals_written_behind_are_complete_after_flush_and_a_failed_write_surfaces(tmp_path):
    store = ClientStore(tmp_path / "res", checkpoint_every=1, keep_checkpoints=1)
    for c in range(5):
        store.save(c, 3, {"residual": torch.full((100_000,), float(c))}, wait=False)
    store.flush()
    for c in range(5):
        saved = read_state(tmp_path / "res" / str(c) / "round_000003.bin")
        assert torch.equal(saved["residual"], torch.full((100_000,), float(c)))
    assert store.load(4, 4, CPU)["residual"][0] == 4.0
    (tmp_path / "blocked").write_text("")  # a file where the store's folder should be
    bad = ClientStore(tmp_path / "blocked", checkpoint_every=1, keep_checkpoints=1)
    bad.save(0, 0, {"residual": torch.zeros(3)}, wait=False)
    with pytest.raises(OSError):
        bad.flush()


def _aggregate(agg, round_idx: int = 0) -> torch.Tensor:
    """What the server step hands ``server_update``: the pipeline's server sides on a sum."""
    c = agg.combine(round_idx)
    return agg.pipeline.server(c.aggregate, c.counters, round_idx).float() if c.summed else c.aggregate


def _update(cid: int, dim: int) -> ClientUpdate:
    return ClientUpdate(cid, _vector(dim, cid) * 0.1, 10 + 7 * cid, torch.tensor(2.0 * cid), 10 + 7 * cid, 3)


def test_quantized_sum_equals_the_weighted_mean_of_individually_decoded_vectors():
    dim, cohort, q = 700, [0, 1, 2, 3], Quantize(3, rotate=True)
    agg = SumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, uplink=Uplink(q, 5, 2, dim))
    for cid in cohort:
        agg.add(_update(cid, dim))
    got = _aggregate(agg, 2)
    xs = {cid: q.forward(_update(cid, dim).delta, Key(5, 2, cid)) for cid in cohort}
    scale = max(float(x.abs().max()) for x in xs.values())
    weights = {cid: 10 + 7 * cid for cid in cohort}
    decoded = {cid: q.backward(q.decode(q.encode(x, Key(5, 2, cid), scale), Key(5, 2, cid)), dim, Key(5, 2))
               for cid, x in xs.items()}
    want = sum(weights[c] * decoded[c] for c in cohort) / sum(weights.values())
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    exact = sum(weights[c] * _update(c, dim).delta for c in cohort) / sum(weights.values())
    assert float((got - exact).abs().max()) > 1e-4, "3 bits are lossy: the check can fail"


@pytest.mark.parametrize("codec", [RandK(0.1), RandK(0.25, bits=4), TopK(0.05, error_feedback=False), TopK(0.05),
                                   Cast("bfloat16")], ids=["random-k", "random-k+4bit", "top-k", "top-k+EF", "bf16"])
def test_a_sum_of_messages_equals_the_weighted_mean_of_individually_decoded_vectors(codec, tmp_path):
    # random-k and top-k add each message's values at its coordinates, without its dense vector;
    # with error feedback (no residual yet), the sent vector becomes the residual only after encoding
    dim, cohort = 700, [0, 1, 2, 3]
    store = ClientStore(tmp_path / "res", checkpoint_every=1, keep_checkpoints=1) if codec.keeps_residual else None
    agg = SumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, uplink=Uplink(codec, 5, 2, dim, store))
    for cid in cohort:
        agg.add(_update(cid, dim))
    got = _aggregate(agg, 2)
    weights = {cid: 10 + 7 * cid for cid in cohort}
    # the cohort's shared scale: the largest entry any client's message quantizes
    scale = max(codec.local_scale(_update(c, dim).delta, Key(5, 2)) for c in cohort) if codec.shared_scale else 0.0
    decoded = {cid: codec.decode(codec.encode(_update(cid, dim).delta, Key(5, 2, cid), scale), Key(5, 2, cid))
               for cid in cohort}
    want = sum(weights[c] * decoded[c] for c in cohort) / sum(weights.values())
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    if store is not None:  # what each client did not send is what it keeps, exactly
        for c in cohort:
            assert torch.equal(store.load(c, 3, CPU)["residual"], _update(c, dim).delta - decoded[c])
    exact = sum(weights[c] * _update(c, dim).delta for c in cohort) / sum(weights.values())
    assert float((got - exact).abs().max()) > 1e-4, "the codec is lossy: the check can fail"


@pytest.mark.parametrize("samples", [600, 700_000], ids=["float32 partial sum", "float64 throughout"])
def test_a_ranks_quantized_sum_is_the_exact_integer_sum_of_its_codes(samples):
    # 10 clients x 4 bits: 10 x 600 x 15 fits float32's integers, 10 x 700,000 x 15 does not
    dim, q, cohort = 5000, Quantize(4), range(10)
    agg = SumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, uplink=Uplink(q, 2, 3, dim))
    deltas = {c: _vector(dim, c) * (1 + c) for c in cohort}
    for c in cohort:
        agg.add(ClientUpdate(c, deltas[c], samples + c, torch.tensor(1.0), 10, 3))
    got = agg.combine(3).aggregate
    scale = max(float(d.abs().max()) for d in deltas.values())
    codes = sum((samples + c) * q.codes(deltas[c], Key(2, 3, c), scale).long() for c in cohort)
    want = q.dequantize(codes, sum(samples + c for c in cohort), scale).float()
    assert torch.equal(got, want), "exact, whichever dtype holds the partial sum"


def test_gather_gives_robust_aggregators_the_decoded_individual_updates():
    dim, q = 300, Quantize(4)
    gather = GatherAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, rows_per_rank=3, uplink=Uplink(q, 0, 0, dim))
    plain = SumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, uplink=Uplink(q, 0, 0, dim))
    for cid in range(3):
        gather.add(_update(cid, dim))
        plain.add(_update(cid, dim))
    rows = gather.rows[:, :dim]
    assert not torch.equal(rows[0], _update(0, dim).delta), "rows hold what the server decoded"
    torch.testing.assert_close(_aggregate(gather), _aggregate(plain), atol=1e-6, rtol=0)


def test_quantized_secure_aggregation_equals_quantized_plain_aggregation():
    dim, cohort, q = 500, [0, 1, 2, 3, 4], Quantize(4, rotate=True)
    plain = SumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, uplink=Uplink(q, 3, 1, dim))
    secure = SecureSumAggregator(FedAvg(), Comm(0, 1, CPU), dim, CPU, cohort, cohort, 1, frac_bits=20,
                                 uplink=Uplink(q, 3, 1, dim))
    for cid in cohort:
        plain.add(_update(cid, dim))
        secure.add(_update(cid, dim))
    a, b = plain.combine(1), secure.combine(1)
    torch.testing.assert_close(plain.pipeline.server(b.aggregate, b.counters, 1).float(),
                               plain.pipeline.server(a.aggregate, a.counters, 1), atol=1e-6, rtol=0)
    # 4-bit codes times weights <= 38 for 5 clients need 12 ring bits per entry, not 48
    assert secure.code_bits == math.ceil(math.log2(5 * 38 * 15 + 1)) == 12
    assert b.counters.uplink_bytes == 5 * (-(-dim * 12 // 8) + 10 * 6)
    assert a.counters.uplink_bytes == 5 * (dim // 2 + 4 + 40)


def test_compressors_that_are_not_sums_are_refused_with_secure_aggregation():
    with pytest.raises(ConfigError, match=r"compression.uplink='topk' is invalid: cannot be combined with "
                                          r"secagg=masking"):
        prepare(make_cfg("secagg=masking", "compression/uplink=topk"), 1)
    prepare(make_cfg("secagg=masking", "compression/uplink=quantize"), 1)


def test_random_ks_bits_are_checked_as_the_quantizers_naming_the_key():
    with pytest.raises(ConfigError, match=r"compression.uplink.bits=0 is invalid: must be an integer from 1 to 8"):
        prepare(make_cfg("compression/uplink=randk", "compression.uplink.bits=0"), 1)
    prepare(make_cfg("compression/uplink=randk", "compression.uplink.bits=8"), 1)


@pytest.mark.parametrize("override, message", [
    ("compression.uplink.bits=9", r"compression.uplink.bits=9 is invalid: must be an integer from 1 to 8"),
    ("compression.uplink.fraction=0", r"compression.uplink.fraction=0 is invalid: must be a number in \(0, 1\]"),
])
def test_bad_codec_settings_are_one_error_naming_the_key(override, message):
    group = "quantize" if "bits" in override else "topk"
    with pytest.raises(ConfigError, match=message):
        prepare(make_cfg(f"compression/uplink={group}", override), 1)
    with pytest.raises(ConfigError, match=r"compression.downlink._target_='randk' is invalid: is an uplink codec"):
        prepare(make_cfg("+compression.downlink.fraction=0.1",
                         "compression.downlink._target_=fl.compression.codecs.RandK"), 1)


SMALL = ("data=digits", "model=cnn_padded", "partition=dirichlet", "fl.num_clients=10", "fl.clients_per_round=5",
         "train.batch_size=16", "optim.lr=0.1", "fl.local_epochs=2", "fl.eval_every=1")


def _final(tmp_path, name, world_size, *overrides):
    run_dir = tmp_path / name
    summaries = fork_ranks(world_size, run_job, tmp_path, make_cfg(*SMALL, *overrides), run_dir)
    return torch.load(run_dir / "final_model.pt", weights_only=True), summaries[0], run_dir


@pytest.mark.parametrize("codec, accuracy", [
    (("compression/uplink=topk", "compression.uplink.fraction=0.05", "compression/downlink=quantize",
      "compression.downlink.bits=6"), 0.15),  # uncompressed: 0.41 after these 4 rounds; top-5% learns slower
    (("compression/uplink=quantize", "compression.uplink.rotate=true"), 0.35)], ids=["topk-ef+q6-down", "4bit-rotation"])
def test_compressed_runs_are_world_size_invariant_and_resume_exactly(tmp_path, codec, accuracy):
    ref, summary, run_dir = _final(tmp_path, "ws1", 1, "fl.rounds=4", "fl.checkpoint_every=0", *codec)
    for ws in (2, 4):
        model, _, _ = _final(tmp_path, f"ws{ws}", ws, "fl.rounds=4", "fl.checkpoint_every=0", *codec)
        for k in ref:
            torch.testing.assert_close(model[k], ref[k], rtol=0, atol=1e-5, msg=f"world size {ws}: {k}")
    full, _, _ = _final(tmp_path, "full", 2, "fl.rounds=4", "fl.checkpoint_every=2", *codec)
    _final(tmp_path, "resumed", 2, "fl.rounds=2", "fl.checkpoint_every=2", *codec)
    resumed, second, _ = _final(tmp_path, "resumed", 2, "fl.rounds=4", "fl.checkpoint_every=2", *codec)
    assert second["resumed_from_round"] == 2
    for k in full:
        assert torch.equal(full[k], resumed[k]), f"{k}: resumed with the codec's state must equal uninterrupted"
    final = summary["final"]
    dense = 4 * 5 * sum(v.numel() for v in ref.values())
    assert final["uplink_bytes"] < dense / 4 and final["comm_bytes"] == final["uplink_bytes"] + final["downlink_bytes"]
    assert final["test_accuracy"] > accuracy, "a compressed run still learns (chance: 0.1)"


def test_residuals_held_in_memory_are_written_at_checkpoints_and_resume_exactly(tmp_path):
    from fl.training.cohort import sample_cohort

    codec = ("compression/uplink=topk", "compression.uplink.fraction=0.05", "fl.checkpoint_every=2")
    files, _, _ = _final(tmp_path, "files", 1, "fl.rounds=5", "fl.residual_memory_mb=0", *codec)
    full, _, run_dir = _final(tmp_path, "full", 1, "fl.rounds=5", *codec)
    _final(tmp_path, "resumed", 1, "fl.rounds=3", *codec)  # checkpoints after rounds 2 and 3
    resumed, second, _ = _final(tmp_path, "resumed", 1, "fl.rounds=5", *codec)
    assert second["resumed_from_round"] == 3
    for k in full:
        assert torch.equal(full[k], files[k]), f"{k}: residuals in memory or in files, the same run"
        assert torch.equal(full[k], resumed[k]), f"{k}: resumed from residuals written at a checkpoint"
    # on disk: only what was each client's newest residual when a checkpoint was written (after rounds 2, 4, 5)
    cohorts = [sample_cohort(0, r, 10, 5) for r in range(5)]
    assert len(list((run_dir / "client_residuals").glob("*/round_*.bin"))) >= len(set().union(*cohorts[:4]))
    for folder in (run_dir / "client_residuals").iterdir():
        cid = int(folder.name)
        for path in folder.glob("round_*.bin"):
            v = int(path.name[6:12])
            sampled_until = [r for r in range(v, 5) if cid in cohorts[r]]
            boundary = next(b for b in (2, 4, 5) if b > v)
            assert sampled_until[0] == v and (len(sampled_until) == 1 or sampled_until[1] >= boundary), (cid, v)


def test_per_site_ranks_hold_their_residuals_and_write_them_at_checkpoints(tmp_path):
    from test_tabular import _diabetes_sites

    root, _, _ = _diabetes_sites(tmp_path)
    base = ("data=csv", f"data.root='{root}'", "data.target=progression", "data.task=regression", "fl.num_clients=3",
            "model=logreg", "optim.lr=0.05", "fl.eval_every=1", "compression/uplink=topk",
            "compression.uplink.fraction=0.2", "fl.checkpoint_every=2")

    def final(name, *overrides):
        run_dir = tmp_path / name
        summaries = fork_ranks(3, run_job, tmp_path, make_cfg(*base, *overrides), run_dir)  # a clinic a rank
        return torch.load(run_dir / "final_model.pt", weights_only=True), summaries[0], run_dir

    files, _, _ = final("files", "fl.rounds=5", "fl.residual_memory_mb=0")
    held, _, run_dir = final("held", "fl.rounds=5")
    final("resumed", "fl.rounds=3")
    resumed, second, _ = final("resumed", "fl.rounds=5")
    assert second["resumed_from_round"] == 3
    for k in files:
        assert torch.equal(held[k], files[k]), f"{k}: residuals held by their ranks or in files, the same run"
        assert torch.equal(held[k], resumed[k]), f"{k}: resumed from the residuals the ranks wrote at a checkpoint"
    versions = sorted(int(p.name[6:12]) for p in (run_dir / "client_residuals").glob("*/round_*.bin"))
    assert versions == [1, 1, 1, 3, 3, 3, 4, 4, 4], "each clinic's residual, written only when a checkpoint was"


@pytest.mark.parametrize("kind", ["normal", "mostly zero", "all equal", "increasing", "one layer large"])
def test_top_k_through_a_sampled_threshold_is_the_exact_top_k(kind):
    n, k = 200_000, 2_000  # k >= 128: the sampled-threshold path
    g = torch.Generator().manual_seed(5)
    v = torch.randn(n, generator=g)
    if kind == "mostly zero":
        v[torch.rand(n, generator=g) < 0.995] = 0.0  # fewer non-zeros than k: ties at zero
    elif kind == "all equal":
        v = torch.ones(n)
    elif kind == "increasing":
        v = torch.arange(n, dtype=torch.float32)
    elif kind == "one layer large":
        v[150_000:151_000] *= 100.0  # the strided sample sees only 1 in 31 of them
    idx = top_indices(v, k)
    assert len(idx) == k and len(idx.unique()) == k and torch.equal(idx, idx.sort().values)
    expected = v.abs().topk(k).values.sort().values
    assert torch.equal(v.abs()[idx].sort().values, expected), "the k largest magnitudes, ties aside"
    kth = expected[0]
    tied = (v.abs() == kth).nonzero().squeeze(1)
    assert torch.equal(idx[v.abs()[idx] == kth], tied[:int((v.abs()[idx] == kth).sum())]), "ties go to the lower index"


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_compiled_candidate_scan_finds_what_torch_finds(threads):
    from fl.compression import topk

    v = torch.randn(100_003, generator=torch.Generator().manual_seed(threads))
    v[:10] = torch.tensor([3.0, -3.0, 2.5, -2.5, float("nan"), 0.0, 4.0, -4.0, 3.0, 3.0])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for threshold in [0.0, 1.0, 2.5, 3.0, 10.0]:
            expected = (v.abs() >= threshold).nonzero().squeeze(1)
            assert torch.equal(topk._at_least(v, threshold), expected)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dim", [1, 7, 16384, 40001, 300_001])
def test_the_rotation_keeps_every_length_and_norm(dim):
    v = _vector(dim, 3)
    x = hadamard.rotate(v, 0, 0)
    assert len(x) == dim and sum(hadamard.blocks(dim)) == dim
    assert float(x.norm()) == pytest.approx(float(v.norm()), rel=1e-5)
    torch.testing.assert_close(hadamard.unrotate(x, dim, 0, 0), v, atol=1e-5, rtol=0)


def test_a_strategys_scalars_travel_uncompressed_beside_the_compressed_model_delta():
    from fl.strategies.fednova import FedNova

    dim, fednova = 400, FedNova()
    updates = [ClientUpdate(c, _vector(dim, c) * 0.1, 20, torch.tensor(1.0), 20, 3 + c) for c in range(3)]
    plain = SumAggregator(fednova, Comm(0, 1, CPU), dim, CPU)
    for codec in (Quantize(2), TopK(0.05)):
        up = Uplink(codec, 0, 0, fednova.vector_dim(dim), head=fednova.compressible_dim(dim))
        agg = SumAggregator(fednova, Comm(0, 1, CPU), dim, CPU, uplink=up)
        for u in updates:
            agg.add(u)
            plain.add(u) if codec.name == "2bit" else None
        got = agg.combine(0)
        assert agg.pipeline.server(got.aggregate, got.counters, 0)[-1] == pytest.approx(4.0), "mean steps (3, 4, 5)"
        assert got.counters.uplink_bytes == sum(up.encode(0, fednova.client_vector(u))[1] + 40 for u in updates)
    assert _aggregate(plain)[-1] == pytest.approx(4.0)


def test_quantized_secure_aggregation_carries_a_strategys_scalars_in_fixed_point():
    from fl.strategies.fednova import FedNova

    dim, cohort, fednova = 300, [0, 1, 2], FedNova()
    up = lambda: Uplink(Quantize(4), 1, 0, fednova.vector_dim(dim), head=dim)  # noqa: E731
    plain = SumAggregator(fednova, Comm(0, 1, CPU), dim, CPU, uplink=up())
    secure = SecureSumAggregator(fednova, Comm(0, 1, CPU), dim, CPU, cohort, cohort, 0, frac_bits=20, uplink=up())
    for c in cohort:
        u = ClientUpdate(c, _vector(dim, c) * 0.1, 20, torch.tensor(1.0), 20, 3 + c)
        plain.add(u)
        secure.add(u)
    a, b = _aggregate(plain), _aggregate(secure)
    torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    assert float(b[-1]) == pytest.approx(4.0, abs=1e-5)
