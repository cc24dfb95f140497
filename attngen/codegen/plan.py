"""From a lowered IR graph to the values a template is rendered with.

Everything a template prints is decided here: names, the mask as Triton code, the key-range
formulas, the modifier constants, the argument lists for call-time tables.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..analysis.configs import padded_head_dim
from ..version import __version__
from ..ir.graph import Graph
from ..spec import Random, Segments
from .plan_formula import FormulaCode, formula_values
from .plan_helpers import helper_flags
from .printer import print_triton
from .signature import Arg, KernelSignature, constexprs, sizes, strides, tensors


@dataclass(frozen=True)
class RandomTableArgs:
    """The kernel arguments of one random predicate's table."""

    per_row: int
    block: int
    seed: int
    index: int

    @property
    def names(self) -> tuple[str, str, str]:
        n = self.index
        return f"random_{n}_table", f"random_{n}_first", f"random_{n}_rows"


def random_tables(g: Graph) -> list[RandomTableArgs]:
    """The random predicates of the mask, in a fixed order: each needs a table at call time."""
    if "mask" not in g:
        return []
    seen = []
    for pred in g.node("mask").attrs["predicate"].walk():
        if isinstance(pred, Random) and (pred.per_row, pred.block, pred.seed) not in seen:
            seen.append((pred.per_row, pred.block, pred.seed))
    return [RandomTableArgs(r, b, s, n) for n, (r, b, s) in enumerate(seen)]


def random_args(tables: list[RandomTableArgs]) -> tuple[Arg, ...]:
    """Per random table: the int32 table, its first query block and its row count."""
    out = []
    for t in tables:
        table, first, rows = t.names
        out += [Arg(table, "tensor", "i32"), Arg(first, "size"), Arg(rows, "size")]
    return tuple(out)


def block_list_args(g: Graph, prefix: str = "") -> tuple[Arg, ...]:
    """The block map's CSR lists (non-interval masks): partial and full key (or query) tiles. Lists
    that vary over the batch or heads (`list_sets`: `select:`'s per (batch, kv head), a mask's
    scalar reads) hold one set of rows per value, `list_rows` rows each."""
    if g.facts["iteration"] != "lists":
        return ()
    lists = tensors(*(f"{prefix}{n}" for n in ("partial_ptr", "partial_idx", "full_ptr", "full_idx")), dtype="i32")
    return lists + (sizes("list_rows") if g.facts.get("list_sets", ()) else ())


def has_select(g: Graph) -> bool:
    """Content-based sparsity (`select:`, and `lsh:`'s kernel spec): the lists are chosen per call
    and per (batch, kv head)."""
    return bool(g.facts["spec"].get("select") or g.facts["spec"].get("lsh"))


LIST_SET_NOTES = {("b", "hk"): "per (batch, kv head)", ("b", "h"): "per (batch, query head)",
                  ("b",): "per batch row", ("h",): "per query head", ("hk",): "per kv head"}


def list_set_values(g: Graph) -> dict:
    """How a kernel finds its row of the lists: `list_set`, the index of its set (empty: one set
    shared by every program; the row is the tile) per kernel — the forward and dQ programs own a
    (batch, query head), the dK/dV program a (batch, kv head) and loops over its query heads."""
    axes = g.facts.get("list_sets", ()) if g.facts["iteration"] == "lists" else ()
    if not axes:
        return dict(list_set="", key_list_set="", list_set_note="")
    head_counts = {"fwd": {"h": "num_query_heads", "hk": "(num_query_heads // GROUP)"},
                   "dkdv": {"h": "(num_kv_heads * GROUP)", "hk": "num_kv_heads"}}
    heads = {"h": "query_head", "hk": "kv_head"}

    def code(kernel: str) -> str:
        head = [a for a in axes if a != "b"]
        if "b" not in axes:
            return heads[head[0]]
        if not head:
            return "batch"
        return f"(batch * {head_counts[kernel][head[0]]} + {heads[head[0]]})"

    note = LIST_SET_NOTES[axes] + (" (select: this call's selection, runtime/select.py)" if has_select(g)
                                   else " (the mask's scalar reads, analysis/tiles_params.py)")
    return dict(list_set=code("fwd"), key_list_set=code("dkdv"), list_set_note=note)


def sink_args(g: Graph) -> tuple[Arg, ...]:
    """Attention sinks' logits, float32 (Hq,), where the spec has them (`sink: true`)."""
    return tensors("sink", dtype="fp32") if g.facts["spec"].get("sink") else ()


def forward_signatures(g: Graph, kernel_name: str) -> dict[str, KernelSignature]:
    """{role: signature} of the forward source: one kernel, role ``fwd``."""
    args = (tensors("q", "k", "v", "out") + tensors("lse", "alibi_slopes", dtype="fp32") + sink_args(g)
            + tensors("seg_q", "seg_k", dtype="i32") + block_list_args(g) + random_args(random_tables(g))
            + FormulaCode.of_graph(g, "fwd").signature_args() + tensors("tile_counts", dtype="i32")
            + strides("q") + strides("k") + strides("v") + strides("o")
            + strides("seg_q", "bn") + strides("seg_k", "bn")
            + sizes("nq", "nk", "q_offset", "k_offset", "num_query_heads")
            + constexprs("BLOCK_M", "BLOCK_N", "EVEN_K", "COUNT_TILES", "DOT_PRECISION", "UPCAST_DOT",
                         "USE_TMA"))
    return {"fwd": KernelSignature(kernel_name, args)}


def _bound_code(bound: sympy.Expr, position: str, *, clamp: str, limit: str, key_offset: str) -> str:
    """A key bound for the scalar `position`, as a key index (position - `key_offset`, the kernel's
    name for the position of its first key) clamped at `limit`; ±oo become the limit."""
    if bound in (sympy.oo, -sympy.oo):
        return limit
    code = print_triton(bound, query=position)
    return f"tl.{clamp}({code} - {key_offset}, {limit})"


def _score_note(g: Graph) -> tuple[float, str, str]:
    scale = g.node("scale").attrs
    parts = [f"qk * {scale['value']!r}"]
    if scale.get("folded_log2e"):
        note = "softmax scale * log2(e): scores in log2 units for exp2"
    else:
        note = "softmax scale; log2(e) is applied after the softcap"
    if "softcap" in g:
        parts = [f"softcap {g.node('softcap').attrs['cap']} * tanh(scale * qk / cap)"]
    if "alibi" in g:
        parts.append("- slope[h] * (i - j) (ALiBi)")
    if "score" in g:
        parts.append(f"then the score formula {g.facts['spec']['score']}")
    return scale["value"], note, " ".join(parts)


def forward_values(g: Graph, *, kernel_name: str) -> dict:
    """Template values for templates/fwd.py.jinja from a lowered forward graph."""
    spec = g.facts["spec"]
    tables = random_tables(g)
    random_map = {(t.per_row, t.block, t.seed): t.names for t in tables}
    has_mask = "mask" in g
    formula = formula_values(g, g.facts["kernel"], random_map)
    if has_mask:
        mask = g.node("mask").attrs
        mask_code = formula.pop("formula_mask_code") if formula["formula_args"] else print_triton(
            mask["predicate"].expr(), query="q_pos", key="k_pos", random_args=random_map)
        mask_formula = mask["formula"]
    else:
        mask_code, mask_formula = "(q_pos == q_pos) & (k_pos == k_pos)", "True (every pair allowed)"
    qk_scale, qk_note, score_note = _score_note(g)
    values = dict(
        kernel_title="forward kernel", template_name="fwd.py.jinja", kernel_kind="fwd", varlen=False,
        spec_name=g.facts["spec_name"], version=__version__, kernel_name=kernel_name,
        mask_formula=mask_formula, mask_code=mask_code, has_mask=has_mask,
        query_heads=spec["heads"]["query"], kv_heads=spec["heads"]["kv"], group=g.facts["group"],
        grouping=_grouping(spec), head_dim=g.facts["head_dim"], block_d=g.facts["block_d"],
        **_value_dims(g),
        qk_scale=repr(qk_scale), qk_scale_note=qk_note, score_note=score_note,
        has_softcap="softcap" in g, softcap=repr(g.node("softcap").attrs["cap"]) if "softcap" in g else "1.0",
        has_alibi="alibi" in g, has_segments=spec_uses_segments(g), has_sink=bool(spec.get("sink")),
        tile_configs=sorted(g.facts["tile_configs"].items()), ir_hash=g.content_hash(),
        tile_key_width=max(map(len, g.facts["tile_configs"])) + 2,     # the header's column
        iteration=g.facts["iteration"],
        has_select=has_select(g),
        list_row="list_row" if g.facts.get("list_sets", ()) and g.facts["iteration"] == "lists" else "query_tile",
        **list_set_values(g),
        random_args="".join(f", {a}, {b}, {c}" for a, b, c in (t.names for t in tables)),
        signatures=forward_signatures(g, kernel_name),
        **_step_scale_values(g, qk_scale),
        **{k: v for k, v in formula.items() if k != "formula_mask_code"},
    )
    values.update(_iteration_values(g))
    values.update(helper_flags(values))
    return values


def _value_dims(g: Graph) -> dict:
    """The value (and output) head dim, Dqk's unless the spec sets `head_dim: {qk, v}`, and its
    padded tile width: V, out, dO and dV tiles are [.., BLOCK_DV], q/k tiles [.., BLOCK_D]."""
    head_dim, block_d = g.facts["head_dim"], g.facts["block_d"]
    v_head_dim = g.facts["spec"].get("value_head_dim", head_dim)
    block_dv = padded_head_dim(v_head_dim)
    note = f"{head_dim} (tiled as {block_d})"
    if v_head_dim != head_dim:
        note += f"; values {v_head_dim} (tiled as {block_dv})"
    return dict(v_head_dim=v_head_dim, block_dv=block_dv, head_dim_note=note)


def _step_scale_values(g: Graph, qk_scale: float) -> dict:
    """Where the score is the scaled product alone (no softcap, no ALiBi), the online-softmax step
    applies the scale itself (after the row maximum, inside exp2's fused multiply-add)."""
    in_step = "softcap" not in g and "alibi" not in g and "score" not in g
    return dict(scale_in_step=in_step, step_scale=repr(qk_scale) if in_step else "1.0",
                step_scale_note=("softmax scale * log2(e), applied after the row maximum" if in_step else
                                 "1.0: score_of applies the scale (a score formula comes after it)" if "score" in g
                                 else "1.0: score_of applies the scale (softcap or ALiBi come after it)"))


def spec_uses_segments(g: Graph) -> bool:
    return "mask" in g and any(isinstance(p, Segments) for p in g.node("mask").attrs["predicate"].walk())


def _grouping(spec: dict) -> str:
    q, kv = spec["heads"]["query"], spec["heads"]["kv"]
    return "MHA" if q == kv else ("MQA" if kv == 1 else "GQA")


def _iteration_values(g: Graph) -> dict:
    if g.facts["iteration"] != "ranges":
        return dict(iteration_note="per query tile, lists of partial and full key tiles (block map)",
                    lower_formula="", upper_formula="", lo_key_code="", hi_key_code="",
                    full_lo_key_code="", full_hi_key_code="", left_partial=False)
    lower, upper = g.facts["bounds"]
    return dict(
        iteration_note="closed-form key-tile ranges from the mask's interval bounds (no index lists)",
        lower_formula=str(lower), upper_formula=str(upper),
        # With no lower bound every query tile's keys start at key 0, where its full run starts:
        # partial tiles before the full ones cannot exist (`full_tile_span`), so no loop for them.
        left_partial=lower != -sympy.oo,
        lo_key_code=_bound_code(lower, "first_pos", clamp="maximum", limit="0", key_offset="k_offset"),
        hi_key_code=_bound_code(upper, "last_pos", clamp="minimum", limit="nk - 1", key_offset="k_offset"),
        full_lo_key_code=_bound_code(lower, "last_pos", clamp="maximum", limit="0", key_offset="k_offset"),
        full_hi_key_code=_bound_code(upper, "first_pos", clamp="minimum", limit="nk - 1",
                                     key_offset="k_offset"),
    )

