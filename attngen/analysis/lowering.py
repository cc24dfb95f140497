"""The whole lowering of a softmax spec: IR build, IR passes, then the passes that need analysis.

    lower_forward(spec) = run_passes(build_forward(spec), IR_PASSES + ANALYSIS_PASSES)
"""
from __future__ import annotations

import sympy

from ..ir.graph import Graph
from ..ir.passes import run_passes
from ..ir.softmax import IR_PASSES, build_forward
from ..spec import Spec
from .configs import config_table, padded_head_dim
from .intervals import key_interval
from .tiles_params import scalar_reads


def choose_iteration(g: Graph) -> Graph:
    """Interval masks get key-tile ranges from formulas; the rest walk per-tile index lists, as does
    content-based sparsity (`select:`, `lsh:`'s kernel spec), whose lists come from the data at
    call time. `list_sets`: the axes the lists vary over, one set of rows per value (`list_sets`;
    absent: one set shared by every program)."""
    if g.facts["spec"].get("select") or g.facts["spec"].get("lsh"):
        return g.with_facts(iteration="lists", bounds=None, list_sets=("b", "hk"))
    if "mask" not in g:
        return g.with_facts(iteration="ranges", bounds=(-sympy.oo, sympy.oo))
    bounds = key_interval(g.node("mask").attrs["predicate"])
    if bounds is not None:
        return g.with_facts(iteration="ranges", bounds=tuple(bounds))
    axes = list_sets(g)
    return g.with_facts(iteration="lists", bounds=None, **({"list_sets": axes} if axes else {}))


def list_sets(g: Graph) -> tuple:
    """The axes a mask's lists vary over: those of its scalar reads where the call builds exact
    lists from their values (`tiles_params`: ("b",), ("h",), ("b", "hk"), ...), else () (one
    map for every batch row and head). () with scalar reads at constant indices: one set, still
    built from the call's values."""
    reads = scalar_reads(g.node("mask").attrs["predicate"])
    return reads.axes if reads is not None else ()


def choose_tiles(g: Graph) -> Graph:
    """Tile sizes by shape class (padded head dim, dtype, arch): the table travels with the IR."""
    head_dim = g.facts["head_dim"]
    return g.with_facts(block_d=padded_head_dim(head_dim), tile_configs=config_table(head_dim))


ANALYSIS_PASSES = (choose_iteration, choose_tiles)
FORWARD_PASSES = IR_PASSES + ANALYSIS_PASSES


def lower_forward(spec: Spec, *, check: bool | None = None) -> Graph:
    if spec.kind != "softmax":
        raise ValueError(f"lower_forward lowers softmax specs; {spec.name!r} is {spec.kind}")
    return run_passes(build_forward(spec), FORWARD_PASSES, check=check)
