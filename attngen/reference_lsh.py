"""The float64 reference's LSH buckets (SPEC.md, "Content-based sparsity", `lsh:`): the rule applied
as written, densely, for `attngen.reference`. Kernels never call it.

    R = torch.randn(rounds, D, n // 2, generator=torch.Generator().manual_seed(seed))   float32
    bucket_r(x) = argmax([x·R[r], −x·R[r]])        (the first maximum), x in float32
    allowed(b, h, i, j) = mask(i, j) and any_r bucket_r(q[b, h, i]) == bucket_r(k[b, hk, j])

The buckets are computed in float32 from q and k as the call passed them (float64 copies of fp16,
bf16 or fp32 values convert back to float32 exactly), as the generated bucket kernel computes them
(runtime/lsh_buckets.py); the two sum x·R in different orders, so they may differ only where the
two best candidates are within float32 rounding (tests/runtime/test_lsh_buckets.py).
"""
from __future__ import annotations

import torch


def lsh_buckets(x: torch.Tensor, buckets: int, seed: int, rounds: int) -> torch.Tensor:
    """int64 (rounds, B, H, N): the bucket of every row of x (B, H, N, D) in every round."""
    rotations = torch.randn(rounds, x.shape[-1], buckets // 2, generator=torch.Generator().manual_seed(seed))
    x = x.detach().to(torch.float32)
    out = []
    for r in range(rounds):
        proj = x @ rotations[r].to(x.device)
        out.append(torch.cat([proj, -proj], dim=-1).argmax(dim=-1))
    return torch.stack(out)


def lsh_near_ties(x: torch.Tensor, buckets: int, seed: int, rounds: int) -> torch.Tensor:
    """bool (rounds, B, H, N): the rows whose bucket float32 rounding may decide. Any order of
    summing the D float32 products x_d·R_dc errs by at most D·u·Σ_d|x_d·R_dc| (u = 2**-24, to first
    order), so where the float64 margin between the best and the second-best candidate of
    [x·R, −x·R] exceeds twice that, every summation order picks the same bucket."""
    rot = torch.randn(rounds, x.shape[-1], buckets // 2, generator=torch.Generator().manual_seed(seed))
    x = x.detach().double()
    out = []
    for r in range(rounds):
        rot_r = rot[r].double().to(x.device)
        proj = x @ rot_r
        top2 = torch.cat([proj, -proj], -1).topk(2, dim=-1).values
        bound = 2 * x.shape[-1] * 2.0 ** -24 * (x.abs() @ rot_r.abs()).amax(-1)
        out.append(top2[..., 0] - top2[..., 1] <= bound * 1.01)
    return torch.stack(out)


def lsh_pairs(spec, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """bool (B, Hq, Nq, Nk): `mask` (broadcastable to that) AND some round puts q[b, h, i] and
    k[b, hk, j] in one bucket. `q` is (B, Hq, Nq, D), `k` (B, Hkv, Nk, D), not repeated."""
    lsh = spec.lsh
    bq = lsh_buckets(q, lsh.buckets, lsh.seed, lsh.rounds)                           # (R, B, Hq, Nq)
    bk = lsh_buckets(k, lsh.buckets, lsh.seed, lsh.rounds).repeat_interleave(spec.group, dim=2)
    same = (bq[..., :, None] == bk[..., None, :]).any(dim=0)                           # (B, Hq, Nq, Nk)
    return mask & same
