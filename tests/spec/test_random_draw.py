"""The random-block draw: deterministic, seed-sensitive, well formed, uniform, and independent of
how many queries (and which tiles) ask for it."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from attngen import Spec, SpecError, random
from attngen.spec.random_draw import draw_key_blocks, num_key_blocks, query_block_span


def draw(seed=0, per_row=3, block=4, nk=40, first=0, count=50):
    return draw_key_blocks(seed=seed, per_row=per_row, block=block, nk=nk, first_query_block=first,
                           num_query_blocks=count)


def test_same_seed_same_table_across_calls():
    assert torch.equal(draw(seed=7), draw(seed=7))
    assert draw(seed=7).dtype == torch.int64 and draw(seed=7).shape == (50, 3)


@pytest.mark.parametrize("tile", [1, 3, 16, 64])
def test_same_table_whatever_the_rows_asked_at_once(tile):
    """A kernel with query tiles of any size draws its rows piecewise: the rows must not change."""
    whole = draw(first=-20, count=70)
    pieces = torch.cat([draw(first=start, count=min(tile, 50 - start))
                        for start in range(-20, 50, tile)])
    assert torch.equal(pieces, whole)


def test_dense_mask_is_the_same_for_every_query_tiling():
    """Evaluating the mask for a slice of queries (explicit offset) gives that slice of the whole."""
    spec = Spec(query_heads=1, kv_heads=1, head_dim=8, mask=random(2, 4, seed=3))
    whole = spec.dense_mask(48, 48, q_offset=0)
    for start, size in [(0, 16), (16, 16), (5, 7), (44, 4), (13, 1)]:
        part = spec.dense_mask(size, 48, q_offset=start)
        assert torch.equal(part, whole[start:start + size]), (start, size)


def test_seed_changes_the_table():
    tables = [draw(seed=s) for s in (0, 1, 2, 2**31, 2**63 - 1)]
    for a, b in itertools.combinations(tables, 2):
        assert (a != b).any(dim=1).float().mean() > 0.5      # most rows differ


def test_rows_differ_between_query_blocks():
    table = draw(per_row=3, nk=64, count=200)               # 16 key blocks, C(16, 3) = 560 subsets
    distinct = {tuple(r) for r in table.tolist()}
    assert len(distinct) > 150


@pytest.mark.parametrize("per_row, block, nk", [(1, 4, 4), (3, 4, 40), (5, 2, 9), (7, 3, 21), (2, 64, 129)])
def test_rows_are_distinct_sorted_and_in_range(per_row, block, nk):
    table = draw(per_row=per_row, block=block, nk=nk, first=-30, count=100)
    blocks = num_key_blocks(nk, block)
    assert blocks == math.ceil(nk / block)
    assert table.shape == (100, per_row)
    assert (table >= 0).all() and (table < blocks).all()
    assert (table[:, 1:] > table[:, :-1]).all()             # sorted, hence distinct


def test_per_row_equal_to_the_blocks_takes_them_all():
    assert (draw(per_row=5, block=2, nk=10, count=20) == torch.arange(5)).all()


def test_per_row_above_the_blocks_is_an_error():
    with pytest.raises(SpecError) as info:
        draw(per_row=6, block=2, nk=10)
    assert info.value.value == 6 and "5" in str(info.value)


def test_marginals_are_uniform():
    """Each of n blocks is drawn with probability per_row / n: a chi-square bound, fixed seed."""
    n, per_row, rows = 12, 3, 4000
    table = draw(seed=123, per_row=per_row, block=1, nk=n, first=-1000, count=rows)
    counts = torch.bincount(table.flatten(), minlength=n).double()
    expected = rows * per_row / n
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    # 11 degrees of freedom: P(chi2 > 40) < 1e-4; a biased draw (e.g. always block 0) is far above.
    assert chi2 < 40, (chi2, counts.tolist())


def test_subsets_are_uniform():
    """Floyd's sampling gives every subset the same chance: C(5, 2) = 10 subsets."""
    n, per_row, rows = 5, 2, 5000
    table = draw(seed=9, per_row=per_row, block=1, nk=n, first=0, count=rows)
    counts = torch.zeros(n, n)
    for a, b in table.tolist():
        counts[a, b] += 1
    observed = torch.tensor([counts[a, b] for a, b in itertools.combinations(range(n), 2)])
    expected = rows / 10
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 35, (chi2, observed.tolist())                 # 9 dof: P(chi2 > 35) < 1e-4


def test_row_draw_does_not_depend_on_nq():
    """The draw of a query block depends on (seed, query block, key blocks, per_row) only."""
    a = draw(nk=40, first=0, count=10)
    b = draw(nk=40, first=3, count=4)
    assert torch.equal(a[3:7], b)
    spec = Spec(query_heads=1, kv_heads=1, head_dim=8, mask=random(2, 4, seed=1))
    short, long = spec.dense_mask(8, 40), spec.dense_mask(24, 40)   # bottom-right aligned
    assert torch.equal(short, long[-8:])


def test_row_draw_depends_on_the_number_of_key_blocks():
    """nk only matters through ceil(nk / block): 37..40 keys in blocks of 4 draw the same rows."""
    assert all(torch.equal(draw(nk=nk), draw(nk=40)) for nk in (37, 38, 39))
    assert not torch.equal(draw(nk=44), draw(nk=40))


def test_query_block_span():
    assert query_block_span(nq=8, q_offset=0, block=4) == (0, 2)
    assert query_block_span(nq=8, q_offset=2, block=4) == (0, 3)
    assert query_block_span(nq=5, q_offset=-3, block=4) == (-1, 2)
    assert query_block_span(nq=1, q_offset=-9, block=4) == (-3, 1)


def test_negative_query_blocks_are_drawn_and_differ_from_positive_ones():
    table = draw(first=-10, count=20)
    assert not torch.equal(table[:10], table[10:])
