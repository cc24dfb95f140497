"""The user's entry points: `compile` a spec into a callable, `emit` its generated source.

This module sits at the end of the pipeline and may import every stage.
"""
from __future__ import annotations

import torch

from .codegen.aot import DTYPE_NAMES, STAGES
from .codegen.emit import generate
from .runtime.ops import CompiledAttention, register
from .runtime.registry import load  # noqa: F401 - re-exported: attngen.load(path) → torch ops
from .spec import load_spec


def compile(spec) -> CompiledAttention:  # noqa: A001 - the verb users expect (torch.compile)
    """A spec as a callable registered as torch operators (``torch.ops.attngen.<name>``):

        attn(q, k, v, *, q_offset=None, seg_q=None, seg_k=None, return_lse=False)

    runs compiled on CUDA tensors and under Triton's interpreter on CPU tensors, and traces whole
    under torch.compile(fullgraph=True) and torch.export from its first call. Kernels are generated
    (through the disk cache) on the first real call. Compiling the same spec again returns the same
    object.
    """
    return register(load_spec(spec))


def emit(spec, *, kernel: str = "fwd", stage: str = "triton", target: str = "sm_90",
         dtype: torch.dtype = torch.float16) -> str:
    """The generated source of one kernel of a spec (``stage='triton'``), or a later compiler stage
    (ttir, ttgir, llir, ptx) from ahead-of-time compilation for `target`, which needs no GPU."""
    spec = load_spec(spec)
    if stage == "triton":
        return generate(spec, kernel).source
    if stage not in STAGES or stage == "cubin":
        raise ValueError(f"stage must be triton or one of {', '.join(s for s in STAGES if s != 'cubin')}; "
                         f"got {stage!r}")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {list(DTYPE_NAMES)}, got {dtype}")
    compiled = compile(spec).compile_for(target, dtype, kernel=kernel)
    return compiled.asm[stage]
