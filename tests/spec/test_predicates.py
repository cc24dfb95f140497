"""Each predicate's torch evaluation against its sympy meaning, brute force on tiny grids.

The two are written independently in predicates.py; here random trees of every leaf kind (and
any/all/not up to depth 3) are evaluated both ways at random sizes and alignments, including
negative query positions (more queries than keys) and explicit offsets.
"""
from __future__ import annotations

import pytest
import sympy
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from attngen import Spec, SpecError, band, blocks, causal, columns, global_tokens, random, segments, stride
from attngen.spec import (All_, Any_, Band, Blocks, Causal, Columns, GlobalTokens, Not_, Random,
                          Segments, Stride)
from attngen.spec import predicates as P
from attngen.spec import random_draw

# -- strategies -----------------------------------------------------------------------------------
small = st.integers(min_value=0, max_value=5)
bands = st.one_of(
    st.builds(Band, small, small),
    st.builds(Band, st.none(), small),
    st.builds(Band, small, st.none()),
)
leaves = st.one_of(
    st.just(Causal()),
    bands,
    st.builds(Stride, st.integers(1, 5)),
    st.integers(1, 5).flatmap(lambda every: st.builds(Columns, st.just(every), st.integers(1, every))),
    st.builds(GlobalTokens, st.integers(1, 3), st.none()),
    st.builds(GlobalTokens, st.none(),
              st.lists(st.integers(0, 12), min_size=1, max_size=3, unique=True).map(tuple)),
    st.builds(Blocks, st.integers(1, 5)),
    st.builds(Random, st.integers(1, 2), st.integers(1, 4), st.integers(0, 2**32)),
    st.just(Segments()),
)
trees = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda ps: Any_(tuple(ps))),
        st.lists(inner, min_size=1, max_size=3).map(lambda ps: All_(tuple(ps))),
        inner.map(Not_),
    ),
    max_leaves=6,
)


@st.composite
def sizes(draw):
    """(nq, nk, q_offset, seg_q, seg_k): nq may exceed nk; q_offset None (bottom-right) or explicit."""
    nq = draw(st.integers(1, 10))
    nk = draw(st.integers(1, 10))
    q_offset = draw(st.one_of(st.none(), st.integers(-8, 8)))
    seg_q = draw(st.lists(st.integers(0, 2), min_size=nq, max_size=nq))
    seg_k = draw(st.lists(st.integers(0, 2), min_size=nk, max_size=nk))
    return nq, nk, q_offset, torch.tensor(seg_q), torch.tensor(seg_k)


def depth(p) -> int:
    return 1 + max((depth(c) for c in p.children()), default=0)


# -- brute force through sympy ----------------------------------------------------------------------
def sympy_mask(pred, nq, nk, q_offset, seg_q, seg_k) -> torch.Tensor:
    """`pred.expr()` substituted at every (i, j), with the call-time functions given their meaning."""
    expr = pred.expr()

    def hit(query_block, key_block, per_row, block, seed):
        qb, kb = int(query_block), int(key_block)
        row = random_draw.draw_key_blocks(seed=int(seed), per_row=int(per_row), block=int(block),
                                          nk=nk, first_query_block=qb, num_query_blocks=1)[0]
        return sympy.Integer(int(kb in row.tolist()))

    out = torch.zeros(nq, nk, dtype=torch.bool)
    for row in range(nq):
        x = row + q_offset
        for y in range(nk):
            value = expr.subs({P.i: x, P.j: y})
            value = value.replace(P.random_hit, hit)
            value = value.replace(P.seg_q, lambda pos: sympy.Integer(int(seg_q[int(pos) - q_offset])))
            value = value.replace(P.seg_k, lambda pos: sympy.Integer(int(seg_k[int(pos)])))
            assert value in (sympy.true, sympy.false), (pred, x, y, value)
            out[row, y] = bool(value)
    return out


def context(nq, nk, q_offset, seg_q, seg_k) -> P.EvalContext:
    """Built by hand (not by Spec.eval_context) so that any tree can be evaluated, even one that
    allows nothing, which a Spec refuses."""
    def random_table(pred):
        first, count = random_draw.query_block_span(nq, q_offset, pred.block)
        return first, random_draw.draw_key_blocks(seed=pred.seed, per_row=pred.per_row,
                                                  block=pred.block, nk=nk, first_query_block=first,
                                                  num_query_blocks=count)

    return P.EvalContext(nq=nq, nk=nk, q_offset=q_offset, seg_rows=seg_q[:, None],
                         seg_cols=seg_k[None, :], random_table=random_table)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pred=trees, shape=sizes())
def test_dense_mask_matches_the_sympy_meaning(pred, shape):
    nq, nk, q_offset, seg_q, seg_k = shape
    assert depth(pred) <= 4
    # per_row above the key blocks is refused at call time (tested in test_bad_specs.py).
    assume(all(p.per_row <= random_draw.num_key_blocks(nk, p.block)
               for p in pred.walk() if isinstance(p, Random)))
    ctx = context(nq, nk, nk - nq if q_offset is None else q_offset, seg_q, seg_k)
    ii = (torch.arange(nq) + ctx.q_offset).unsqueeze(-1)
    jj = torch.arange(nk).unsqueeze(0)
    got = pred.evaluate(ii, jj, ctx)
    want = sympy_mask(pred, nq, nk, ctx.q_offset, seg_q, seg_k)
    assert torch.equal(got, want), (pred, nq, nk, ctx.q_offset)
    # The public path: a Spec normalises the tree, then dense_mask evaluates the normal form.
    try:
        spec = Spec(query_heads=1, kv_heads=1, head_dim=8, mask=pred)
    except SpecError as err:                 # refused only when the tree allows nothing at all
        assert "allows no" in str(err) and not want.any(), (pred, err)
        return
    seg = {"seg_q": seg_q, "seg_k": seg_k} if spec.uses_segments else {}
    public = spec.dense_mask(nq, nk, q_offset, **seg)
    assert torch.equal(public, want), (pred, spec.effective_mask, nq, nk, ctx.q_offset)


@pytest.mark.parametrize("pred", [
    pytest.param(Causal(), id="causal"),
    pytest.param(Band(2, 0), id="band"),
    pytest.param(Stride(3), id="stride"),
    pytest.param(Columns(4, 1), id="columns"),
    pytest.param(GlobalTokens(first=2), id="global-first"),
    pytest.param(GlobalTokens(tokens=(1, 6)), id="global-tokens"),
    pytest.param(Blocks(3), id="blocks"),
    pytest.param(Random(2, 3, 7), id="random"),
    pytest.param(Segments(), id="segments"),
])
def test_every_leaf_through_dense_mask(pred):
    """Spec.dense_mask (the public path) agrees with sympy for each leaf, nq > nk, negative i."""
    nq, nk = 9, 7                                            # q_offset defaults to -2
    seg_q, seg_k = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2]), torch.tensor([0, 0, 1, 1, 1, 2, 2])
    spec = Spec(query_heads=1, kv_heads=1, head_dim=8, mask=pred)
    seg = {"seg_q": seg_q, "seg_k": seg_k} if isinstance(pred, Segments) else {}
    got = spec.dense_mask(nq, nk, **seg)
    assert torch.equal(got, sympy_mask(pred, nq, nk, nk - nq, seg_q, seg_k))


def test_the_table_of_the_spec_on_a_small_grid():
    """A few cells written out by hand from SPEC.md, so that a shared mistake cannot hide."""
    def cell(pred, i, j, nq=8, nk=8):
        return bool(Spec(query_heads=1, kv_heads=1, head_dim=8, mask=pred).dense_mask(
            nq, nk, q_offset=0)[i, j])

    assert cell(band(left=2, right=1), 5, 3) and not cell(band(left=2, right=1), 5, 2)
    assert cell(band(left=2, right=1), 5, 6) and not cell(band(left=2, right=1), 5, 7)
    assert cell(stride(3), 7, 1) and not cell(stride(3), 7, 2)
    assert cell(columns(4, 1), 0, 3) and cell(columns(4, 1), 0, 7) and not cell(columns(4, 1), 0, 6)
    assert cell(global_tokens(2), 1, 6) and cell(global_tokens(2), 6, 1) and not cell(global_tokens(2), 6, 2)
    assert cell(global_tokens(tokens=[5]), 5, 0) and not cell(global_tokens(tokens=[5]), 4, 0)
    assert cell(blocks(3), 5, 3) and not cell(blocks(3), 5, 2)
    assert cell(causal(), 4, 4) and not cell(causal(), 4, 5)
    # Negative query positions (q_offset -3): blocks use floor division, globals need i >= 0.
    neg = Spec(query_heads=1, kv_heads=1, head_dim=8, mask=blocks(4)).dense_mask(4, 4, q_offset=-3)
    assert not neg[:3].any() and neg[3, :4].all()
    glob = Spec(query_heads=1, kv_heads=1, head_dim=8, mask=global_tokens(1)).dense_mask(3, 4, q_offset=-1)
    assert glob[0].tolist() == [True, False, False, False]   # i = -1 is no global token; j = 0 is


def test_segments_index_queries_by_row_not_position():
    spec = Spec(query_heads=1, kv_heads=1, head_dim=8, mask=segments())
    mask = spec.dense_mask(2, 4, seg_q=torch.tensor([0, 1]), seg_k=torch.tensor([0, 0, 1, 1]))
    # q_offset is 2, but seg_q[0] belongs to the first query row.
    assert mask.tolist() == [[True, True, False, False], [False, False, True, True]]


def test_random_predicate_reads_the_draw():
    spec = Spec(query_heads=1, kv_heads=1, head_dim=8, mask=random(2, 4, seed=5))
    mask = spec.dense_mask(16, 16)
    table = random_draw.draw_key_blocks(seed=5, per_row=2, block=4, nk=16, first_query_block=0,
                                        num_query_blocks=4)
    for qb in range(4):
        rows = mask[4 * qb: 4 * qb + 4]
        allowed_blocks = [kb for kb in range(4) if rows[:, 4 * kb: 4 * kb + 4].all()]
        assert allowed_blocks == table[qb].tolist()
        assert rows.sum() == 2 * 16


# -- composition operators ----------------------------------------------------------------------------
def test_operators_build_the_combinators():
    a, b = band(2), stride(3)
    assert (a | b) == Any_((a, b))
    assert (a & b) == All_((a, b))
    assert ~a == Not_(a)


@pytest.mark.parametrize("use", [
    pytest.param(lambda a, b: a and b, id="and"),
    pytest.param(lambda a, b: a or b, id="or"),
    pytest.param(lambda a, b: not a, id="not"),
    pytest.param(lambda a, b: bool(a), id="bool"),
    pytest.param(lambda a, b: b if a else a, id="if"),
])
def test_python_boolean_operators_are_refused(use):
    with pytest.raises(TypeError) as info:
        use(band(2), stride(3))
    message = str(info.value)
    assert "|" in message and "&" in message and "~" in message, message


@pytest.mark.parametrize("other", [pytest.param(True, id="bool"), pytest.param(3, id="int"),
                                   pytest.param(torch.ones(2, 2, dtype=torch.bool), id="tensor")])
def test_combining_with_a_non_predicate_is_refused(other):
    with pytest.raises(TypeError, match="predicate"):
        band(2) | other
    with pytest.raises(TypeError, match="predicate"):
        band(2) & other
