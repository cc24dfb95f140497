"""The values templates/select.py.jinja is rendered with, and its two kernels' signatures.

The selection kernels of content-based sparsity (`select: {top, block}`, SPEC.md): `pool` (block
means of q over the kv group's heads and of k) and `gate` (mean(q) . mean(k) per query block and
key block, -inf off the candidates). The top-k and the tile lists are runtime/select.py's.
"""
from __future__ import annotations

from ..ir.graph import Graph
from ..version import __version__
from .signature import KernelSignature, constexprs, sizes, strides, tensors

ROLES = ("pool", "gate")


def kernel_names(kernel_name: str) -> dict[str, str]:
    return {role: f"{kernel_name}_{role}" for role in ROLES}


def select_signatures(g: Graph, kernel_name: str) -> dict[str, KernelSignature]:
    """{role: signature}: pool (run for q, then for k) and gate."""
    names = kernel_names(kernel_name)
    return {
        "pool": KernelSignature(names["pool"], (
            tensors("x") + tensors("means", dtype="fp32") + strides("x")
            + sizes("n", "rows", "num_out_heads", "num_blocks") + constexprs("HEADS", "CHUNK"))),
        "gate": KernelSignature(names["gate"], (
            tensors("q_means", "k_means", "gate", dtype="fp32") + tensors("candidates", dtype="i32")
            + sizes("stride_cb", "num_q_blocks", "num_k_blocks", "num_kv_heads")
            + constexprs("BLOCK_Q", "BLOCK_K"))),
    }


def select_values(g: Graph, *, kernel_name: str) -> dict:
    spec = g.facts["spec"]
    heads = spec["heads"]
    return dict(
        spec_name=g.facts["spec_name"], version=__version__, top=spec["select"]["top"],
        block=spec["select"]["block"], query_heads=heads["query"], kv_heads=heads["kv"],
        group=g.facts["group"], grouping="MHA" if heads["query"] == heads["kv"] else
        ("MQA" if heads["kv"] == 1 else "GQA"), head_dim=g.facts["head_dim"], block_d=g.facts["block_d"],
        ir_hash=g.content_hash(), signatures=select_signatures(g, kernel_name))
