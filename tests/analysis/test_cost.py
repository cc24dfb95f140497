"""attngen.analysis.pairs and .cost: exact pair counts (against the dense mask), closed forms, FLOPs,
bytes, KV cache, and counting at a million positions without building the mask."""
from __future__ import annotations

import time

import pytest
import torch

from attngen import Spec, load_spec
from attngen.analysis import pairs as pairs_module
from attngen.analysis.cost import cost
from attngen.analysis.pairs import allowed_pairs, pairs_formula
from attngen.spec import band, causal, spec_from_dict

MASKS = {
    "band3": {"band": 3},
    "left5": {"band": {"left": 5}},
    "right2": {"band": {"right": 2}},
    "band0_4": {"band": {"left": 0, "right": 4}},
    "stride4": {"stride": {"every": 4}},
    "columns5_2": {"columns": {"every": 5, "width": 2}},
    "global_first3": {"global": {"first": 3}},
    "global_tokens": {"global": {"tokens": [0, 7, 20]}},
    "blocks6": {"blocks": {"size": 6}},
    "random": {"random": {"per_row": 2, "block": 4, "seed": 3}},
    "strided": {"any": [{"band": {"left": 3}}, {"stride": {"every": 4}}]},
    "bigbird_like": {"any": [{"band": 4}, {"global": {"first": 2}},
                             {"random": {"per_row": 1, "block": 8, "seed": 1}}]},
    "not_band": {"not": {"band": 2}},
    "not_stride_and_columns": {"all": [{"not": {"stride": {"every": 3}}},
                                       {"columns": {"every": 4, "width": 1}}]},
    "blocks_or_band_minus_tokens": {"any": [{"blocks": {"size": 5}},
                                            {"all": [{"band": 7},
                                                     {"not": {"global": {"tokens": [3, 4]}}}]}]},
    "stride_and_columns_coprime": {"all": [{"stride": {"every": 3}}, {"columns": {"every": 7, "width": 3}}]},
}
SHAPES = [(37, 37, None), (20, 45, None), (45, 20, None), (30, 30, 5), (1, 50, None), (64, 64, None)]


def _spec(mask=None, causal_=False, **extra) -> Spec:
    data = {"heads": 2, "head_dim": 8, "causal": causal_, **extra}
    if mask is not None:
        data["mask"] = mask
    return spec_from_dict(data)


@pytest.mark.parametrize("causal_", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("name", sorted(MASKS))
def test_allowed_pairs_equal_the_dense_count(name, causal_):
    spec = _spec(MASKS[name], causal_)
    for nq, nk, offset in SHAPES:
        want = int(spec.dense_mask(nq, nk, offset).sum())
        assert allowed_pairs(spec, nq, nk, offset) == want, (nq, nk, offset)


def test_unmasked_and_linear_specs_count_every_or_the_causal_pairs():
    assert allowed_pairs(_spec(), 7, 9) == 63
    linear = _spec(kind="linear", feature_map="elu1", causal_=True)
    assert allowed_pairs(linear, 40, 40) == 40 * 41 // 2
    assert allowed_pairs(linear, 10, 40) == int(linear.dense_mask(10, 40).sum())


def test_segment_ids_are_counted_exactly():
    spec = _spec({"any": [{"segments": True}, {"band": {"left": 2}}]}, causal_=True)
    seg = torch.tensor([0] * 10 + [1] * 5 + [0] * 3 + [2] * 12)
    want = int(spec.dense_mask(30, 30, None, seg, seg).sum())
    assert allowed_pairs(spec, 30, 30, seg_q=seg, seg_k=seg) == want
    seg_k = torch.tensor([5] * 10 + [1] * 20 + [0] * 10)      # a query id (7) with no key at all
    seg_q = torch.tensor([1] * 10 + [0] * 15 + [7] * 5)
    want = int(spec.dense_mask(30, 40, None, seg_q, seg_k).sum())
    assert allowed_pairs(spec, 30, 40, seg_q=seg_q, seg_k=seg_k) == want


def test_segments_without_ids_count_as_one_segment_and_say_so():
    spec = load_spec("specs/packed_documents.yaml")
    result = cost(spec, n=100)
    assert result.allowed_pairs == 100 * 101 // 2
    assert any("one segment" in note for note in result.notes)


def test_a_period_too_long_to_tabulate_falls_back_to_exact_row_chunks(monkeypatch):
    spec = _spec(MASKS["stride_and_columns_coprime"], causal_=True)
    want = int(spec.dense_mask(50, 50).sum())
    monkeypatch.setattr(pairs_module, "MAX_TABLE", 8)
    monkeypatch.setattr(pairs_module, "DENSE_CHUNK", 100)      # several chunks
    assert allowed_pairs(spec, 50, 50) == want


@pytest.mark.parametrize("mask", [band(left=128, right=0), band(7), band(left=3, right=9), band(right=4),
                                  band(left=0, right=5), causal()], ids=repr)
def test_band_formula_matches_the_dense_count(mask):
    formula = pairs_formula(mask)
    spec = Spec(query_heads=1, kv_heads=1, head_dim=8, mask=mask)
    for n in (formula.n_min, formula.n_min + 1, formula.n_min + 17):
        if n:
            assert formula.value(n) == int(spec.dense_mask(n, n).sum()), n


def test_sliding_window_formula_is_printed_in_n_and_w():
    text = str(pairs_formula(band(left=128, right=0)))
    assert text == "n*(w + 1) - w*(w + 1)/2 with w = 128: 129*n - 8256 (n >= 128)"
    assert pairs_formula(_spec(MASKS["strided"]).effective_mask) is None


def _heads_spec(kv: int) -> Spec:
    return Spec(query_heads=32, kv_heads=kv, head_dim=128, causal=True)


# L=32, H=32, D=128, n=4096, fp16: 2 * L * n * Hkv * D * 2 bytes. GQA-G names the number of kv
# heads (groups), as in the GQA paper: GQA-4 has 4 kv heads and an eighth of MHA's cache.
@pytest.mark.parametrize("kv, want", [(32, 2 << 30), (8, 512 << 20), (4, 256 << 20), (1, 64 << 20)],
                         ids=["MHA", "GQA-8", "GQA-4", "MQA"])
def test_worked_kv_cache_examples(kv, want):
    result = cost(_heads_spec(kv), n=4096, layers=32, dtype=torch.float16)
    assert result.kv_cache_bytes == want
    assert result.kv_cache_bytes_per_token == 2 * 32 * kv * 128 * 2


def test_flops_and_bytes_follow_from_the_pairs():
    spec = Spec(query_heads=4, kv_heads=2, head_dim=16, mask=band(left=3, right=0))
    result = cost(spec, n=50, nk=60, batch=3, layers=2, dtype=torch.bfloat16)
    pairs = int(spec.dense_mask(50, 60).sum())
    assert result.allowed_pairs == pairs
    assert result.flops_fwd == 4 * 16 * pairs * 4 * 3 * 2
    assert result.flops_bwd == int(2.5 * result.flops_fwd)
    per_layer = (2 * 4 * 50 * 16 + 2 * 2 * 60 * 16) * 2 + 4 * 50 * 4     # q, out, k, v; lse fp32
    assert result.bytes_min == per_layer * 3 * 2
    assert result.arithmetic_intensity == pytest.approx(result.flops_fwd / result.bytes_min)
    assert result.kv_cache_bytes == 2 * 2 * 16 * 2 * 2 * 4 * 3       # window 3: 4 tokens cached


def test_linear_kv_cache_is_the_fixed_state():
    spec = _spec(kind="linear", feature_map={"name": "favor", "features": 32}, causal_=True)
    result = cost(spec, n=1000, layers=3, batch=2)
    assert result.kv_cache_bytes_per_token == 0
    assert result.kv_cache_bytes == 2 * (32 * 8 + 32) * 4 * 3 * 2
    assert result.flops_fwd == 2 * 32 * 8 * (1000 * 2 + 1000 * 2) * 2 * 3


def test_json_fields_are_stable():
    result = cost(load_spec("specs/longformer.yaml"), n=512, layers=2)
    fields = list(result.to_dict())
    assert fields == ["spec", "kind", "n", "nk", "q_offset", "batch", "layers", "dtype", "query_heads",
                      "kv_heads", "head_dim", "allowed_pairs", "flops_fwd", "flops_bwd", "bytes_min",
                      "arithmetic_intensity", "kv_cache_bytes_per_token", "kv_cache_bytes",
                      "receptive_field", "layers_to_full_reach", "formula", "notes"]
    assert '"allowed_pairs": ' in result.to_json()


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="layers"):
        cost(_spec(), n=10, layers=0)


N = 1 << 20
MILLION = {   # spec, exact count at n = nk = N worked out by hand
    "causal": (_spec(causal_=True), N * (N + 1) // 2),
    "window": (_spec({"band": {"left": 4096}}, causal_=True), 4097 * N - 4096 * 4097 // 2),
    "longformer_global": (_spec({"any": [{"band": 256}, {"global": {"first": 2}}]}),
                          # band rows, plus the 2 global rows and columns outside the band
                          513 * N - 256 * 257 + 2 * 2 * (N - 257) - 1 - 1),
    "strided": (_spec({"any": [{"band": {"left": 1023}}, {"stride": {"every": 1024}}]}, causal_=True),
                # window of 1024 keys (fewer at the start), plus the strided keys older than it
                # (row i has i // 1024 of them: 1024 rows each of 0, 1, .., N/1024 - 1)
                1024 * N - 1023 * 1024 // 2 + 1024 * (N // 1024 - 1) * (N // 1024) // 2),
}


@pytest.mark.parametrize("name", sorted(MILLION))
def test_a_million_positions_count_exactly_and_fast_without_the_mask(name, monkeypatch):
    spec, want = MILLION[name]
    monkeypatch.setattr(Spec, "dense_mask", None)           # building the mask would fail
    start = time.process_time()
    got = allowed_pairs(spec, N, N)
    seconds = time.process_time() - start
    assert got == want
    # Loose on purpose, and CPU time rather than wall time (CI shares its cores): each answers in
    # about 0.1 s on an idle core; building the mask would take hours.
    assert seconds < 10, f"{name}: {seconds:.2f} CPU s"
