"""Block maps against a brute-force classification from `Spec.dense_mask`.

Two properties: never FULL or EMPTY by mistake (always, whatever the budget), and exact where the
module claims it: every map at these sizes with the default refinement budget, and the structural
forms of `attngen.analysis.blockmap`'s docstring with no refinement at all (``refine_budget=0``).
"""
from __future__ import annotations

import time

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from attngen import ShapeError, Spec, SpecError
from attngen.analysis import tiles_tables
from attngen.analysis.blockmap import block_map
from attngen.spec import (All_, Any_, Not_, band, blocks, causal, columns, global_tokens, random,
                          segments, stride)

EMPTY, PARTIAL, FULL = 0, 1, 2


def spec_of(mask=None, *, is_causal=False) -> Spec:
    return Spec(name="t", query_heads=2, kv_heads=1, head_dim=16, mask=mask, causal=is_causal)


def brute_classes(spec, nq, nk, bq, bk, q_offset=None, seg_q=None, seg_k=None) -> torch.Tensor:
    """int8 (query tiles, key tiles) from the dense mask; batched segments: valid for every row."""
    mask = spec.dense_mask(nq, nk, q_offset, seg_q, seg_k)
    mask = mask[None] if mask.dim() == 2 else mask
    tq, tk = -(-nq // bq), -(-nk // bk)
    allowed = torch.zeros(mask.shape[0], tq * bq, tk * bk, dtype=torch.int64)
    allowed[:, :nq, :nk] = mask
    exists = torch.zeros(tq * bq, tk * bk, dtype=torch.int64)
    exists[:nq, :nk] = 1
    count = allowed.view(-1, tq, bq, tk, bk).sum((2, 4))
    total = exists.view(tq, bq, tk, bk).sum((1, 3))
    out = torch.full((tq, tk), EMPTY, dtype=torch.int8)
    out[(count > 0).any(0)] = PARTIAL
    out[(count == total).all(0)] = FULL
    return out


def check_never_wrong(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    wrong_full = (got == FULL) & (want != FULL)
    wrong_empty = (got == EMPTY) & (want != EMPTY)
    assert not wrong_full.any(), f"{what}: FULL by mistake at {wrong_full.nonzero().tolist()[:5]}"
    assert not wrong_empty.any(), f"{what}: EMPTY by mistake at {wrong_empty.nonzero().tolist()[:5]}"


def check_map(bm, want: torch.Tensor, *, exact: bool, what: str) -> None:
    got = bm.dense_classes()
    check_never_wrong(got, want, what)
    assert bm.num_full == int((got == FULL).sum()) and bm.num_partial == int((got == PARTIAL).sum())
    assert bm.num_empty == int((got == EMPTY).sum())
    for ptr, idx in ((bm.partial_ptr, bm.partial_idx), (bm.full_ptr, bm.full_idx)):
        assert ptr.dtype == torch.int32 and idx.dtype == torch.int32 and len(ptr) == bm.num_rows + 1
        rows = torch.repeat_interleave(torch.arange(bm.num_rows), (ptr[1:] - ptr[:-1]).long())
        ascending = (idx[1:] > idx[:-1]) | (rows[1:] != rows[:-1])
        assert bool(ascending.all()), f"{what}: a row is not ascending"
    if exact:
        assert bm.unresolved == 0, f"{what}: {bm.unresolved} tiles unresolved"
        diff = (got != want).nonzero().tolist()
        assert not diff, f"{what}: conservative PARTIAL at {diff[:5]} (want {want[tuple(diff[0])]})"


# Geometries: (nq, nk, block_q, block_k, q_offset). Sizes not multiples of the tiles, BQ != BK,
# nq != nk both ways, default / negative / positive offsets, queries wholly past the keys.
GEOMETRIES = [
    pytest.param((64, 64, 16, 16, None), id="64x64-t16"),
    pytest.param((100, 100, 32, 32, None), id="100x100-t32"),
    pytest.param((70, 130, 16, 32, None), id="70x130-t16x32"),
    pytest.param((130, 70, 32, 16, None), id="130x70-t32x16-negoffset"),
    pytest.param((90, 90, 64, 16, -40), id="90x90-t64x16-off-40"),
    pytest.param((77, 50, 16, 64, 25), id="77x50-t16x64-off25"),
    pytest.param((200, 150, 64, 32, None), id="200x150-t64x32"),
    pytest.param((33, 97, 32, 16, 200), id="33x97-t32x16-off200"),
]

# (mask, causal, structurally exact: no refinement needed)
SPECS = [
    pytest.param(None, False, True, id="no-mask"),
    pytest.param(None, True, True, id="causal"),
    pytest.param(band(5), False, True, id="band5"),
    pytest.param(band(left=7), True, True, id="causal-window7"),
    pytest.param(band(right=3), False, True, id="band-right3"),
    pytest.param(blocks(12), False, True, id="blocks12"),
    pytest.param(blocks(16), True, True, id="causal-blocks16"),
    pytest.param(band(3) & blocks(10), False, True, id="band-and-blocks"),
    pytest.param(stride(5), False, True, id="stride5"),
    pytest.param(stride(40), False, True, id="stride40-sparse-candidates"),
    pytest.param(columns(7, 2), False, True, id="columns7x2"),
    pytest.param(columns(40, 5), False, True, id="columns40x5"),
    pytest.param(global_tokens(3), False, True, id="global-first3"),
    pytest.param(global_tokens(20), False, True, id="global-first20"),
    pytest.param(global_tokens(tokens=[3, 40, 41, 100]), False, True, id="global-tokens"),
    pytest.param(random(2, 8, 1), False, True, id="random2x8"),
    pytest.param(random(1, 24, 3), False, True, id="random1x24"),
    pytest.param(band(left=16) | stride(16), True, True, id="sparse-strided"),
    pytest.param((band(4) | stride(6)) & ~band(1), False, True, id="d-only-combo"),
    pytest.param(~(stride(3) | stride(5)) & band(left=30), False, True, id="d-only-not"),
    pytest.param(~band(3), False, True, id="not-band"),
    pytest.param(columns(8, 2) | columns(12, 1), False, True, id="j-only-combo"),
    pytest.param(band(20) | global_tokens(2), False, False, id="longformer"),
    pytest.param(band(20) | global_tokens(2), True, False, id="causal-longformer"),
    pytest.param(band(12) | global_tokens(16) | random(2, 8), False, False, id="bigbird"),
    pytest.param(blocks(16) | columns(16, 3), True, False, id="sparse-fixed"),
    pytest.param(blocks(10) | columns(16, 3), True, False, id="sparse-fixed-misaligned"),
    pytest.param(~stride(4), True, False, id="causal-not-stride"),
    pytest.param(~global_tokens(3), False, True, id="not-global"),
    pytest.param(~blocks(8) | band(2), False, False, id="not-blocks-or-band"),
    pytest.param(blocks(16) & stride(3), False, False, id="blocks-and-stride"),
    pytest.param(columns(8, 2) & band(30), False, False, id="columns-and-band"),
    pytest.param(random(2, 8), True, False, id="causal-random"),
    pytest.param(global_tokens(tokens=[5, 6]) & ~band(2), False, False, id="global-and-not-band"),
]


@pytest.mark.parametrize("mask, is_causal, structural", SPECS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_map_matches_brute_force(mask, is_causal, structural, geometry):
    nq, nk, bq, bk, q_offset = geometry
    spec = spec_of(mask, is_causal=is_causal)
    want = brute_classes(spec, nq, nk, bq, bk, q_offset)
    check_map(block_map(spec, nq, nk, bq, bk, q_offset=q_offset), want, exact=True, what="refined")
    bare = block_map(spec, nq, nk, bq, bk, q_offset=q_offset, refine_budget=0)
    check_map(bare, want, exact=structural, what="structural")


@pytest.mark.parametrize("mask, is_causal, structural", SPECS[:12] + SPECS[17:25])
def test_transposed_is_brute_force_transposed(mask, is_causal, structural):
    nq, nk, bq, bk = 130, 70, 32, 16
    spec = spec_of(mask, is_causal=is_causal)
    bm = block_map(spec, nq, nk, bq, bk)
    by_key = bm.transposed()
    assert by_key.by_key and by_key.num_rows == bm.num_cols and by_key.num_cols == bm.num_rows
    check_map(by_key, brute_classes(spec, nq, nk, bq, bk).T, exact=True, what="transposed")
    back = by_key.transposed()
    for name in ("partial_ptr", "partial_idx", "full_ptr", "full_idx"):
        assert torch.equal(getattr(back, name), getattr(bm, name)), name
    partial, full = by_key.tiles_of(by_key.num_rows - 1)
    classes = bm.dense_classes()[:, -1]
    assert partial == (classes == PARTIAL).nonzero().flatten().tolist()
    assert full == (classes == FULL).nonzero().flatten().tolist()


def _ranges_as_classes(ranges, num_cols) -> torch.Tensor:
    out = torch.zeros(len(ranges.first), num_cols, dtype=torch.int8)
    for r, (a, b, c, d) in enumerate(zip(*(x.tolist() for x in ranges))):
        assert a <= c <= d + 1 <= b + 1 or (a, b) == (0, -1), (r, a, b, c, d)
        out[r, a:b + 1] = PARTIAL
        out[r, c:d + 1] = FULL
    return out


@pytest.mark.parametrize("mask, is_causal", [
    pytest.param(None, True, id="causal"), pytest.param(band(left=9), True, id="window"),
    pytest.param(band(4), False, id="band"),
    pytest.param(blocks(12), False, id="blocks"), pytest.param(blocks(12), True, id="causal-blocks"),
    pytest.param(None, False, id="no-mask"),
])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_ranges_match_csr(mask, is_causal, geometry):
    nq, nk, bq, bk, q_offset = geometry
    bm = block_map(spec_of(mask, is_causal=is_causal), nq, nk, bq, bk, q_offset=q_offset)
    ranges = bm.ranges()
    assert ranges is not None and all(x.dtype == torch.int32 for x in ranges)
    assert torch.equal(_ranges_as_classes(ranges, bm.num_cols), bm.dense_classes())
    by_key = bm.transposed()
    assert torch.equal(_ranges_as_classes(by_key.ranges(), by_key.num_cols), by_key.dense_classes())


def test_ranges_are_none_for_other_specs():
    assert block_map(spec_of(band(3) | global_tokens(1)), 64, 64, 16, 16).ranges() is None


def test_rows_without_pairs_are_empty():
    # Causal with 150 queries before key 0: the first query tiles have no allowed key at all.
    spec = spec_of(None, is_causal=True)
    bm = block_map(spec, 200, 50, 16, 16, q_offset=-150)
    assert bm.tiles_of(0) == ([], []) and bm.tiles_of(5) == ([], [])
    assert [int(x[0]) for x in bm.ranges()] == [0, -1, 0, -1]
    check_map(bm, brute_classes(spec, 200, 50, 16, 16, -150), exact=True, what="causal before keys")


# -- segments ------------------------------------------------------------------------------------
def _segment_ids(gen, shape, num_ids, ordered):
    ids = torch.randint(0, num_ids, shape, generator=gen)
    return ids.sort(-1).values if ordered else ids


@pytest.mark.parametrize("is_causal", [False, True], ids=["plain", "causal"])
@pytest.mark.parametrize("batch", [None, 3], ids=["1d", "batched"])
@pytest.mark.parametrize("ordered", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("geometry", GEOMETRIES[1:5])
def test_segments(geometry, ordered, batch, is_causal, torch_rng):
    nq, nk, bq, bk, q_offset = geometry
    spec = spec_of(segments(), is_causal=is_causal)
    lead = () if batch is None else (batch,)
    for num_ids in (2, 7):
        if ordered and q_offset is None:      # self-attention layout: the queries are the last keys
            seg_k = _segment_ids(torch_rng, lead + (nk,), num_ids, True)
            seg_q = seg_k[..., max(nk - nq, 0):]
            if seg_q.shape[-1] < nq:
                seg_q = torch.cat([torch.zeros(lead + (nq - seg_q.shape[-1],), dtype=torch.int64), seg_q], -1)
        else:
            seg_q = _segment_ids(torch_rng, lead + (nq,), num_ids, ordered)
            seg_k = _segment_ids(torch_rng, lead + (nk,), num_ids, ordered) + 1
        want = brute_classes(spec, nq, nk, bq, bk, q_offset, seg_q, seg_k)
        bm = block_map(spec, nq, nk, bq, bk, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k)
        check_map(bm, want, exact=True, what="segments")
        bare = block_map(spec, nq, nk, bq, bk, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k, refine_budget=0)
        check_map(bare, want, exact=not is_causal, what="segments structural")


def test_segments_past_the_join_limit_stay_safe(monkeypatch, torch_rng):
    monkeypatch.setattr(tiles_tables, "SEGMENT_JOIN_LIMIT", 0)
    spec = spec_of(segments())
    seg_q = torch.randint(0, 9, (150,), generator=torch_rng)
    seg_k = torch.randint(3, 12, (110,), generator=torch_rng)
    want = brute_classes(spec, 150, 110, 16, 16, None, seg_q, seg_k)
    bare = block_map(spec, 150, 110, 16, 16, seg_q=seg_q, seg_k=seg_k, refine_budget=0)
    check_map(bare, want, exact=False, what="overlap bound")
    check_map(block_map(spec, 150, 110, 16, 16, seg_q=seg_q, seg_k=seg_k), want, exact=True, what="refined")


def test_segments_need_ids():
    with pytest.raises(ShapeError, match="seg_q"):
        block_map(spec_of(segments()), 64, 64, 16, 16)


# -- budget, errors, scale ---------------------------------------------------------------------
def test_budget_exhausted_stays_safe():
    # random blocks are outside the formula family (`tiles_formula`): its any with columns is
    # settled only by the refinement, here cut short
    spec = spec_of(random(1, 10, seed=3) | columns(16, 3), is_causal=True)
    want = brute_classes(spec, 200, 200, 16, 16)
    bm = block_map(spec, 200, 200, 16, 16, refine_budget=2 * 16 * 16)
    assert bm.unresolved > 0
    check_map(bm, want, exact=False, what="small budget")


@pytest.mark.parametrize("kwargs, message", [
    pytest.param(dict(block_q=0), "block_q", id="zero-tile"),
    pytest.param(dict(block_k=16.0), "block_k", id="float-tile"),
    pytest.param(dict(nq=-1), "nq", id="negative-length"),
])
def test_bad_geometry_is_refused(kwargs, message):
    args = dict(nq=64, nk=64, block_q=16, block_k=16) | kwargs
    with pytest.raises(ShapeError, match=message):
        block_map(spec_of(band(3)), **args)


def test_zero_length_gives_an_empty_map():
    bm = block_map(spec_of(band(3) | global_tokens(1)), 0, 64, 16, 16)
    assert bm.num_rows == 0 and bm.num_full == bm.num_partial == bm.num_empty == 0


def test_large_maps_never_touch_every_pair(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("dense_mask called")
    monkeypatch.setattr(Spec, "dense_mask", refuse)
    start = time.perf_counter()
    n = 1 << 20
    bm = block_map(spec_of(band(left=4096), is_causal=True), n, n, 128, 128)
    assert bm.num_partial + bm.num_full == 8192 * 33 - 32 * 33 // 2
    big = block_map(spec_of(band(96) | global_tokens(128) | random(3, 64)), 1 << 18, 1 << 18, 128, 128)
    assert big.unresolved == 0 and big.num_full + big.num_partial < 2048 * 12
    assert time.perf_counter() - start < 20


# -- random predicate trees -----------------------------------------------------------------------
LEAVES = st.one_of(
    st.builds(lambda a, b: band(left=a, right=b), st.one_of(st.none(), st.integers(0, 12)),
              st.integers(0, 12)),
    st.just(causal()),
    st.builds(blocks, st.integers(1, 20)),
    st.builds(stride, st.integers(1, 20)),
    st.integers(1, 12).flatmap(lambda s: st.builds(columns, st.just(s), st.integers(1, s))),
    st.builds(global_tokens, st.integers(1, 10)),
    st.builds(lambda t: global_tokens(tokens=sorted(t)), st.sets(st.integers(0, 60), min_size=1, max_size=4)),
    st.builds(random, st.integers(1, 2), st.integers(1, 12), st.integers(0, 3)),
    st.just(segments()),
)
TREES = st.recursive(
    LEAVES,
    lambda parts: st.one_of(st.builds(lambda p: Any_(tuple(p)), st.lists(parts, min_size=2, max_size=3)),
                            st.builds(lambda p: All_(tuple(p)), st.lists(parts, min_size=2, max_size=3)),
                            st.builds(Not_, parts)),
    max_leaves=5,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=TREES, is_causal=st.booleans(), nq=st.integers(1, 70), nk=st.integers(1, 70),
       bq=st.sampled_from([4, 8, 16]), bk=st.sampled_from([4, 8, 16]),
       q_offset=st.one_of(st.none(), st.integers(-80, 80)), batch=st.sampled_from([None, 2]),
       ordered=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_random_trees(mask, is_causal, nq, nk, bq, bk, q_offset, batch, ordered, seed):
    try:
        spec = spec_of(mask, is_causal=is_causal)
        seg = {}
        if spec.uses_segments:
            gen = torch.Generator().manual_seed(seed)
            lead = () if batch is None else (batch,)
            seg = dict(seg_q=_segment_ids(gen, lead + (nq,), 4, ordered),
                       seg_k=_segment_ids(gen, lead + (nk,), 4, ordered))
        want = brute_classes(spec, nq, nk, bq, bk, q_offset, seg.get("seg_q"), seg.get("seg_k"))
    except SpecError:
        assume(False)         # a mask that allows nothing, or more random blocks than key blocks
    bare = block_map(spec, nq, nk, bq, bk, q_offset=q_offset, refine_budget=0, **seg)
    check_map(bare, want, exact=False, what=f"structural {spec.effective_mask}")
    refined = block_map(spec, nq, nk, bq, bk, q_offset=q_offset, **seg)
    check_map(refined, want, exact=True, what=f"refined {spec.effective_mask}")
    check_map(refined.transposed(), want.T, exact=True, what="transposed")
