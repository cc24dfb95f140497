"""`CompiledAttention`: a compiled spec as a callable, with autograd."""
from __future__ import annotations

import torch

from ..codegen.emit import generate
from ..spec import Spec
from .launch import SoftmaxLauncher


class _SoftmaxAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, launcher: SoftmaxLauncher, q, k, v, q_offset, seg_q, seg_k):
        out, lse = launcher.forward(q, k, v, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        raise NotImplementedError("the backward kernels are not generated yet")


class CompiledAttention:
    """A spec compiled to kernels. Call it like an attention op."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self._launchers: dict[str, object] = {}

    def launcher(self, kind: str = "fwd"):
        if kind not in self._launchers:
            self._launchers[kind] = SoftmaxLauncher(generate(self.spec, kind))
        return self._launchers[kind]

    def compile_for(self, target: str, dtype: torch.dtype, *, kernel: str = "fwd"):
        return self.launcher(kernel).compile_for(target, dtype)

    def __call__(self, q, k, v, *, q_offset=None, seg_q=None, seg_k=None, return_lse=False):
        out, lse = _SoftmaxAttention.apply(self.launcher("fwd"), q, k, v, q_offset, seg_q, seg_k)
        return (out, lse) if return_lse else out

    def __repr__(self) -> str:
        return f"CompiledAttention({self.spec.name!r}, {self.spec.grouping}, mask={self.spec.effective_mask!r})"
