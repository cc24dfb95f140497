"""Block maps of a (query chunk, key chunk) pair of a longer sequence (context parallelism): the
map built with `k_offset` / `total_nk` equals the brute-force classes of the whole sequence's dense
mask, cut to the chunk pair's rows and keys. Random draws are the whole sequence's, segment ids
the chunks' own."""
from __future__ import annotations

import pytest
import torch

from attngen.analysis.blockmap import block_map
from attngen.analysis.pairs import allowed_pairs
from attngen.spec import band, blocks, columns, global_tokens, random, segments, stride
from tests.analysis.test_blockmap import EMPTY, FULL, PARTIAL, check_map, spec_of

N = 150        # the whole sequence: self-attention, q_offset 0


def classes_of(mask: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    """int8 (query tiles, key tiles) of a dense bool (nq, nk) mask."""
    nq, nk = mask.shape
    tq, tk = -(-nq // bq), -(-nk // bk)
    allowed = torch.zeros(tq * bq, tk * bk, dtype=torch.int64)
    allowed[:nq, :nk] = mask
    exists = torch.zeros(tq * bq, tk * bk, dtype=torch.int64)
    exists[:nq, :nk] = 1
    count = allowed.view(tq, bq, tk, bk).sum((1, 3))
    total = exists.view(tq, bq, tk, bk).sum((1, 3))
    out = torch.full((tq, tk), EMPTY, dtype=torch.int8)
    out[count > 0] = PARTIAL
    out[count == total] = FULL
    return out


# (query rows, keys) of the whole sequence: chunks of uneven sizes, before, after, on the diagonal
CHUNK_PAIRS = [
    pytest.param((0, 40), (0, 40), id="q0-40-k0-40"),
    pytest.param((100, 150), (37, 75), id="q100-150-k37-75"),
    pytest.param((37, 75), (100, 150), id="q37-75-k100-150-after"),
    pytest.param((75, 113), (75, 113), id="diagonal-75-113"),
    pytest.param((113, 150), (0, 37), id="q113-150-k0-37"),
]
MASKS = [
    pytest.param(None, True, id="causal"),
    pytest.param(band(left=20), True, id="causal-window20"),
    pytest.param(blocks(16), False, id="blocks16"),
    pytest.param(stride(40), True, id="strided40"),
    pytest.param(columns(16, 3) | blocks(16), True, id="sparse-fixed"),
    pytest.param(band(12) | global_tokens(16) | random(2, 8, 5), False, id="bigbird"),
    pytest.param(random(1, 24, 3), True, id="causal-random24"),
]


@pytest.mark.parametrize("rows, keys", CHUNK_PAIRS)
@pytest.mark.parametrize("mask, is_causal", MASKS)
def test_chunk_pair_map_is_the_whole_maps_cut(mask, is_causal, rows, keys):
    spec = spec_of(mask, is_causal=is_causal)
    whole = spec.dense_mask(N, N, 0)
    (q0, q1), (k0, k1) = rows, keys
    want = classes_of(whole[q0:q1, k0:k1], 16, 32)
    bm = block_map(spec, q1 - q0, k1 - k0, 16, 32, q_offset=q0, k_offset=k0, total_nk=N)
    check_map(bm, want, exact=True, what=f"rows {rows} keys {keys}")
    check_map(bm.transposed(), want.T, exact=True, what="transposed")


@pytest.mark.parametrize("rows, keys", CHUNK_PAIRS)
def test_chunk_pair_map_of_documents(rows, keys):
    spec = spec_of(segments(), is_causal=True)
    seg = torch.repeat_interleave(torch.arange(5), torch.tensor([20, 45, 1, 60, 24]))
    whole = spec.dense_mask(N, N, 0, seg, seg)
    (q0, q1), (k0, k1) = rows, keys
    want = classes_of(whole[q0:q1, k0:k1], 16, 16)
    bm = block_map(spec, q1 - q0, k1 - k0, 16, 16, q_offset=q0, k_offset=k0, total_nk=N,
                   seg_q=seg[q0:q1], seg_k=seg[k0:k1])
    check_map(bm, want, exact=True, what=f"documents rows {rows} keys {keys}")


def test_random_draws_follow_the_whole_sequence():
    """A chunk's random blocks are the whole sequence's: without total_nk the draw (over fewer key
    blocks) differs, which is what total_nk is for."""
    spec = spec_of(random(2, 8, 1))
    whole = spec.dense_mask(N, N, 0)
    chunk = spec.dense_mask(40, 60, 100, k_offset=60, total_nk=N)
    assert torch.equal(chunk, whole[100:140, 60:120])
    assert not torch.equal(spec.dense_mask(40, 60, 100, k_offset=60), whole[100:140, 60:120])


@pytest.mark.parametrize("rows, keys", CHUNK_PAIRS)
@pytest.mark.parametrize("mask, is_causal", MASKS)
def test_chunk_pair_counts_are_the_whole_masks_cut(mask, is_causal, rows, keys):
    """`allowed_pairs` of a chunk pair (what `attngen cost --ranks` adds up) counts the whole
    sequence's allowed pairs in the cut, without the dense mask."""
    spec = spec_of(mask, is_causal=is_causal)
    (q0, q1), (k0, k1) = rows, keys
    want = int(spec.dense_mask(N, N, 0)[q0:q1, k0:k1].sum())
    assert allowed_pairs(spec, q1 - q0, k1 - k0, q0, k_offset=k0, total_nk=N) == want


@pytest.mark.parametrize("rows, keys", CHUNK_PAIRS)
def test_chunk_pair_counts_of_documents(rows, keys):
    spec = spec_of(segments(), is_causal=True)
    seg = torch.repeat_interleave(torch.arange(5), torch.tensor([20, 45, 1, 60, 24]))
    (q0, q1), (k0, k1) = rows, keys
    want = int(spec.dense_mask(N, N, 0, seg, seg)[q0:q1, k0:k1].sum())
    got = allowed_pairs(spec, q1 - q0, k1 - k0, q0, k_offset=k0, total_nk=N, seg_q=seg[q0:q1], seg_k=seg[k0:k1])
    assert got == want
