"""The IR: a small dataflow graph of one attention computation (networkx DiGraph underneath).

Nodes are named steps (``load_q``, ``scores``, ``mask``, ``online_softmax``, ...) with an op and
attributes; edges carry data from a producer to its consumers, in input order. A graph is never
mutated by a pass: `with_attrs`, `without` and `inserted_after` return new graphs.

Attributes and facts hold real objects: mask predicates (`attngen.spec.Predicate`), sympy
expressions, numbers, strings and tuples/dicts of them. Passes and the code generator read them as
they are; they are turned into JSON only for the content hash and the cache's ir.json
(`to_json`/`from_json`, which tag predicates and sympy expressions so that they come back whole).

The content hash of a node is the sha256 of its op, its attributes and its inputs' content hashes
(in order), so it changes exactly when something it depends on changes. It is part of every cache key.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import sympy

from ..spec import Predicate, parse_mask


_PREDICATE, _SYMPY = "__predicate__", "__sympy__"      # tags of objects in the JSON form


def _canonical(value: Any) -> Any:
    """Attributes as plain JSON data: tuples → lists, a predicate → its tagged YAML form, a sympy
    expression → its tagged srepr (exact: `sympify` of it rebuilds the same tree)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Predicate):
        return {_PREDICATE: value.to_dict()}
    if isinstance(value, sympy.Basic):
        return {_SYMPY: sympy.srepr(value)}
    raise TypeError(f"IR attribute of type {type(value).__name__} has no JSON form: {value!r}")


def _revived(value: Any) -> Any:
    """The inverse of `_canonical` (JSON lists stay lists: facts and attributes that were tuples
    are read as sequences)."""
    if isinstance(value, dict):
        if set(value) == {_PREDICATE}:
            return parse_mask(value[_PREDICATE])
        if set(value) == {_SYMPY}:
            return sympy.sympify(value[_SYMPY])
        return {k: _revived(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_revived(v) for v in value]
    return value


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    attrs: dict = field(default_factory=dict)
    inputs: tuple[str, ...] = ()


class Graph:
    """An immutable-by-convention dataflow graph with named nodes and graph-level facts."""

    def __init__(self, label: str, facts: dict | None = None):
        self.label = label
        self.facts = dict(facts or {})
        self._g = nx.DiGraph()

    # -- building -----------------------------------------------------------------------------
    def add(self, name: str, op: str, inputs: tuple[str, ...] = (), **attrs) -> str:
        if name in self._g:
            raise ValueError(f"IR node {name!r} already exists")
        for src in inputs:
            if src not in self._g:
                raise ValueError(f"IR node {name!r} reads {src!r}, which does not exist")
        self._g.add_node(name, node=Node(name, op, dict(attrs), tuple(inputs)))
        for position, src in enumerate(inputs):
            self._g.add_edge(src, name, position=position)
        return name

    def copy(self) -> "Graph":
        out = Graph(self.label, self.facts)
        out._g = self._g.copy()
        return out

    # -- reading ------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._g

    def node(self, name: str) -> Node:
        return self._g.nodes[name]["node"]

    def nodes(self) -> list[Node]:
        return [self.node(n) for n in nx.topological_sort(self._g)]

    def of_op(self, op: str) -> list[Node]:
        return [n for n in self.nodes() if n.op == op]

    def consumers(self, name: str) -> list[str]:
        return list(self._g.successors(name))

    @property
    def nx_graph(self) -> nx.DiGraph:
        return self._g

    # -- rewriting (each returns a new graph) --------------------------------------------------
    def with_attrs(self, name: str, **attrs) -> "Graph":
        out = self.copy()
        old = out.node(name)
        out._g.nodes[name]["node"] = Node(name, old.op, {**old.attrs, **attrs}, old.inputs)
        return out

    def with_facts(self, **facts) -> "Graph":
        out = self.copy()
        out.facts.update(facts)
        return out

    def without(self, name: str) -> "Graph":
        """Remove a node with one input, wiring its consumers to that input."""
        old = self.node(name)
        if len(old.inputs) != 1:
            raise ValueError(f"only single-input nodes can be bypassed; {name!r} has {old.inputs}")
        (src,) = old.inputs
        out = self.copy()
        for consumer in self.consumers(name):
            node = out.node(consumer)
            inputs = tuple(src if x == name else x for x in node.inputs)
            out._g.nodes[consumer]["node"] = Node(consumer, node.op, node.attrs, inputs)
            out._g.add_edge(src, consumer, **self._g.edges[name, consumer])
        out._g.remove_node(name)
        return out

    def inserted_after(self, src: str, name: str, op: str, **attrs) -> "Graph":
        """Insert a single-input node between `src` and all of its consumers."""
        out = self.copy()
        consumers = self.consumers(src)
        out._g.add_node(name, node=Node(name, op, dict(attrs), (src,)))
        for consumer in consumers:
            node = out.node(consumer)
            inputs = tuple(name if x == src else x for x in node.inputs)
            out._g.nodes[consumer]["node"] = Node(consumer, node.op, node.attrs, inputs)
            position = out._g.edges[src, consumer]["position"]
            out._g.remove_edge(src, consumer)
            out._g.add_edge(name, consumer, position=position)
        out._g.add_edge(src, name, position=0)
        return out

    # -- identity -----------------------------------------------------------------------------
    def node_hashes(self) -> dict[str, str]:
        hashes: dict[str, str] = {}
        for node in self.nodes():
            blob = json.dumps({"op": node.op, "attrs": _canonical(node.attrs),
                               "inputs": [hashes[x] for x in node.inputs]}, sort_keys=True)
            hashes[node.name] = hashlib.sha256(blob.encode()).hexdigest()
        return hashes

    def content_hash(self) -> str:
        """sha256 over the facts and the hashes of the sinks (nodes nothing reads)."""
        hashes = self.node_hashes()
        sinks = sorted(hashes[n] for n in self._g if self._g.out_degree(n) == 0)
        blob = json.dumps({"label": self.label, "facts": _canonical(self.facts), "sinks": sinks},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    @classmethod
    def from_json(cls, data: dict) -> "Graph":
        """The inverse of `to_json` (nodes are listed in topological order)."""
        graph = cls(data["label"], _revived(data["facts"]))
        for node in data["nodes"]:
            graph.add(node["name"], node["op"], tuple(node["inputs"]), **_revived(node["attrs"]))
        return graph

    def to_json(self) -> dict:
        return {"label": self.label, "facts": _canonical(self.facts),
                "nodes": [{"name": n.name, "op": n.op, "inputs": list(n.inputs),
                           "attrs": _canonical(n.attrs)} for n in self.nodes()]}

    def __repr__(self) -> str:
        lines = [f"Graph {self.label}"]
        for n in self.nodes():
            attrs = ", ".join(f"{k}={v}" for k, v in n.attrs.items())
            lines.append(f"  {n.name} = {n.op}({', '.join(n.inputs)}){' {' + attrs + '}' if attrs else ''}")
        return "\n".join(lines)
