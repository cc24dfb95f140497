"""The whole lowering of a linear spec: IR build, IR passes, then the passes that need analysis.

    lower_linear(spec, "fwd") = run_passes(build_forward(spec), IR_PASSES + ANALYSIS_PASSES)

The analysis passes choose the padded widths and the chunk size. The chunk size is a shape-class
decision (padded head dim, padded feature count, input dtype, architecture), never a sequence
length: a chunk's quadratic tile costs chunk² · (m + D) per step, each stored state m · D.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir.graph import Graph
from ..ir.linear import IR_PASSES, build_backward, build_forward
from ..ir.passes import run_passes
from ..spec import Spec
from .configs import ARCHS, padded_head_dim


@dataclass(frozen=True)
class ChunkConfig:
    """One launch configuration of the linear kernels: `chunk` keys (and query rows) per step."""

    chunk: int
    num_warps: int
    num_stages: int

    def __post_init__(self):
        if self.chunk < 16 or self.chunk & (self.chunk - 1):
            raise ValueError(f"chunk={self.chunk} must be a power of two >= 16 (tl.dot needs 16)")

    def as_dict(self) -> dict:
        return {"chunk": self.chunk, "num_warps": self.num_warps, "num_stages": self.num_stages}


# The interpreter runs every tile op in numpy: fewer, larger steps are faster there.
INTERPRETER_CHUNK = ChunkConfig(32, 4, 1)
# (largest padded width of the state, {kernel: (16-bit config, float32 config)}) for GPUs. Each
# kernel holds a float32 state (block_f × block_d) or loads one, beside the chunk's [chunk, chunk]
# and [chunk, width] tiles; the backward's dq and dk/dv kernels hold more tiles than the forward's,
# and float32 inputs multiply exactly (FMA, not tensor cores), which takes more registers.
# Measured for sm_80 and sm_90 at 64 × 64 (elu1, relu, favor; fp16, bf16, fp32) with Triton 3.6
# and 3.9, each kernel compiled as a launch at n = 4096 compiles it (`aot.compile_as_launched`):
# these compile with no register spills (ptxas stack frame 0); chunk 64 spills in the output and
# dq kernels; in the 16-bit backward, chunk 32 / 8 warps leaves 8 bytes of stack in elu1's dK/dV
# kernel on sm_90 under 3.6 and chunk 32 / 4 warps spills in relu's on sm_80, while chunk 16 /
# 8 warps is clean for all three maps under both versions.
# Wider states (128 × 128) still spill a little in the state and dq passes (see docs/linear.md).
_GPU_TABLE = (
    (64, {"fwd": (ChunkConfig(32, 4, 1), ChunkConfig(16, 8, 1)),
          "bwd": (ChunkConfig(16, 8, 1), ChunkConfig(16, 8, 2))}),
    (256, {"fwd": (ChunkConfig(16, 8, 1), ChunkConfig(16, 8, 1)),
           "bwd": (ChunkConfig(16, 8, 1), ChunkConfig(16, 8, 1))}),
)


def chunk_config(block_d: int, block_f: int, arch: str | None, kernel: str = "fwd",
                 dtype: torch.dtype = torch.float16) -> ChunkConfig:
    """The chunk configuration of the fwd or bwd kernels for a shape class (padded widths, input
    dtype, architecture); `arch` None means the CPU interpreter. The forward and the backward need
    not agree: each computes its own states."""
    if kernel not in ("fwd", "bwd"):
        raise ValueError(f"kernel must be 'fwd' or 'bwd', got {kernel!r}")
    if arch is None:
        return INTERPRETER_CHUNK
    width = max(block_d, block_f)
    for bound, table in _GPU_TABLE:
        if width <= bound:
            half, single = table[kernel]
            return single if dtype == torch.float32 else half
    raise ValueError(f"linear state {block_f} × {block_d} is above the largest supported (256 × 256)")


def choose_widths(g: Graph) -> Graph:
    """tl.dot needs power-of-two tiles of at least 16: pad the head dim and the feature count."""
    return g.with_facts(block_d=padded_head_dim(g.facts["head_dim"]),
                        block_f=padded_head_dim(g.facts["num_features"]))


def choose_chunk(g: Graph) -> Graph:
    """Chunk size by shape class (padded widths, architecture): the table travels with the IR."""
    block_d, block_f = g.facts["block_d"], g.facts["block_f"]
    kernel = "fwd" if g.facts["kernel"] == "linear_fwd" else "bwd"
    table = {"interpreter": INTERPRETER_CHUNK.as_dict()}
    for arch in ARCHS:
        for dtype in (torch.float16, torch.float32):
            name = "16-bit" if dtype == torch.float16 else "float32"
            table[f"{arch}/{name}"] = chunk_config(block_d, block_f, arch, kernel, dtype).as_dict()
    return g.with_facts(chunk_configs=table)


ANALYSIS_PASSES = (choose_widths, choose_chunk)
LINEAR_PASSES = IR_PASSES + ANALYSIS_PASSES


def lower_linear(spec: Spec, kernel: str = "fwd", *, check: bool | None = None) -> Graph:
    """The lowered IR of a linear spec's forward (`kernel='fwd'`) or backward (`'bwd'`)."""
    if spec.kind != "linear":
        raise ValueError(f"lower_linear lowers linear specs; {spec.name!r} is {spec.kind}")
    builders = {"fwd": build_forward, "bwd": build_backward}
    if kernel not in builders:
        raise ValueError(f"kernel must be 'fwd' or 'bwd', got {kernel!r}")
    return run_passes(builders[kernel](spec), LINEAR_PASSES, check=check)
