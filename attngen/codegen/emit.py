"""Source generation: spec → lowered IR → rendered Triton source, for each kernel kind."""
from __future__ import annotations

from dataclasses import dataclass

from ..analysis.lowering import lower_forward
from ..ir.graph import Graph
from ..spec import Spec, load_spec
from .plan import forward_values
from .render import render


@dataclass(frozen=True)
class GeneratedKernel:
    """Generated source with the lowered IR it came from and the kernel function's name."""

    spec: Spec
    kind: str
    source: str
    graph: Graph
    kernel_name: str


def forward_kernel(spec: Spec, *, check: bool | None = None) -> GeneratedKernel:
    graph = lower_forward(spec, check=check)
    name = f"attngen_fwd_{spec.name}"
    source = render("fwd.py.jinja", **forward_values(graph, kernel_name=name))
    return GeneratedKernel(spec, "fwd", source, graph, name)


GENERATORS = {"fwd": forward_kernel}


def generate(spec, kind: str = "fwd", *, check: bool | None = None) -> GeneratedKernel:
    spec = load_spec(spec)
    if kind not in GENERATORS:
        raise ValueError(f"unknown kernel kind {kind!r}; one of {', '.join(GENERATORS)}")
    return GENERATORS[kind](spec, check=check)
