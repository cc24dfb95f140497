"""The float64 reference of linear (kernelized) attention: plain sums, causal by cumulative sums
(favor causal: a scan over keys, each prefix held at its own running maximum).

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
    if is_favor:
        states, norms = _causal_favor_sums(phi_k, key_max, v, root)
    else:
        states = torch.cumsum(phi_k[..., :, None] * v[..., None, :], dim=2)    # (B, H, Nk, m, D)
        norms = torch.cumsum(phi_k, dim=2)                                     # (B, H, Nk, m)
    state = states[:, :, index] * seen[:, None, None]
    norm = norms[:, :, index] * seen[:, None]
    num = torch.einsum("bhnf,bhnfd->bhnd", phi_q, state)
    den = (phi_q * norm).sum(-1) + spec.eps
    return num / den[..., None]


def _causal_favor_sums(logits, key_max, v, root):
    """(S_j, z_j) for every key position j (B, H, Nk, m, D) and (B, H, Nk, m): the sums over keys
    0..j, every key taken at P_j, the maximum of key_max over 0..j. A row whose last visible key
    is j reads them at its M_r = P_j. A scan, so that nothing at j depends on a later key, not
    even through rounding or underflow (one shift for all keys would: a huge late key underflows
    every earlier key's features to 0, and moving them back gives 0 · inf)."""
    prefix = torch.cummax(key_max, dim=-1).values                  # P_j (B, H, Nk), detached
    state = norm = None
    states, norms = [], []
    for j in range(logits.shape[2]):
        phi = torch.exp(logits[:, :, j] - prefix[:, :, j, None]) / root        # (B, H, m)
        if j:                                   # earlier keys move from P_{j-1} to P_j (<= 1)
            rescale = torch.exp(prefix[:, :, j - 1] - prefix[:, :, j])
            state, norm = state * rescale[..., None, None], norm * rescale[..., None]
        step = phi[..., :, None] * v[:, :, j, None, :]
        state, norm = (step, phi) if j == 0 else (state + step, norm + phi)
        states.append(state)
        norms.append(norm)
    return torch.stack(states, dim=2), torch.stack(norms, dim=2)
