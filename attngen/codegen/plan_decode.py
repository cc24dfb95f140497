"""From a lowered decode IR graph to the values templates/decode.py.jinja is rendered with.

The score chain and the mask are the forward's (`plan.forward_values` on the same node names);
added here: the two kernels' names, the key bounds written for a sequence's own length `seqlen`
(keys past it are not in the cache), and the per-sequence random tables' arguments.
"""
from __future__ import annotations

import sympy

from ..ir.graph import Graph
from ..spec.predicates import i
from .plan import _bound_code, forward_values, random_tables, sink_args
from .plan_formula import FormulaCode
from .plan_helpers import helper_flags
from .printer import print_triton
from .signature import Arg, KernelSignature, constexprs, sizes, strides, tensors


def kernel_names(kernel_name: str) -> dict[str, str]:
    """{role: function name}: the split-KV decode kernel and the kernel merging its splits."""
    return {"decode": kernel_name, "merge": f"{kernel_name}_merge"}


def decode_signatures(g: Graph, kernel_name: str) -> dict[str, KernelSignature]:
    """{role: signature}: the split-KV decode kernel, then the merge of its splits."""
    names = kernel_names(kernel_name)
    randoms = []
    for t in random_tables(g):      # one table per sequence: (B, rows, per_row) and its rows
        randoms += [Arg(t.names[0], "tensor", "i32"), Arg(t.names[2], "size")]
    decode = (tensors("q", "k_cache", "v_cache", "out") + tensors("lse", "split_out", "split_lse", dtype="fp32")
              + tensors("cache_seqlens", "block_table", dtype="i32") + tensors("alibi_slopes", dtype="fp32")
              + sink_args(g) + tuple(randoms) + FormulaCode.of_graph(g, "decode").signature_args()
              + tensors("tile_counts", dtype="i32")
              + strides("q") + strides("k") + strides("v") + strides("o") + strides("table_", "b")
              + sizes("nq", "nk_max", "k_offset", "max_total", "num_kv_heads") + _select_args(g)
              + constexprs("BLOCK_M", "BLOCK_N", "PAGED", "PAGE_SIZE", "PAGE_RUN", "KV_ALIGNED", "K_ROWS", "SPLIT", "COUNT_TILES",
                           "DOT_PRECISION", "UPCAST_DOT"))
    merge = (tensors("split_out", "split_lse", dtype="fp32") + tensors("out") + tensors("lse", dtype="fp32")
             + sink_args(g) + strides("o") + sizes("nq", "num_query_heads", "num_splits"))
    return {"decode": KernelSignature(names["decode"], decode), "merge": KernelSignature(names["merge"], merge)}


def _select_args(g: Graph) -> tuple:
    """`select:`: the key blocks chosen per (sequence, kv head), int32 (B, Hkv, num_key_blocks)."""
    if not g.facts["spec"].get("select"):
        return ()
    return tensors("selected", dtype="i32") + sizes("num_key_blocks")


def _bounds_values(g: Graph) -> dict:
    lower, upper = g.facts["bounds"]
    return dict(
        lower_formula=str(lower), upper_formula=str(upper),
        lo_key_code=_bound_code(lower, "first_pos", clamp="maximum", limit="0", key_offset="k_offset"),
        hi_key_code=_bound_code(upper, "last_pos", clamp="minimum", limit="seqlen - 1", key_offset="k_offset"),
        full_lo_key_code=_bound_code(lower, "last_pos", clamp="maximum", limit="0", key_offset="k_offset"),
        full_hi_key_code=_bound_code(upper, "first_pos", clamp="minimum", limit="seqlen - 1",
                                     key_offset="k_offset"),
    )


_NOTES = {
    "ranges": "closed-form key-tile range per sequence from the mask's interval bounds, split "
              "across programs; partial and full runs as in the forward",
    "scan": "per sequence, the key tiles of the outer bounds split across programs; each tile's mask "
            "is evaluated first and a tile that allows no pair is skipped before any load",
}


def decode_values(g: Graph, *, kernel_name: str) -> dict:
    """Template values for templates/decode.py.jinja from a lowered decode graph."""
    values = forward_values(g, kernel_name=kernel_name)
    tables = random_tables(g)
    names = kernel_names(kernel_name)
    values.update(
        kernel_title="decode kernels (split-KV against a KV cache)", template_name="decode.py.jinja",
        kernel_kind="decode", iteration_note=_NOTES[g.facts["iteration"]],
        merge_name=names["merge"],
        # Each sequence has its own random table (the draw depends on its length): the kernel gets
        # one table of `rows` rows per sequence and computes the first query block itself.
        signatures=decode_signatures(g, kernel_name),
        select_block=(g.facts["spec"].get("select") or {}).get("block", 0),
        random_call_args="".join(f", {t.names[0]}_seq, {t.names[1]}, {t.names[2]}" for t in tables),
        # The first query block of the draw: the block of token 0's position q_start, which is
        # negative where the sequence is shorter than the tokens.
        random_locals=[dict(table=t.names[0], first=t.names[1], rows=t.names[2], per_row=t.per_row,
                            block=t.block, first_code=print_triton(sympy.floor(i / t.block), query="q_start"))
                       for t in tables],
    )
    values.update(_bounds_values(g))
    values.update(helper_flags(values, extra_code=[t["first_code"] for t in values["random_locals"]]))
    return values

