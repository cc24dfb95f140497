"""The values templates/lsh.py.jinja is rendered with, and its kernel's signature.

The bucket kernel of LSH attention (`lsh: {buckets, seed, rounds}`, SPEC.md): per row of q or k
and per round, the first argmax of [x·R[r], −x·R[r]] in float32. The sorts, the tile lists and
the attention are runtime/lsh.py's.
"""
from __future__ import annotations

from ..ir.graph import Graph
from ..version import __version__
from .signature import KernelSignature, constexprs, sizes, strides, tensors

ROLES = ("buckets",)
BLOCK_N = 32                    # rows per program
MAX_TILE = 1024                 # elements of the rotation chunk (BLOCK_D x BLOCK_H): larger ones spill (sm_80, D 64)


def kernel_names(kernel_name: str) -> dict[str, str]:
    return {role: f"{kernel_name}_{role}" for role in ROLES}


def lsh_signatures(g: Graph, kernel_name: str) -> dict[str, KernelSignature]:
    """{role: signature}: buckets (run for q, then for k)."""
    return {"buckets": KernelSignature(kernel_names(kernel_name)["buckets"], (
        tensors("x") + tensors("rotations", dtype="fp32") + tensors("out", dtype="i64") + strides("x")
        + sizes("n", "num_heads", "num_rows", "rounds") + constexprs("BLOCK_N")))}


def column_block(half: int, block_d: int) -> int:
    """Columns of R per step: a power of two, at least 16 (tl.dot), at most HALF rounded up, the
    chunk at most MAX_TILE elements."""
    return max(16, min(1 << (half - 1).bit_length(), MAX_TILE // block_d))


def lsh_values(g: Graph, *, kernel_name: str) -> dict:
    spec = g.facts["spec"]
    heads, lsh = spec["heads"], spec["lsh"]
    half = lsh["buckets"] // 2
    return dict(
        spec_name=g.facts["spec_name"], version=__version__, buckets=lsh["buckets"], half=half,
        rounds=lsh["rounds"], seed=lsh["seed"], query_heads=heads["query"], kv_heads=heads["kv"],
        head_dim=g.facts["head_dim"], block_d=g.facts["block_d"], block_h=column_block(half, g.facts["block_d"]),
        ir_hash=g.content_hash(), signatures=lsh_signatures(g, kernel_name))
