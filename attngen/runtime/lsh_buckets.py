"""The buckets of LSH attention (`lsh: {buckets, seed, rounds}`, SPEC.md "Content-based
sparsity"), computed by the generated bucket kernel (templates/lsh.py.jinja).

Per row x of q (per query head) or k (per kv head) and per round r: the projections x·R[r] in
float32 (full-precision products, no tf32) and the first argmax of [x·R[r], −x·R[r]]. R is drawn on
the host exactly as SPEC.md writes it and kept per (seed, D, buckets, rounds, device). The kernel
sums the D products in its own order (a dot over a padded D), not torch's, so a row whose two best
candidates differ by a few float32 ulps of the projections may take the other one than the float64
reference's float32 `x @ R`: both are the float32 rule, rounded differently
(tests/runtime/test_lsh_buckets.py counts those near-ties; they are rare on continuous data).
"""
from __future__ import annotations

import torch

from ..codegen.aot import CompiledKernels
from ..errors import ShapeError
from .launcher import KernelLauncher, cdiv, is_interpreted, meta_tensor

# rows per program: the template's tl.dot needs at least 16; under Triton's interpreter (CPU) the
# cost is per program, so it takes up to INTERPRETED_BLOCK_N rows (1,024 programs of 32 rows took
# 17 s at n 4096 x 8 heads, 8 of 4096 rows 0.7 s)
BLOCK_N = 32
INTERPRETED_BLOCK_N = 4096
_ROTATIONS: dict = {}


def rotations(lsh, head_dim: int, device) -> torch.Tensor:
    """R, float32 (rounds, D, buckets // 2) contiguous on `device`, drawn once per (seed, D,
    buckets, rounds, device)."""
    key = (lsh.seed, head_dim, lsh.buckets, lsh.rounds, torch.device(device))
    if key not in _ROTATIONS:
        if len(_ROTATIONS) > 64:
            _ROTATIONS.clear()
        _ROTATIONS[key] = lsh.rotations(head_dim, device).contiguous()
    return _ROTATIONS[key]


class BucketLauncher(KernelLauncher):
    """Runs the generated bucket kernel of one lsh spec."""

    def buckets(self, x: torch.Tensor, name: str = "x", *, rot: torch.Tensor | None = None,
                block_n: int | None = None) -> torch.Tensor:
        """int64 (rounds, B, H, N): the bucket of every row of x (B, H, N, D), any strides, float32
        or a 16-bit float, in every round (SPEC.md). `rot`: R (default the spec's; tests pass
        hand-made ones, float32 (rounds, D, buckets // 2)); `block_n`: rows per program (default
        BLOCK_N on a GPU, larger under the interpreter; tests pass the GPU's to the interpreter)."""
        spec = self.spec
        if x.dim() != 4 or x.shape[-1] != spec.head_dim:
            raise ShapeError(f"spec {spec.name!r}: {name} must be (B, H, N, {spec.head_dim}) to be hashed, "
                             f"got {tuple(x.shape)}")
        want = (spec.lsh.rounds, spec.head_dim, spec.lsh.buckets // 2)
        if rot is None:
            rot = rotations(spec.lsh, spec.head_dim, x.device)
        elif tuple(rot.shape) != want or rot.dtype != torch.float32:
            raise ShapeError(f"spec {spec.name!r}: rot must be float32 {want}, got {rot.dtype} {tuple(rot.shape)}")
        out = torch.empty((spec.lsh.rounds, *x.shape[:3]), dtype=torch.int64, device=x.device)
        if out.numel() == 0:
            return out
        interpret = is_interpreted(x.device)
        if block_n is None:
            block_n = min(INTERPRETED_BLOCK_N, max(BLOCK_N, 1 << (x.shape[2] - 1).bit_length())) if interpret \
                else BLOCK_N
        grid, args = self.bucket_launch(x.detach(), rot.contiguous(), out, block_n)
        self.launch("buckets", grid, args, num_warps=4, num_stages=1, interpret=interpret)
        return out

    def bucket_launch(self, x, rot, out, block_n: int = BLOCK_N):
        """(grid, keyword arguments) of one launch over every row of x, `block_n` rows per program."""
        batch, heads, n, _ = x.shape
        sb, sh, sn, sd = x.stride()
        args = dict(x=x, rotations=rot, out=out, stride_xb=sb, stride_xh=sh, stride_xn=sn, stride_xd=sd,
                    n=n, num_heads=heads, num_rows=batch * heads, rounds=rot.shape[0], BLOCK_N=block_n)
        return (batch * heads * cdiv(n, block_n),), args

    def compile_for(self, target: str, dtype: torch.dtype, *, n: int = 4096, nk: int | None = None):
        """The bucket kernel compiled for `target` as a launch on q at Nq = n (no GPU needed)."""
        spec = self.spec
        x = meta_tensor(1, spec.query_heads, n, spec.head_dim, dtype=dtype)
        rot = meta_tensor(spec.lsh.rounds, spec.head_dim, spec.lsh.buckets // 2, dtype=torch.float32)
        out = meta_tensor(spec.lsh.rounds, 1, spec.query_heads, n, dtype=torch.int64)
        _, args = self.bucket_launch(x, rot, out)
        return CompiledKernels({"buckets": self.compile_launch("buckets", target,
                                                               lambda _cfg: (None, args, 4, 1), None)})
