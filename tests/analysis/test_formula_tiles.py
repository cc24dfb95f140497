"""Block maps of input-free mask formulas against brute force (`Spec.dense_mask`, the float64
reference's mask), and the pair counts of `attngen cost` against the dense count.

Exact (map == brute force, nothing unresolved, no refinement) for the family of
`attngen.analysis.formula_program`: hypothesis draws formula trees of affine terms in i and j,
``//`` and ``%`` by constants, min, max, abs, where, comparisons and and/or/not, at tile sizes that
do and do not divide their periods, Nq != Nk, explicit q_offset and k_offset. Sound (never FULL
or EMPTY by mistake) outside it.
"""
from __future__ import annotations

import pathlib
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attngen as A
from attngen.analysis.blockmap import block_map
from attngen.analysis.formula_program import compile_mask
from attngen.analysis.pairs import allowed_pairs
from attngen.analysis.tiles_formula import count_pairs
from attngen.spec.formula import Formula

EMPTY, PARTIAL, FULL = 0, 1, 2
SPECS_DIR = pathlib.Path(__file__).resolve().parents[2] / "specs" / "formulas"


def spec_of(mask, *, is_causal=False) -> A.Spec:
    return A.Spec(name="t", query_heads=1, kv_heads=1, head_dim=16, mask=mask, causal=is_causal)


def brute_classes(spec, nq, nk, bq, bk, q_offset=None, k_offset=0) -> torch.Tensor:
    mask = spec.dense_mask(nq, nk, q_offset, k_offset=k_offset, total_nk=k_offset + nk)
    tq, tk = -(-nq // bq), -(-nk // bk)
    allowed = torch.zeros(tq * bq, tk * bk, dtype=torch.int64)
    allowed[:nq, :nk] = mask
    exists = torch.zeros_like(allowed)
    exists[:nq, :nk] = 1
    count = allowed.view(tq, bq, tk, bk).sum((1, 3))
    total = exists.view(tq, bq, tk, bk).sum((1, 3))
    return torch.where(count == total, FULL, torch.where(count > 0, PARTIAL, EMPTY)).to(torch.int8)


def exact_map(spec, nq, nk, bq, bk, q_offset=None, k_offset=0):
    """The map with no refinement budget: exact by the formula analysis alone."""
    bm = block_map(spec, nq, nk, bq, bk, q_offset=q_offset, k_offset=k_offset, total_nk=k_offset + nk,
                   refine_budget=0)
    assert bm.unresolved == 0
    return bm.dense_classes()


# -- formula trees ----------------------------------------------------------------------------------
PERIODS = st.sampled_from([1, 2, 3, 7, 12, 32, 40, -5])
SMALL = st.integers(-3, 3)


@st.composite
def affine(draw) -> str:
    a, b, c = draw(SMALL), draw(SMALL), draw(st.integers(-40, 40))
    return f"({a}*i + {b}*j + {c})"


def arithmetic(depth: int):
    if depth == 0:
        return st.one_of(affine(), st.sampled_from(["i", "j", "(i - j)"]))
    sub = arithmetic(depth - 1)
    return st.one_of(
        sub,
        st.builds(lambda x, m: f"({x} // {m})", sub, PERIODS),
        st.builds(lambda x, m: f"({x} % {m})", sub, PERIODS),
        st.builds(lambda x, y: f"min({x}, {y})", sub, sub),
        st.builds(lambda x, y: f"max({x}, {y})", sub, sub),
        st.builds(lambda x: f"abs({x})", sub),
        st.builds(lambda x, y, k: f"({x} + {k}*{y})", sub, sub, SMALL),
    )


def comparison(depth: int):
    ops = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])
    return st.builds(lambda x, op, y: f"{x} {op} {y}", arithmetic(depth), ops,
                     st.one_of(arithmetic(depth), st.integers(-20, 20).map(str)))


CONDITIONS = st.recursive(
    comparison(2),
    lambda sub: st.one_of(
        st.builds(lambda a, b: f"({a}) and ({b})", sub, sub),
        st.builds(lambda a, b: f"({a}) or ({b})", sub, sub),
        st.builds(lambda a: f"not ({a})", sub),
        st.builds(lambda c, x, y, k: f"where({c}, {x}, {y}) <= {k}", sub, arithmetic(1), arithmetic(1),
                  st.integers(-10, 10)),
    ),
    max_leaves=3)

TILES = st.sampled_from([(16, 16), (32, 32), (48, 48), (64, 64), (16, 64), (64, 32), (12, 20)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=CONDITIONS, tiles=TILES, nq=st.integers(1, 150), nk=st.integers(1, 150),
       q_offset=st.one_of(st.none(), st.integers(-40, 90)), k_offset=st.sampled_from([0, 0, 37]))
def test_block_maps_equal_brute_force(text, tiles, nq, nk, q_offset, k_offset):
    spec = spec_of(text)
    assert compile_mask(spec.effective_mask) is not None, text
    got = exact_map(spec, nq, nk, *tiles, q_offset, k_offset)
    want = brute_classes(spec, nq, nk, *tiles, q_offset, k_offset)
    assert torch.equal(got, want), (text, (got != want).nonzero().tolist()[:5])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=CONDITIONS, nq=st.integers(1, 200), nk=st.integers(1, 200),
       q_offset=st.one_of(st.none(), st.integers(-40, 90)))
def test_pair_counts_equal_the_dense_count(text, nq, nk, q_offset):
    spec = spec_of(text)
    want = int(spec.dense_mask(nq, nk, q_offset).sum())
    assert allowed_pairs(spec, nq, nk, q_offset) == want, text
    offset = nk - nq if q_offset is None else q_offset
    for block in (7, 32):
        assert count_pairs(compile_mask(spec.effective_mask), nq, nk, offset, block=block) == want


@pytest.mark.parametrize("tiles", [(16, 16), (32, 32), (48, 48), (64, 64), (64, 32), (20, 28)])
@pytest.mark.parametrize("text", [
    "abs(i // 32 - j // 32) <= 3 and abs(i % 32 - j % 32) <= 3",      # NATTEN 2-D, 32-wide grid
    "abs(i // 12 - j // 12) <= 1 and abs(i % 12 - j % 12) <= 2",      # a 12-wide grid
    "(i - j) % 7 == 0 and j <= i",                                     # dilated causal
    "i // 7 == j // 7 or j % 12 >= 10",                                # blocks | summary columns
    "(3*i + 2*j) // 5 % 4 == 1 or min(i, 2*j) > max(40, i - j)",
], ids=["natten32", "natten12", "dilated7", "blocks7-columns12", "mixed"])
def test_named_formulas_at_tiles_that_do_and_do_not_divide_the_periods(text, tiles):
    spec = spec_of(text)
    for nq, nk, q_offset in ((200, 200, None), (130, 257, None), (150, 90, 33)):
        assert torch.equal(exact_map(spec, nq, nk, *tiles, q_offset),
                           brute_classes(spec, nq, nk, *tiles, q_offset)), (text, nq, nk)


def test_formulas_with_causal_and_leaves_are_exact_without_refinement():
    for mask, is_causal in ((A.expr("abs(i // 16 - j // 16) <= 1 and abs(i % 16 - j % 16) <= 2"), True),
                            (A.band(5) | A.expr("j % 9 == 0"), False),
                            (A.blocks(10) | A.columns(16, 3), True),
                            (~A.expr("(i + j) % 3 == 0") & ~A.global_tokens(2), False)):
        spec = spec_of(mask, is_causal=is_causal)
        assert torch.equal(exact_map(spec, 140, 170, 16, 32, 11), brute_classes(spec, 140, 170, 16, 32, 11))


def test_no_pair_is_evaluated_one_by_one(monkeypatch):
    """The family is decided by the program's own steps: the predicate's `evaluate` (what refining
    and brute force call) is never reached."""
    spec = spec_of("abs(i // 32 - j // 32) <= 3 and abs(i % 32 - j % 32) <= 3")
    want = brute_classes(spec, 300, 300, 32, 32)
    pairs = int(spec.dense_mask(300, 300).sum())

    def refuse(*args, **kwargs):
        raise AssertionError("a formula in the family was evaluated pair by pair")

    monkeypatch.setattr(Formula, "evaluate", refuse)
    assert torch.equal(block_map(spec, 300, 300, 32, 32).dense_classes(), want)
    assert allowed_pairs(spec, 300, 300) == pairs


@pytest.mark.parametrize("text", ["(i * j) % 7 < 3", "i * i <= j * 40 + 100", "abs(i - j) * 0.5 <= 3"])
def test_outside_the_family_stays_sound(text):
    spec = spec_of(text)
    assert compile_mask(spec.effective_mask) is None
    want = brute_classes(spec, 120, 100, 16, 16, 5)
    bare = block_map(spec, 120, 100, 16, 16, q_offset=5, refine_budget=0)
    got = bare.dense_classes()
    assert not ((got == FULL) & (want != FULL)).any() and not ((got == EMPTY) & (want != EMPTY)).any()
    assert bare.unresolved > 0
    refined = block_map(spec, 120, 100, 16, 16, q_offset=5)
    assert refined.unresolved == 0 and torch.equal(refined.dense_classes(), want)


def input_free_formula_specs():
    return [s for s in A.load_specs(SPECS_DIR)
            if s.kind == "softmax" and any(isinstance(p, Formula) for p in s.effective_mask.walk())
            and not s.mask_needs_heads]


def test_shipped_input_free_formula_specs_are_exact():
    specs = input_free_formula_specs()
    assert [s.name for s in specs] == ["natten_2d"]
    for spec in specs:
        for nq, nk, q_offset, tiles in ((1100, 1100, None, (64, 64)), (700, 1500, None, (128, 64)),
                                        (333, 400, 17, (16, 32))):
            assert torch.equal(exact_map(spec, nq, nk, *tiles, q_offset),
                               brute_classes(spec, nq, nk, *tiles, q_offset))


def test_a_long_natten_map_builds_fast():
    """No O(Nq x Nk) step: 262,144 positions (4,096 x 4,096 tiles of 64) in well under the time a
    pass over every pair would take."""
    spec = spec_of("abs(i // 32 - j // 32) <= 3 and abs(i % 32 - j % 32) <= 3")
    block_map(spec, 4096, 4096, 64, 64)
    start = time.process_time()                 # CPU time: CI shares its cores
    bm = block_map(spec, 1 << 18, 1 << 18, 64, 64)
    assert time.process_time() - start < 5.0   # about 0.15 s on an idle core
    assert bm.unresolved == 0 and bm.num_partial == 20474 and bm.num_full == 0


def test_a_where_nested_in_a_condition():
    """sympy writes it as ITE(c, a, b): the evaluator, the printer and the analysis all read it."""
    text = "where(where(0 < i, 0, i) <= 0, 0, i) <= 0 and where(j % 3 == 0, i - j, j - i) < 5"
    spec = spec_of(text)
    python = torch.tensor([[((0 if (0 if 0 < i else i) <= 0 else i) <= 0) and ((i - j if j % 3 == 0 else j - i) < 5)
                            for j in range(60)] for i in range(-10, 40)])
    assert torch.equal(spec.dense_mask(50, 60, -10), python)
    assert torch.equal(exact_map(spec, 50, 60, 16, 16, -10), brute_classes(spec, 50, 60, 16, 16, -10))
    assert "tl.where" in A.emit(spec)
