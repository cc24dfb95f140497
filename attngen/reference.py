"""The float64 reference: the plainest dense implementation of SPEC.md, the yardstick for kernels.

Dense on purpose: it evaluates the mask on every pair and repeats K/V per query head, so that it is
obviously right rather than fast. Kernels are never allowed to call it.
"""
from __future__ import annotations

import torch

from .errors import ShapeError
from .reference_lsh import lsh_pairs
from .reference_select import selected_pairs
from .spec import Spec, alibi_slopes, load_spec


def check_qkv(spec: Spec, q, k, v) -> None:
    """Refuse tensors that do not fit the spec, naming the tensor, its shape and the expected one."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ShapeError(f"{name} has shape {tuple(t.shape)}, expected 4 dims (B, H, N, D)")
    b, hq, nq, d = q.shape
    want_q = (b, spec.query_heads, nq, spec.head_dim)
    if tuple(q.shape) != want_q:
        raise ShapeError(f"q has shape {tuple(q.shape)}, expected (B, {spec.query_heads}, Nq, "
                         f"{spec.head_dim}) for spec {spec.name!r}")
    nk = k.shape[2]
    for name, t, dim in (("k", k, spec.head_dim), ("v", v, spec.v_head_dim)):
        want = (b, spec.kv_heads, nk, dim)
        if tuple(t.shape) != want:
            raise ShapeError(f"{name} has shape {tuple(t.shape)}, expected {want} "
                             f"(B, Hkv, Nk, {'Dv' if name == 'v' else 'D'}) for spec {spec.name!r}")


def reference(spec, q, k, v, *, q_offset=None, seg_q=None, seg_k=None, decode=False, **inputs):
    """(out, lse) in float64. ``lse`` is (B, Hq, Nq) for the softmax kind and None for linear.

    ``inputs`` are the spec's call-time inputs by name (``prefix=t``, ``sink=t``); a missing,
    unknown, wrongly shaped, typed or placed one is a `ShapeError` naming it. ``decode``: q is
    the new tokens of a decode step, one query block for `select:` (SPEC.md)."""
    spec = load_spec(spec)
    check_qkv(spec, q, k, v)
    for name, seg in (("seg_q", seg_q), ("seg_k", seg_k)):
        # Batched ids must have q's batch: broadcasting (1, N) or (3, N) against B = 2 would
        # silently reuse one document layout, or fail deep inside torch without naming the tensor.
        if isinstance(seg, torch.Tensor) and seg.dim() == 2 and seg.shape[0] != q.shape[0]:
            raise ShapeError(f"{name} has shape {tuple(seg.shape)}, expected ({seg.shape[1]},) or "
                             f"(B, {seg.shape[1]}) with B = {q.shape[0]} (q's batch)")
    if spec.kind == "linear" and inputs:
        raise ShapeError(f"unknown input {next(iter(inputs))!r}: a linear spec takes no inputs")
    q64, k64, v64 = (t.detach().to(torch.float64) for t in (q, k, v))
    k64 = k64.repeat_interleave(spec.group, dim=1)
    v64 = v64.repeat_interleave(spec.group, dim=1)
    if spec.kind == "linear":
        from .reference_linear import linear_reference
        return linear_reference(spec, q64, k64, v64, q_offset=q_offset), None
    inputs = {name: t.detach() if isinstance(t, torch.Tensor) else t for name, t in inputs.items()}
    return _softmax_reference(spec, q64, k64, v64, q_offset, seg_q, seg_k, inputs, decode=decode)


def _softmax_reference(spec, q, k, v, q_offset, seg_q, seg_k, inputs=None, *, decode=False):
    """Differentiable in q, k, v (K, V already repeated per query head) and in float inputs.

    SPEC.md's order: s = scale * q.k, softcap, alibi, the score formula, the mask (a score of
    -inf masks the pair too); then the softmax, whose denominator gains exp(sink[h]) with sinks."""
    nq, nk = q.shape[2], k.shape[2]
    ctx = spec.eval_context(nq, nk, q_offset, seg_q, seg_k, device=q.device, inputs=inputs or {},
                            batch=q.shape[0])
    mask = spec.dense_mask(nq, nk, q_offset, seg_q, seg_k, device=q.device, inputs=inputs or {},
                           batch=q.shape[0])
    if mask.dim() == 3:                       # batched segments: (B, nq, nk) → (B, 1, nq, nk)
        mask = mask.unsqueeze(1)
    if spec.select is not None:               # content-based selection (SPEC.md), k not repeated
        mask = selected_pairs(spec, q, k[:, ::spec.group], mask, ctx.q_offset, decode=decode)
    if spec.lsh is not None:                  # LSH buckets (SPEC.md), k not repeated
        mask = lsh_pairs(spec, q, k[:, ::spec.group], mask)
    ii = (torch.arange(nq, device=q.device) + ctx.q_offset)[:, None]
    jj = torch.arange(nk, device=q.device)[None]
    scores = (q @ k.transpose(-1, -2)) * spec.softmax_scale
    if spec.softcap is not None:
        scores = spec.softcap * torch.tanh(scores / spec.softcap)
    if spec.alibi:
        slopes = alibi_slopes(spec.query_heads).to(q.device)
        scores = scores - slopes[:, None, None] * (ii - jj).to(torch.float64)
    if spec.score is not None:
        scores = spec.score.evaluate(scores, ii, jj, ctx)
        mask = mask & (scores != float("-inf"))
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)                    # -inf for rows with no allowed key
    if spec.sink:
        sink = ctx.inputs["sink"].to(torch.float64)[None, :, None].expand_as(lse)
        lse = torch.logaddexp(lse, sink)                     # = sink[h] for rows with no key
    probs = torch.where(mask, torch.exp(scores - lse.unsqueeze(-1)), torch.zeros((), dtype=q.dtype))
    probs = torch.nan_to_num(probs, nan=0.0)                 # rows with no key: -inf - -inf
    return probs @ v, lse
