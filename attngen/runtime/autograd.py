"""`CompiledAttention`: a compiled spec as a callable, with autograd.

The seam every runtime piece plugs into:
- `forward_impl(q, k, v, q_offset, seg_q, seg_k)` → (out, lse); lse is None for linear kinds;
- `backward_impl(q, k, v, out, lse, dout, q_offset, seg_q, seg_k)` → (dq, dk, dv);
softmax kinds run the generated kernels of `launch.py` / `launch_backward.py`, linear kinds those of
`linear.py`. `__call__` goes through a torch.autograd.Function built on these two.
"""
from __future__ import annotations

import torch

from ..spec import Spec
from . import cache
from .launch import SoftmaxLauncher
from .launch_backward import BackwardLauncher, reference_forward


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, attn: "CompiledAttention", q, k, v, q_offset, seg_q, seg_k):
        out, lse = attn.forward_impl(q, k, v, q_offset, seg_q, seg_k)
        ctx.attn, ctx.q_offset = attn, q_offset
        ctx.save_for_backward(q, k, v, out, lse if lse is not None else out.new_empty(0), seg_q, seg_k)
        ctx.has_lse = lse is not None
        if lse is None:
            return out, out.new_empty(0)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, seg_q, seg_k = ctx.saved_tensors
        dq, dk, dv = ctx.attn.backward_impl(q, k, v, out, lse if ctx.has_lse else None, dout,
                                            ctx.q_offset, seg_q, seg_k)
        return None, dq, dk, dv, None, None, None


def select_outputs(spec: Spec, out, lse, return_lse: bool):
    """`out`, or `(out, lse)` when asked for; linear kinds have no lse to give."""
    if not return_lse:
        return out
    if spec.kind == "linear":
        raise ValueError(f"spec {spec.name!r} is linear attention: it has no lse")
    return out, lse


class CompiledAttention:
    """A spec compiled to kernels. Call it like an attention op:

        attn(q, k, v, *, q_offset=None, seg_q=None, seg_k=None, return_lse=False)
    """

    def __init__(self, spec: Spec):
        self.spec = spec
        self._launchers: dict[str, object] = {}

    def launcher(self, kind: str = "fwd"):
        if kind not in self._launchers:
            launcher = BackwardLauncher if kind == "bwd" else SoftmaxLauncher
            self._launchers[kind] = launcher(cache.generated(self.spec, kind))
        return self._launchers[kind]

    @property
    def op(self):
        """This spec as ``torch.ops.attngen.<name>`` (registered on first use)."""
        from .ops import register
        return register(self.spec)

    def compile_for(self, target: str, dtype: torch.dtype, *, kernel: str = "fwd"):
        """Ahead-of-time compilation of one kernel for a GPU target (no GPU needed)."""
        if self.spec.kind == "linear":
            from .linear import launcher_of
            return launcher_of(self).compile_for(target, dtype, kernel)
        if kernel == "decode":
            from .decode import decode_launcher
            return decode_launcher(self).compile_for(target, dtype)
        return self.launcher(kernel).compile_for(target, dtype)

    def forward_impl(self, q, k, v, q_offset=None, seg_q=None, seg_k=None):
        if self.spec.kind == "linear":
            from .linear import linear_forward
            return linear_forward(self, q, k, v, q_offset=q_offset), None
        if isinstance(q, torch.Tensor) and q.dtype == torch.float64:   # reference precision (gradcheck)
            return reference_forward(self.spec, q, k, v, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k)
        return self.launcher("fwd").forward(q, k, v, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k)

    def backward_impl(self, q, k, v, out, lse, dout, q_offset=None, seg_q=None, seg_k=None):
        if self.spec.kind == "linear":
            from .linear import linear_backward
            return linear_backward(self, q, k, v, out, dout, q_offset=q_offset)
        from .launch_backward import softmax_backward
        return softmax_backward(self, q, k, v, out, lse, dout, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k)

    def __call__(self, q, k, v, *, q_offset=None, seg_q=None, seg_k=None, return_lse=False):
        out, lse = _Attention.apply(self, q, k, v, q_offset, seg_q, seg_k)
        return select_outputs(self.spec, out, lse, return_lse)

    def __repr__(self) -> str:
        return f"CompiledAttention({self.spec.name!r}, {self.spec.kind}, {self.spec.grouping})"

    def decode(self, q, k_cache, v_cache, *, cache_seqlens=None, block_table=None, return_lse=False):
        """Attention of Nq new tokens against a KV cache (see docs/decode.md): q (B, Hq, Nq, D),
        a contiguous (B, Hkv, Nk_max, D) cache or pages (num_pages, page_size, Hkv, D) with
        `block_table` (B, max_pages) int32; token t of sequence b sits at cache_seqlens[b] - Nq + t."""
        from .decode import decode_launcher
        out, lse = decode_launcher(self).decode(q, k_cache, v_cache, cache_seqlens=cache_seqlens,
                                                block_table=block_table)
        return (out, lse) if return_lse else out
