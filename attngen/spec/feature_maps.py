"""What the feature maps of linear attention mean: elu1, relu and favor (Performer's FAVOR+).

Linear attention replaces ``softmax(q k^T) v`` by ``phi(q)^T S / (phi(q)^T z + eps)`` with
``S = sum_j phi(k_j) v_j^T`` and ``z = sum_j phi(k_j)``. This module owns the meaning of ``phi``;
the reference (`attngen.reference_linear`) and the generated kernels both follow it.

Input scaling. When a linear spec sets ``scale``, queries are multiplied by it before their
feature map: ``phi(scale * q)``. Keys are never scaled. Without ``scale`` nothing is multiplied.

elu1   ``phi(x) = elu(x) + 1`` (``x + 1`` for ``x > 0``, ``exp(x)`` otherwise), D features.
relu   ``phi(x) = max(x, 0)``, D features (the normaliser can be 0: ``eps`` keeps it finite).

favor  m positive random features (Choromanski et al., "Rethinking Attention with Performers"):

    x' = x * D^(-1/4)                          (so that phi(q)·phi(k) ≈ exp(q·k / sqrt(D)))
    u  = W x'                                   (m,)   W from `favor_features`
    phi(x) = exp(u - |x'|^2 / 2 - c) / sqrt(m)  c: a stabiliser, below

The draw W (m × D): ``ceil(m / D)`` blocks, block b = the orthonormal Q of the QR decomposition
of a D × D standard Gaussian (signs fixed so that R has a positive diagonal), rows of the blocks
stacked and cut to m; then row f is multiplied by the norm of an independent D-dimensional
standard Gaussian vector (chi-distributed, as in Performer), so every row is marginally N(0, I).
Everything is drawn in float64 on the CPU from ``torch.Generator().manual_seed(seed)``, in that
order: identical on every device. A model redraws by changing ``seed``.

Stabilisers ``c`` (they keep exp() in range; in exact arithmetic they cancel in the ratio except
against ``eps``, so they are part of the meaning):

- a query row uses its own maximum over features, ``c_q = max_f u_f``;
- keys, non-causal: one maximum over every key of the (batch, kv head) and every feature,
  ``M = max_j max_f u_jf``;
- keys, causal: query row r uses ``M_r = max over the keys j visible to r of max_f u_jf`` (a
  prefix maximum), and *every* key's features in row r's sums are taken with ``c = M_r``:
  ``S_r = sum_{j visible} exp(u_j - |k'_j|^2/2 - M_r) v_j^T / sqrt(m)``, likewise ``z_r``. So
  ``eps`` is compared with sums scaled by ``exp(-c_q - M_r)``, and nothing in row r depends on
  a later key. The chunked kernel realises this by rescaling its carried state when the running
  maximum grows (as online softmax does).

Stabilisers are constants for differentiation (detached): gradients flow through ``u`` and
``|x'|^2`` only. W is a fixed buffer: it receives no gradient.
"""
from __future__ import annotations

import math

import torch

from .spec import Spec

def _check_linear(spec: Spec) -> None:
    if spec.kind != "linear":
        raise ValueError(f"spec {spec.name!r} is {spec.kind} attention: feature maps belong to kind: linear")


def orthogonal_gaussian(m: int, d: int, *, seed: int) -> torch.Tensor:
    """Performer's orthogonal random features W (m × d), float64 on the CPU; see the module doc."""
    if m < 1 or d < 1:
        raise ValueError(f"need m >= 1 and d >= 1, got m={m}, d={d}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    blocks = []
    for _ in range(math.ceil(m / d)):
        gaussian = torch.randn(d, d, generator=gen, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(torch.float64)
        q = q * signs                                # the unique QR with R's diagonal positive
        blocks.append(q.T)                           # rows orthonormal
    rows = torch.cat(blocks, dim=0)[:m]
    norms = torch.randn(m, d, generator=gen, dtype=torch.float64).norm(dim=1)
    return rows * norms[:, None]


def favor_features(spec: Spec, device=None) -> torch.Tensor:
    """The favor draw of a linear spec: W, float64 (m, head_dim), on `device` (CPU by default).

    Depends on (m, head_dim, seed) only. The kernels receive it as float32.
    """
    _check_linear(spec)
    if spec.feature_map.name != "favor":
        raise ValueError(f"spec {spec.name!r} uses feature map {spec.feature_map.name!r}, not favor")
    w = orthogonal_gaussian(spec.num_features, spec.head_dim, seed=spec.feature_map.seed)
    return w if device is None else w.to(device)


def input_scale(spec: Spec) -> tuple[float, float]:
    """(query multiplier, key multiplier) applied before the feature map (favor's D^-1/4 included)."""
    _check_linear(spec)
    q_mult = spec.scale if spec.scale is not None else 1.0
    if spec.feature_map.name == "favor":
        pre = spec.head_dim ** -0.25
        return q_mult * pre, pre
    return q_mult, 1.0


def favor_logits(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, |x|^2 / 2) for already pre-scaled x (..., D): u = x W^T (..., m)."""
    return x @ w.T.to(x.dtype), 0.5 * (x * x).sum(-1)


def apply_feature_map(name: str, x: torch.Tensor) -> torch.Tensor:
    """elu1 or relu on already scaled inputs (favor needs its stabilisers: see reference_linear)."""
    if name == "elu1":
        return torch.nn.functional.elu(x) + 1.0
    if name == "relu":
        return torch.relu(x)
    raise ValueError(f"apply_feature_map takes elu1 or relu, got {name!r}")
