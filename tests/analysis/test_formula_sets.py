"""Exact per-(b, h) block maps of masks whose data reads are scalars (`analysis/tiles_params.py`):
the lists built from a call's input values equal brute force (`Spec.dense_mask` with the inputs,
the float64 reference's mask) for every batch row and head, forward and transposed, at tiles that
do and do not divide the sizes, Nq != Nk, q_offset and k_offset; masks outside the family keep the
static map; the per-call work is numeric."""
from __future__ import annotations

import pytest
import torch

import attngen as A
from attngen.analysis import formula_program, tiles_params
from attngen.analysis.lowering import lower_forward
from attngen.analysis.tiles_params import scalar_reads, set_lists

EMPTY, PARTIAL, FULL = 0, 1, 2
INPUTS = {"prefix": {"shape": ["B"], "dtype": "int32"}, "window": {"shape": ["Hq"], "dtype": "int32"},
          "flag": {"shape": ["B"], "dtype": "bool"}, "lim": {"shape": ["B", "Hkv"], "dtype": "int64"},
          "far": {"shape": [3], "dtype": "int32"}}


def spec_of(mask: str) -> A.Spec:
    return A.load_spec(dict(name="sets", heads={"query": 4, "kv": 2}, head_dim=16, inputs=INPUTS, mask=mask))


def values_of(batch: int, gen) -> dict:
    return {"prefix": torch.randint(-3, 60, (batch,), generator=gen, dtype=torch.int32),
            "window": torch.tensor([0, 3, 11, 200], dtype=torch.int32),
            "flag": torch.rand(batch, generator=gen) > 0.5,
            "lim": torch.randint(0, 40, (batch, 2), generator=gen),
            "far": torch.tensor([5, -2, 30], dtype=torch.int32)}


def brute_classes(allowed: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    """int8 (T, U) classes of one (nq, nk) bool mask."""
    nq, nk = allowed.shape
    tq, tk = -(-nq // bq), -(-nk // bk)
    cells = torch.full((tq * bq, tk * bk), -1, dtype=torch.int8)
    cells[:nq, :nk] = allowed.to(torch.int8)
    tiles = cells.reshape(tq, bq, tk, bk).transpose(1, 2).reshape(tq, tk, -1)
    some, every = (tiles == 1).any(-1), (tiles != 0).all(-1)
    return torch.where(every, FULL, torch.where(some, PARTIAL, EMPTY)).to(torch.int8)


def classes_of_sets(lists, sets: int) -> torch.Tensor:
    partial_ptr, partial_idx, full_ptr, full_idx, rows = lists
    cols = int(max([0] + [int(t.max()) + 1 for t in (partial_idx, full_idx) if len(t)]))
    out = torch.zeros(sets, rows, cols + 64, dtype=torch.int8)
    for ptr, idx, value in ((partial_ptr, partial_idx, PARTIAL), (full_ptr, full_idx, FULL)):
        row = torch.repeat_interleave(torch.arange(sets * rows), (ptr[1:] - ptr[:-1]).long())
        out.view(sets * rows, -1)[row, idx.long()] = value
    return out


MASKS = [
    "j <= i or j < prefix[b]",                                   # prefix-LM per sequence: per b
    "abs(i - j) <= window[h]",                                   # per-head window: per h
    "i - j < lim[b, hk] and j <= i",                             # per (b, kv head)
    "(abs(i - j) <= window[h] and (flag[b] or j <= i)) or (j // 7 == hk and i % 3 == 0)",
    "j < far[h] + 2 * far[b + 7] or (i - j) % 5 == far[0] % 5",  # constant and out-of-range indices
    "min(j, prefix[b]) >= i // 2 - h",                           # reads inside min, floor of i
]


TILES = [(16, 16), (16, 8), (12, 20)]


# Each mask at one tile shape by default (rotating), every pair with ATTNGEN_SLOW=1.
@pytest.mark.parametrize("mask, tiles", [
    pytest.param(m, t, id=f"{m}-{t[0]}x{t[1]}", marks=() if (n + k) % 3 == 0 else pytest.mark.slow)
    for n, m in enumerate(MASKS) for k, t in enumerate(TILES)])
def test_lists_equal_brute_force_for_every_set(mask, tiles):
    spec, gen = spec_of(mask), torch.Generator().manual_seed(len(mask))
    reads = scalar_reads(spec.effective_mask)
    assert reads is not None, "the mask's reads are scalars"
    batch, bq, bk = 3, *tiles
    inputs = values_of(batch, gen)
    values = reads.values(inputs, batch=batch, query_heads=4, kv_heads=2, device="cpu")
    for nq, nk, q_offset, k_offset in ((53, 71, 9, 0), (40, 29, -5, 13), (1, 37, 36, 0)):
        dense = spec.dense_mask(nq, nk, q_offset, inputs=inputs, batch=batch, k_offset=k_offset,
                                total_nk=k_offset + nk)
        for transposed in (False, True):
            lists = set_lists(reads, values, nq, nk, q_offset, bq, bk, k_offset=k_offset, transposed=transposed)
            got = classes_of_sets(lists, len(values))
            for s in range(len(values)):
                # set s is a b and/or head (b outermost); its first (b, h) stands for all of them
                heads = 4 if "h" in reads.axes else 2 if "hk" in reads.axes else 1
                b = s // heads if "b" in reads.axes else 0
                h = (s % heads) * (1 if "h" in reads.axes else 2)
                want = brute_classes(dense[b, h], bq, bk)
                want = want.T if transposed else want
                mine = got[s, :want.shape[0], :want.shape[1]]
                assert torch.equal(mine, want), f"{mask}: set {s} (b={b}, h={h}), transposed={transposed}"
                assert not got[s, :, want.shape[1]:].any()


def test_layouts_follow_the_axes_read():
    axes = {m: scalar_reads(spec_of(m).effective_mask).axes for m in MASKS}
    assert axes[MASKS[0]] == ("b",) and axes[MASKS[1]] == ("h",) and axes[MASKS[2]] == ("b", "hk")
    assert axes[MASKS[3]] == ("b", "h") and axes[MASKS[4]] == ("b", "h")
    assert scalar_reads(spec_of("j <= i or j < far[0]").effective_mask).axes == ()


@pytest.mark.parametrize("mask", [
    "j <= i or keep[b, j]",             # a read indexed by a position: the static map
    "j <= i * window[h]",               # a read times a position
    "j // (window[h] + 1) == 0",        # a read as a divisor
    "j <= i + scale[h]",                # a float read
])
def test_reads_outside_the_family_keep_the_static_map(mask):
    spec = A.load_spec(dict(name="out", heads={"query": 4, "kv": 2}, head_dim=16, mask=mask, inputs={
        **INPUTS, "keep": {"shape": ["B", "Nk"], "dtype": "bool"}, "scale": {"shape": ["Hq"], "dtype": "float32"}}))
    assert scalar_reads(spec.effective_mask) is None
    assert lower_forward(spec).facts.get("list_sets", ()) == ()


def test_a_call_does_no_symbolic_work(monkeypatch):
    """Prepared once per spec; a call's values and lists run with sympy out of reach."""
    spec = spec_of(MASKS[3])
    reads = scalar_reads(spec.effective_mask)
    monkeypatch.setattr(tiles_params, "sympy", None)
    monkeypatch.setattr(formula_program, "sympy", None)
    values = reads.values(values_of(2, torch.Generator().manual_seed(0)), batch=2, query_heads=4, kv_heads=2,
                          device="cpu")
    lists = set_lists(reads, values, 50, 60, 10, 16, 16)
    assert lists[4] == 4 and len(lists[0]) == len(values) * 4 + 1
