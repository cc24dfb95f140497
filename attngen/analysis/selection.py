"""The pair bound of content-based selection (`select: {top, block}`): what `attngen cost` reports.

Which key blocks a query block selects depends on the data, so the pairs are bounded, not counted:
query block qb (its rows of R, the last one partial) sees at most the keys of its own blocks (those
holding one of its positions) plus the `top` largest other candidate blocks (key blocks where the
mask allows a pair of qb: the mask's block map at R x R, settled exactly; a partial last key block
holds what it has). Each of its rows sees at most those keys, so

    bound = sum over qb of rows(qb) * (keys of own blocks + keys of the top largest other candidates)

(at most top · R + own keys per query), and never more than the mask's own allowed pairs.
"""
from __future__ import annotations

import torch

from ..spec import Spec
from .blockmap import block_map

EXACT_BUDGET = 1 << 62


def selected_pairs_bound(spec: Spec, n: int, nk: int, q_offset: int, *, seg_q=None, seg_k=None) -> int:
    """The most (query, key) pairs per head and sequence a selection can allow (module docstring)."""
    block, top = spec.select.block, spec.select.top
    bm = block_map(spec, n, nk, block, block, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k,
                   refine_budget=EXACT_BUDGET)
    qb, kb = bm.num_rows, bm.num_cols
    rows = torch.full((qb,), block, dtype=torch.int64)
    rows[-1] = n - (qb - 1) * block
    last_keys = nk - (kb - 1) * block                    # keys of the last (maybe partial) block
    first = torch.arange(qb, dtype=torch.int64) * block + q_offset
    last = first + rows - 1
    lo = torch.clamp(torch.div(first, block, rounding_mode="floor"), 0, kb)          # own: lo..hi
    hi = torch.clamp(torch.div(last, block, rounding_mode="floor"), -1, kb - 1)
    own_count = torch.clamp(hi - lo + 1, min=0)
    own_keys = own_count * block - ((hi == kb - 1) & (own_count > 0)).to(torch.int64) * (block - last_keys)
    entry_rows = torch.cat([_row_of(bm.partial_ptr), _row_of(bm.full_ptr)])
    cols = torch.cat([bm.partial_idx, bm.full_idx]).to(torch.int64)
    other = (cols < lo[entry_rows]) | (cols > hi[entry_rows])
    count = torch.bincount(entry_rows[other], minlength=qb)
    last_other = torch.bincount(entry_rows[other & (cols == kb - 1)], minlength=qb)
    chosen = torch.clamp(count, max=top)
    # the top largest: full blocks first; the partial last block only when every other is taken
    other_keys = chosen * block - ((chosen == count) & (last_other > 0)).to(torch.int64) * (block - last_keys)
    return int((rows * (own_keys + other_keys)).sum())


def _row_of(ptr: torch.Tensor) -> torch.Tensor:
    counts = (ptr[1:] - ptr[:-1]).to(torch.int64)
    return torch.repeat_interleave(torch.arange(len(counts)), counts)
