"""The float64 reference: the plainest dense implementation of SPEC.md, the yardstick for kernels.

Dense on purpose: it evaluates the mask on every pair and repeats K/V per query head, so that it is
obviously right rather than fast. Kernels are never allowed to call it.
"""
from __future__ import annotations

import torch

from .errors import ShapeError
from .spec import Spec, alibi_slopes, load_spec, resolve_q_offset


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
    want_kv = (b, spec.kv_heads, nk, spec.head_dim)
    for name, t in (("k", k), ("v", v)):
        if tuple(t.shape) != want_kv:
            raise ShapeError(f"{name} has shape {tuple(t.shape)}, expected {want_kv} "
                             f"(B, Hkv, Nk, D) for spec {spec.name!r}")


def reference(spec, q, k, v, *, q_offset=None, seg_q=None, seg_k=None):
    """(out, lse) in float64. ``lse`` is (B, Hq, Nq) for the softmax kind and None for linear."""
    spec = load_spec(spec)
    check_qkv(spec, q, k, v)
    for name, seg in (("seg_q", seg_q), ("seg_k", seg_k)):
        # Batched ids must have q's batch: broadcasting (1, N) or (3, N) against B = 2 would
        # silently reuse one document layout, or fail deep inside torch without naming the tensor.
        if isinstance(seg, torch.Tensor) and seg.dim() == 2 and seg.shape[0] != q.shape[0]:
            raise ShapeError(f"{name} has shape {tuple(seg.shape)}, expected ({seg.shape[1]},) or "
                             f"(B, {seg.shape[1]}) with B = {q.shape[0]} (q's batch)")
    q64, k64, v64 = (t.detach().to(torch.float64) for t in (q, k, v))
    k64 = k64.repeat_interleave(spec.group, dim=1)
    v64 = v64.repeat_interleave(spec.group, dim=1)
    if spec.kind == "linear":
        from .reference_linear import linear_reference
        return linear_reference(spec, q64, k64, v64, q_offset=q_offset), None
    return _softmax_reference(spec, q64, k64, v64, q_offset, seg_q, seg_k)


def _softmax_reference(spec, q, k, v, q_offset, seg_q, seg_k):
    nq, nk = q.shape[2], k.shape[2]
    mask = spec.dense_mask(nq, nk, q_offset, seg_q, seg_k, device=q.device)
    if mask.dim() == 3:                       # batched segments: (B, nq, nk) → (B, 1, nq, nk)
        mask = mask.unsqueeze(1)
    scores = (q @ k.transpose(-1, -2)) * spec.softmax_scale
    if spec.softcap is not None:
        scores = spec.softcap * torch.tanh(scores / spec.softcap)
    if spec.alibi:
        offset = resolve_q_offset(nq, nk, q_offset)   # not eval_context: it wants seg_q/seg_k
        distance = (torch.arange(nq, device=q.device) + offset)[:, None] - torch.arange(nk, device=q.device)[None]
        slopes = alibi_slopes(spec.query_heads).to(q.device)
        scores = scores - slopes[:, None, None] * distance.to(torch.float64)
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)                    # -inf for rows with no allowed key
    probs = torch.where(mask, torch.exp(scores - lse.unsqueeze(-1)), torch.zeros((), dtype=q.dtype))
    probs = torch.nan_to_num(probs, nan=0.0)                 # rows with no key: -inf - -inf
    return probs @ v, lse
