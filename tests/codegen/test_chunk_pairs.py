"""Kernels on (query chunk, key chunk) pairs of one sequence, with absolute positions (`q_offset`,
`k_offset`, `total_nk`): what context parallelism runs on each ring step.

The sequence (odd length) is cut into uneven chunks; every chunk pair is one ordinary call of the
forward and of the backward kernels under Triton's interpreter. Merged through lse over the key
chunks (`attngen.merge`), the forward's pairs give exactly the float64 reference's rows of the whole
sequence; summed over key chunks (dQ) and over query chunks (dK, dV), the backward's pairs given
the whole rows' out and lse give the whole sequence's gradients (torch autograd through the
reference). Random draws are the whole sequence's (`total_nk`), segment ids are cut like q/k/v.
"""
from __future__ import annotations

import pytest
import torch

import attngen
from attngen import Spec
from attngen.analysis.configs import TileConfig
from attngen.analysis.lowering_backward import BackwardConfig
from attngen.checking import GRAD_TOLERANCE, check_close
from attngen.spec import band, global_tokens, random, segments
from tests.codegen.test_backward import autograd_reference, tensors

N = 77
CUTS = (0, 23, 50, N)               # chunks of 23, 27 and 27 rows: ragged against tiles of 16
FORWARD_TILES = TileConfig(16, 16, 4, 1)
BACKWARD_TILES = BackwardConfig(TileConfig(16, 16, 4, 1), TileConfig(16, 16, 4, 1))
DOCUMENTS = torch.repeat_interleave(torch.arange(4), torch.tensor([9, 30, 1, N - 40]))

CASES = [
    pytest.param(dict(causal=True), 4, 2, id="causal-gqa"),
    pytest.param(dict(causal=True, mask=band(left=13)), 2, 2, id="sliding-window13"),
    pytest.param(dict(mask=band(6) | global_tokens(5) | random(2, 8, 3)), 2, 2, id="bigbird-random"),
    pytest.param(dict(causal=True, mask=segments()), 3, 1, id="documents-mqa"),
]


def chunks():
    return [(CUTS[n], CUTS[n + 1]) for n in range(len(CUTS) - 1)]


def segment_call(spec: Spec, rows, keys) -> dict:
    if not spec.uses_segments:
        return {}
    return dict(seg_q=DOCUMENTS[rows[0]:rows[1]], seg_k=DOCUMENTS[keys[0]:keys[1]])


def cut(t: torch.Tensor, span) -> torch.Tensor:
    return t[:, :, span[0]:span[1]]


def whole_sequence(mask, hq, hkv, rng):
    """The spec, (q, k, v, dout) of the whole sequence, its segment ids and its reference (out, lse)."""
    spec = Spec(name="chunks", query_heads=hq, kv_heads=hkv, head_dim=16, **mask)
    q, k, v, dout = tensors(spec, N, N, rng)
    whole = segment_call(spec, (0, N), (0, N))
    return spec, (q, k, v, dout), whole, attngen.reference(spec, q, k, v, q_offset=0, **whole)


@pytest.mark.parametrize("mask, hq, hkv", CASES)
def test_forward_pairs_merge_to_the_whole(mask, hq, hkv, torch_rng):
    spec, (q, k, v, _), _, (want_out, want_lse) = whole_sequence(mask, hq, hkv, torch_rng)
    launcher = attngen.compile(spec).kernels.launcher("fwd")
    for rows in chunks():
        parts = [launcher.forward(cut(q, rows), cut(k, keys), cut(v, keys), q_offset=rows[0], k_offset=keys[0],
                                  total_nk=N, config=FORWARD_TILES, **segment_call(spec, rows, keys))
                 for keys in chunks()]
        out, lse = attngen.merge([p[0] for p in parts], [p[1] for p in parts])
        check_close(f"out rows {rows}", out, cut(want_out, rows), q.dtype)
        check_close(f"lse rows {rows}", lse, want_lse[:, :, rows[0]:rows[1]], q.dtype)


@pytest.mark.parametrize("mask, hq, hkv", CASES)
def test_backward_pairs_sum_to_the_whole(mask, hq, hkv, torch_rng):
    spec, (q, k, v, dout), whole, (out, lse) = whole_sequence(mask, hq, hkv, torch_rng)
    out, lse = out.to(q.dtype), lse.to(torch.float32)
    want = autograd_reference(spec, q, k, v, dout, q_offset=0, **whole)
    launcher = attngen.compile(spec).kernels.launcher("bwd")
    dq, dk, dv = (torch.zeros_like(t) for t in (q, k, v))
    for rows in chunks():
        for keys in chunks():
            g = launcher.backward(cut(q, rows), cut(k, keys), cut(v, keys), cut(out, rows),
                                  lse[:, :, rows[0]:rows[1]], cut(dout, rows), q_offset=rows[0], k_offset=keys[0],
                                  total_nk=N, config=BACKWARD_TILES, **segment_call(spec, rows, keys))
            cut(dq, rows).add_(g[0])
            cut(dk, keys).add_(g[1])
            cut(dv, keys).add_(g[2])
    for name, got, w in zip(("dq", "dk", "dv"), (dq, dk, dv), want):
        check_close(name, got, w, q.dtype, table=GRAD_TOLERANCE)


def test_a_pair_past_the_mask_is_empty(torch_rng):
    """Causal, keys wholly after the rows: every row sees nothing (out 0, lse -inf, no NaN) and the
    gradients are 0."""
    spec = Spec(name="chunks", query_heads=2, kv_heads=2, head_dim=16, causal=True)
    q, k, v, dout = tensors(spec, N, N, torch_rng)
    kernels = attngen.compile(spec).kernels
    out, lse = kernels.launcher("fwd").forward(cut(q, (0, 23)), cut(k, (50, N)), cut(v, (50, N)), q_offset=0,
                                               k_offset=50, total_nk=N, config=FORWARD_TILES)
    assert torch.equal(out, torch.zeros_like(out)) and bool(torch.isneginf(lse).all())
    grads = kernels.launcher("bwd").backward(cut(q, (0, 23)), cut(k, (50, N)), cut(v, (50, N)), out, lse,
                                             cut(dout, (0, 23)), q_offset=0, k_offset=50, total_nk=N,
                                             config=BACKWARD_TILES)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_bad_key_offsets_are_refused(torch_rng):
    spec = Spec(name="chunks", query_heads=2, kv_heads=2, head_dim=16, causal=True)
    q, k, v, _ = tensors(spec, 20, 20, torch_rng)
    launcher = attngen.compile(spec).kernels.launcher("fwd")
    with pytest.raises(attngen.ShapeError, match="k_offset"):
        launcher.forward(q, k, v, q_offset=0, k_offset=-1)
    with pytest.raises(attngen.ShapeError, match="total_nk"):
        launcher.forward(q, k, v, q_offset=0, k_offset=10, total_nk=25)
