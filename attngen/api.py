"""The user's entry points: `compile` a spec into a callable, `emit` its generated source.

This module sits at the end of the pipeline and may import every stage.
"""
from __future__ import annotations

import torch

from .codegen.aot import DTYPE_NAMES, STAGES, header_lines, stage_text
from .codegen.emit import generate
from .runtime.launcher import AOT_LENGTH
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
         dtype: torch.dtype = torch.float16, n: int = AOT_LENGTH, nk: int | None = None, batch: int = 1,
         page_size: int | None = None) -> str:
    """The generated source of one kernel of a spec (``stage='triton'``), or a later compiler stage
    (ttir, ttgir, llir, ptx, sass) of the kernel exactly as a launch at that shape compiles it for
    `target` (Nq = `n`, Nk = `nk`, default n; decode: `batch` sequences of `n` cached keys, paged
    when `page_size` is given), with the tile configuration attngen picks for it; no GPU needed.
    Compiled stages start with ``# config:`` and ``# resources:`` lines (one pair per kernel)."""
    spec = load_spec(spec)
    if stage == "triton":
        return generate(spec, kernel).source
    if stage not in STAGES or stage == "cubin":
        raise ValueError(f"stage must be triton or one of {', '.join(s for s in STAGES if s != 'cubin')}; "
                         f"got {stage!r}")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {list(DTYPE_NAMES)}, got {dtype}")
    for name, value in (("n", n), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    launcher = compile(spec).kernels.launcher(kernel)
    if kernel == "decode":
        shape = dict(n=n, batch=batch, paged=page_size is not None, page_size=page_size or 16, split=None)
        compiled = launcher.compile_launches(target, dtype, **shape)
        where = f"n={n} batch={batch} " + (f"page_size={page_size}" if page_size else "contiguous cache")
    else:
        compiled = launcher.compile_for(target, dtype, n=n, nk=nk)
        where = f"n={n} nk={nk or n}"
    kernels = getattr(compiled, "kernels", None) or {kernel: compiled}
    header = [f"# attngen {spec.name} {kernel} kernel, {stage} for {target} {DTYPE_NAMES[dtype]}, as launched at {where}",
              *header_lines(kernels)]
    body = "\n".join(stage_text(c, stage) if len(kernels) == 1 else f"# ---- {role}: {c.name} ----\n{stage_text(c, stage)}"
                     for role, c in kernels.items())
    return "\n".join(header) + "\n" + body
