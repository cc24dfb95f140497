"""The float64 reference of linear (kernelized) attention: plain sums, causal by cumulative sums.

    out_r = phi(q_r)^T S_r / (phi(q_r)^T z_r + eps),  S_r = sum_j phi(k_j) v_j^T,  z_r = sum_j phi(k_j)

over every key (non-causal) or the keys ``j <= r + q_offset`` (causal; SPEC.md alignment,
``q_offset`` defaulting to ``Nk - Nq``). A row that sees no key gets 0. The feature maps and the
favor stabilisers are defined in `attngen.spec.feature_maps`; stabilisers are detached here, which
is what the kernels' gradients mean. Differentiable: tests run torch autograd through it.
"""
from __future__ import annotations

import math

import torch

from .spec import Spec, resolve_q_offset
from .spec.feature_maps import apply_feature_map, favor_features, favor_logits, input_scale


def _features(spec: Spec, q, k):
    """(phi(q), key logits, key maxima or None): for favor the keys are left unstabilised,
    as ``u - |k'|^2/2`` with their own maxima ``max_f u`` (detached), so the caller chooses M."""
    q_mult, k_mult = input_scale(spec)
    xq, xk = q * q_mult, k * k_mult
    name = spec.feature_map.name
    if name != "favor":
        return apply_feature_map(name, xq), apply_feature_map(name, xk), None
    w = favor_features(spec, device=q.device)
    uq, hq = favor_logits(xq, w)
    uk, hk = favor_logits(xk, w)
    root = math.sqrt(spec.num_features)
    phi_q = torch.exp(uq - hq[..., None] - uq.detach().amax(-1, keepdim=True)) / root
    return phi_q, uk - hk[..., None], uk.detach().amax(-1)


def linear_reference(spec: Spec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     q_offset: int | None = None) -> torch.Tensor:
    """out (B, H, Nq, D) in float64; k and v already repeated per query head (B, H, Nk, D)."""
    nq, nk = q.shape[2], k.shape[2]
    is_favor = spec.feature_map.name == "favor"
    root = math.sqrt(spec.num_features)
    phi_q, phi_k, key_max = _features(spec, q, k)
    if nk == 0:
        return q.new_zeros(q.shape[:3] + (v.shape[-1],))
    if not spec.causal:
        if is_favor:           # one maximum over every key and feature of the (batch, head)
            top = key_max.amax(-1)[..., None, None]
            phi_k = torch.exp(phi_k - top) / root
        state = phi_k.transpose(-1, -2) @ v                        # S (B, H, m, D)
        norm = phi_k.sum(-2)                                       # z (B, H, m)
        den = (phi_q * norm[..., None, :]).sum(-1) + spec.eps
        return (phi_q @ state) / den[..., None]
    offset = resolve_q_offset(nq, nk, q_offset)
    last_key = torch.arange(nq, device=q.device) + offset          # row r sees keys 0..last_key
    seen = (last_key >= 0).to(q.dtype)                              # rows before key 0 see none
    index = last_key.clamp(0, nk - 1)
    row_scale = seen[None, None, :]
    if is_favor:
        # Row r's keys are taken with M_r, the maximum over the keys it sees. Cumulative sums
        # hold them with one shift C (the overall maximum) instead, and row r's sums are moved to
        # M_r by exp(C - M_r): exact, since exp(a - M_r) = exp(a - C) exp(C - M_r).
        top = key_max.amax(-1, keepdim=True)                       # C (B, H, 1)
        prefix_max = torch.cummax(key_max, dim=-1).values          # (B, H, Nk)
        row_max = prefix_max[..., index]                           # M_r (B, H, Nq)
        phi_k = torch.exp(phi_k - top[..., None]) / root
        row_scale = row_scale * torch.exp(top - row_max)
    states = torch.cumsum(phi_k[..., :, None] * v[..., None, :], dim=2)    # (B, H, Nk, m, D)
    norms = torch.cumsum(phi_k, dim=2)                                     # (B, H, Nk, m)
    state = states[:, :, index] * row_scale[..., None, None]
    norm = norms[:, :, index] * row_scale[..., None]
    num = torch.einsum("bhnf,bhnfd->bhnd", phi_q, state)
    den = (phi_q * norm).sum(-1) + spec.eps
    return num / den[..., None]
