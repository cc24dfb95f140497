"""`AttentionKernels`: a spec's kernels and the dispatch between them.

The seam every torch operator of a spec (ops.py) calls:
- `forward_impl(q, k, v, q_offset, seg_q, seg_k, inputs)` → (out, lse); lse is None for linear kinds;
- `backward_impl(q, k, v, out, lse, dout, q_offset, seg_q, seg_k, inputs)` → (dq, dk, dv, then the
  gradient of each input with `grad: true` and of the sink, in declared order);
- `decode_impl(q, k_cache, v_cache, cache_seqlens, block_table, inputs)` → (out, lse).
`inputs` is the spec's call-time inputs by name (None: none).
Softmax kinds run the launchers of launch.py, launch_backward.py and decode.py, linear kinds those
of linear.py; float64 inputs take the reference-precision path (no kernel). Each launcher is made
once, from its generated source through the disk cache (`cache.generated`), and kept here.
"""
from __future__ import annotations

import torch

from ..spec import Spec
from . import cache, linear
from .decode import DecodeLauncher
from .launch import SoftmaxLauncher
from .launch_backward import BackwardLauncher, reference_forward, reference_gradients
from .linear import LinearLauncher
from .lsh_buckets import BucketLauncher
from .select import SelectLauncher
from .varlen import VarlenBackwardLauncher, VarlenLauncher

LAUNCHERS = {"fwd": SoftmaxLauncher, "bwd": BackwardLauncher, "decode": DecodeLauncher, "select": SelectLauncher,
             "lsh": BucketLauncher,
             "linear_fwd": LinearLauncher, "linear_bwd": LinearLauncher,
             "varlen_fwd": VarlenLauncher, "varlen_bwd": VarlenBackwardLauncher}


class AttentionKernels:
    """The launchers of one spec, made on first use and kept."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self._launchers: dict = {}
        self._lsh = None

    def lsh(self):
        """The LSH runner of an `lsh:` spec (runtime/lsh.py) over its kernel spec's launchers."""
        if self._lsh is None:
            from .lsh import LshAttention
            self._lsh = LshAttention(self.spec, self.launcher("fwd"), self.launcher("bwd"), self.launcher("lsh"))
        return self._lsh

    def launcher(self, kind: str = "fwd"):
        """The launcher of a kernel kind: fwd, bwd or decode (a linear spec's fwd and bwd are its
        linear kernels)."""
        kind = kind.removeprefix("linear_")
        launcher = self._launchers.get(kind)
        if launcher is None:
            generated = cache.generated(self.spec, kind)
            launcher = self._launchers[kind] = LAUNCHERS[generated.kind](generated)
        return launcher

    def compile_for(self, target: str, dtype: torch.dtype, *, kernel: str = "fwd"):
        """Ahead-of-time compilation of one kernel kind for a GPU target (no GPU needed)."""
        return self.launcher(kernel).compile_for(target, dtype)

    def forward_impl(self, q, k, v, q_offset=None, seg_q=None, seg_k=None, inputs=None):
        float64 = isinstance(q, torch.Tensor) and q.dtype == torch.float64     # reference precision
        if self.spec.kind == "linear":
            if float64:
                return linear.reference_forward(self.spec, q, k, v, q_offset), None
            return self.launcher("fwd").forward(q, k, v, q_offset=q_offset), None
        if float64:
            return reference_forward(self.spec, q, k, v, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k,
                                     inputs=inputs)
        if self.spec.lsh is not None:
            return self.lsh().forward(q, k, v, _offset(q, k, q_offset), inputs=inputs, seg_q=seg_q, seg_k=seg_k)
        return self.launcher("fwd").forward(q, k, v, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k, inputs=inputs)

    def backward_impl(self, q, k, v, out, lse, dout, q_offset=None, seg_q=None, seg_k=None, inputs=None, *,
                      config=None):
        """(dq, dk, dv, *input gradients), dq, dk, dv with their input's shape, dtype and layout;
        `config` picks the backward's tiles (default: by shape class)."""
        float64 = q.dtype == torch.float64
        if self.spec.kind == "linear":
            if float64:
                return linear.reference_gradients(self.spec, q, k, v, dout, q_offset)
            return self.launcher("bwd").backward(q, k, v, out, dout, q_offset=q_offset, config=config)
        if float64:
            return reference_gradients(self.spec, q, k, v, dout, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k,
                                       inputs=inputs)
        if self.spec.lsh is not None:
            return self.lsh().backward(q, k, v, out, lse, dout, _offset(q, k, q_offset), inputs=inputs,
                                       config=config, seg_q=seg_q, seg_k=seg_k)
        return self.launcher("bwd").backward(q, k, v, out, lse, dout, q_offset=q_offset, seg_q=seg_q,
                                             seg_k=seg_k, inputs=inputs, config=config)

    def varlen_forward_impl(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                            inputs=None):
        """(out (total_q, Hq, Dv), lse (Hq, total_q)) of a packed batch (runtime/varlen.py)."""
        return self.launcher("varlen_fwd").forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                                                   max_seqlen_k=max_seqlen_k, inputs=inputs)

    def varlen_backward_impl(self, q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None,
                             max_seqlen_k=None, inputs=None, *, config=None):
        return self.launcher("varlen_bwd").backward(q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k,
                                                    max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                                                    inputs=inputs, config=config)

    def decode_impl(self, q, k_cache, v_cache, cache_seqlens=None, block_table=None, inputs=None):
        if self.spec.lsh is not None:
            return self.lsh().decode(q, k_cache, v_cache, cache_seqlens, block_table, inputs=inputs)
        return self.launcher("decode").decode(q, k_cache, v_cache, cache_seqlens=cache_seqlens,
                                              block_table=block_table, inputs=inputs)


def _offset(q, k, q_offset) -> int:
    from ..spec import resolve_q_offset
    return resolve_q_offset(q.shape[2], k.shape[2], q_offset)
