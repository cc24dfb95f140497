"""Source generation: spec → lowered IR → rendered Triton source, for each kernel kind."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..analysis.lowering import lower_forward
from ..analysis.lowering_backward import lower_backward
from ..analysis.lowering_decode import lower_decode
from ..analysis.lowering_linear import lower_linear
from ..ir.graph import Graph
from ..errors import CompileError
from ..spec import Spec, kernel_spec, load_spec
from .plan import forward_signatures, forward_values
from .plan_backward import backward_signatures, backward_values
from .plan_decode import decode_signatures, decode_values
from .plan_linear import kernel_names, linear_signatures, linear_values
from .plan_varlen import (refuse_varlen, varlen_backward_signatures, varlen_backward_values,
                          varlen_forward_signatures, varlen_forward_values)
from .plan_lsh import lsh_signatures, lsh_values
from .plan_select import select_signatures, select_values
from .render import render
from .support import refuse_unsupported
from .signature import KernelSignature

# {kind: (lowered graph, kernel name) → {role: signature}}: the same declarations the templates
# rendered, recomputed from the IR (a cache hit has the IR, not the template values).
SIGNATURES = {
    "fwd": forward_signatures, "bwd": backward_signatures, "decode": decode_signatures,
    "select": select_signatures, "lsh": lsh_signatures,
    "linear_fwd": lambda graph, name: linear_signatures(graph),
    "linear_bwd": lambda graph, name: linear_signatures(graph),
    "varlen_fwd": varlen_forward_signatures, "varlen_bwd": varlen_backward_signatures,
}


@dataclass(frozen=True)
class GeneratedKernel:
    """Generated source with the lowered IR it came from and the kernel function's name."""

    spec: Spec
    kind: str
    source: str
    graph: Graph
    kernel_name: str

    @cached_property
    def signatures(self) -> dict[str, KernelSignature]:
        """{role: signature} of the source's kernels, in launch order."""
        return SIGNATURES[self.kind](self.graph, self.kernel_name)


def forward_kernel(spec: Spec, *, check: bool | None = None) -> GeneratedKernel:
    graph = lower_forward(spec, check=check)
    name = f"attngen_fwd_{spec.name}"
    source = render("fwd.py.jinja", **forward_values(graph, kernel_name=name))
    return GeneratedKernel(spec, "fwd", source, graph, name)


def backward_kernel(spec: Spec, *, check: bool | None = None) -> GeneratedKernel:
    """One source holding the three backward kernels, `{kernel_name}_{preprocess,dkdv,dq}`."""
    graph = lower_backward(spec, check=check)
    name = f"attngen_bwd_{spec.name}"
    source = render("bwd.py.jinja", **backward_values(graph, kernel_name=name))
    return GeneratedKernel(spec, "bwd", source, graph, name)


def linear_kernel(spec: Spec, kernel: str, *, check: bool | None = None) -> GeneratedKernel:
    """One source holding a linear spec's forward (`kernel='fwd'`) or backward kernels."""
    graph = lower_linear(spec, kernel, check=check)
    source = render(f"linear_{kernel}.py.jinja", **linear_values(graph))
    return GeneratedKernel(spec, f"linear_{kernel}", source, graph, kernel_names(graph)["main"])


def decode_kernel(spec: Spec, *, check: bool | None = None) -> GeneratedKernel:
    """One source holding the decode kernel (`attngen_decode_<spec>`) and its merge kernel."""
    graph = lower_decode(spec, check=check)
    name = f"attngen_decode_{spec.name}"
    source = render("decode.py.jinja", **decode_values(graph, kernel_name=name))
    return GeneratedKernel(spec, "decode", source, graph, name)


def varlen_kernel(spec: Spec, kind: str, *, check: bool | None = None) -> GeneratedKernel:
    """`varlen_fwd` / `varlen_bwd`: the forward or the three backward kernels for a packed batch
    of sequences (`attn.varlen`), one launch each: fwd/bwd.py.jinja with `varlen` (plan_varlen.py)."""
    refuse_varlen(spec)
    lower, template, values = {"varlen_fwd": (lower_forward, "fwd.py.jinja", varlen_forward_values),
                               "varlen_bwd": (lower_backward, "bwd.py.jinja", varlen_backward_values)}[kind]
    graph = lower(spec, check=check)
    name = f"attngen_{kind}_{spec.name}"
    return GeneratedKernel(spec, kind, render(template, **values(graph, kernel_name=name)), graph, name)


def select_kernel(spec: Spec, *, check: bool | None = None) -> GeneratedKernel:
    """One source holding the selection kernels of `select:` (`attngen_select_<spec>_{pool,gate}`),
    rendered from the forward's lowered IR (the spec's heads, head dim and select)."""
    if spec.select is None:
        raise ValueError(f"spec {spec.name!r} has no select: it has no selection kernels")
    graph = lower_forward(spec, check=check)
    name = f"attngen_select_{spec.name}"
    source = render("select.py.jinja", **select_values(graph, kernel_name=name))
    return GeneratedKernel(spec, "select", source, graph, name)


def lsh_kernel(spec: Spec, *, check: bool | None = None) -> GeneratedKernel:
    """The bucket kernel of `lsh:` (`attngen_lsh_<spec>_buckets`), rendered from the forward's
    lowered IR of the user's spec (its heads, head dim and lsh), not of its kernel spec."""
    if spec.lsh is None:
        raise ValueError(f"spec {spec.name!r} has no lsh: it has no bucket kernel")
    graph = lower_forward(spec, check=check)
    name = f"attngen_lsh_{spec.name}"
    return GeneratedKernel(spec, "lsh", render("lsh.py.jinja", **lsh_values(graph, kernel_name=name)), graph, name)


GENERATORS = {"fwd": forward_kernel, "select": select_kernel, "lsh": lsh_kernel, "bwd": backward_kernel,
              "linear_fwd": lambda spec, *, check=None: linear_kernel(spec, "fwd", check=check),
              "linear_bwd": lambda spec, *, check=None: linear_kernel(spec, "bwd", check=check),
              "decode": decode_kernel,
              "varlen_fwd": lambda spec, *, check=None: varlen_kernel(spec, "varlen_fwd", check=check),
              "varlen_bwd": lambda spec, *, check=None: varlen_kernel(spec, "varlen_bwd", check=check)}


def generate(spec, kind: str = "fwd", *, check: bool | None = None) -> GeneratedKernel:
    spec = load_spec(spec)
    if spec.kind == "linear" and kind in ("fwd", "bwd"):      # a linear spec's own kernels
        kind = f"linear_{kind}"
    elif spec.kind != "linear" and kind.startswith("linear_"):
        raise ValueError(f"kernel {kind!r} is for kind: linear; spec {spec.name!r} is {spec.kind}")
    if kind not in GENERATORS:
        raise ValueError(f"unknown kernel kind {kind!r}; one of {', '.join(GENERATORS)}")
    if spec.lsh is not None and kind != "lsh":
        if kind not in ("fwd", "bwd"):
            raise CompileError(f"spec {spec.name!r} hashes rows into buckets (lsh:): it has no {kind} kernel; "
                               "its calls hash rows (the lsh kernel), sort them by bucket and run the fwd/bwd "
                               "kernels (attn.decode does, per sequence; varlen is not supported)")
        spec = kernel_spec(spec)          # the permuted form (spec/lsh.py)
    refuse_unsupported(spec)
    return GENERATORS[kind](spec, check=check)
