"""The IR verifier: structural checks run between lowering passes (ATTNGEN_VERIFY=1, always in tests).

Each op declares its arity and the attributes it must carry; lowerings register their ops here.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from .graph import Graph


class IRError(RuntimeError):
    """The IR broke an invariant; the message names the pass that broke it."""


@dataclass(frozen=True)
class OpSignature:
    arity: int | None                  # None: any number of inputs
    required: tuple[str, ...] = ()


OPS: dict[str, OpSignature] = {}


def register_op(op: str, arity: int | None, required: tuple[str, ...] = ()) -> None:
    if op in OPS and OPS[op] != OpSignature(arity, required):
        raise ValueError(f"IR op {op!r} registered twice with different signatures")
    OPS[op] = OpSignature(arity, required)


def verify(graph: Graph, after: str = "build") -> None:
    """Raise IRError if `graph` is not a well-formed IR graph."""
    where = f"IR of {graph.label} after {after}"
    g = graph.nx_graph
    if not nx.is_directed_acyclic_graph(g):
        raise IRError(f"{where}: has a cycle")
    for node in graph.nodes():
        sig = OPS.get(node.op)
        if sig is None:
            raise IRError(f"{where}: node {node.name!r} has unknown op {node.op!r}")
        if sig.arity is not None and len(node.inputs) != sig.arity:
            raise IRError(f"{where}: {node.name!r} ({node.op}) takes {sig.arity} inputs, "
                          f"has {len(node.inputs)}")
        missing = [a for a in sig.required if a not in node.attrs]
        if missing:
            raise IRError(f"{where}: {node.name!r} ({node.op}) lacks attributes {missing}")
        preds = sorted(g.predecessors(node.name), key=lambda p: g.edges[p, node.name]["position"])
        if tuple(preds) != node.inputs:
            raise IRError(f"{where}: {node.name!r} edges {preds} disagree with inputs {node.inputs}")
    stores = graph.of_op("store")
    if not stores:
        raise IRError(f"{where}: stores nothing")
    for name in g:
        if g.out_degree(name) == 0 and graph.node(name).op != "store":
            raise IRError(f"{where}: {name!r} computes a value nothing uses")
