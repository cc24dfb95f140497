"""Running a lowering: an ordered list of named passes, each a pure Graph → Graph function.

A pass's docstring's first line is its reason; `run_passes` records which passes ran and, when
verification is on (ATTNGEN_VERIFY=1, always in tests), runs the verifier after each.
"""
from __future__ import annotations

from typing import Callable, Sequence

from .. import env
from .graph import Graph
from .verify import verify

Pass = Callable[[Graph], Graph]


def reason(p: Pass) -> str:
    return (p.__doc__ or "").strip().splitlines()[0] if p.__doc__ else ""


def run_passes(graph: Graph, passes: Sequence[Pass], *, check: bool | None = None) -> Graph:
    check = env.verify_ir() if check is None else check
    if check:
        verify(graph, "build")
    for p in passes:
        graph = p(graph)
        graph = graph.with_facts(passes=[*graph.facts.get("passes", []), p.__name__])
        if check:
            verify(graph, p.__name__)
    return graph
