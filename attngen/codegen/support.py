"""What the generated kernels cannot run yet, said before anything is generated.

Formulas, inputs, score formulas, sinks and Dv != Dqk are in the spec language and the float64
reference; the kernels support only mask formulas that read nothing but the positions ``i`` and
``j`` and that the strict printer can write (integer arithmetic, ``//``/``%`` by constants,
``min``/``max``, comparisons, and/or/not). Those run as any other non-interval mask: per-tile
lists from the block map (`analysis.classify` settles their tiles by evaluating the same sympy
form) and the printed predicate on partial tiles. Everything else is refused here, so that no call
silently runs a different attention than its spec.
"""
from __future__ import annotations

from ..errors import CompileError
from ..spec import Formula, Spec
from .printer import print_triton


def unsupported(spec: Spec) -> list[str]:
    """Why the kernels cannot run `spec` (empty when they can)."""
    if spec.kind != "softmax":
        return []
    reasons = []
    if spec.inputs:
        reasons.append(f"call-time inputs ({', '.join(d.name for d in spec.inputs)})")
    if spec.score is not None:
        reasons.append(f"a score formula ({spec.score.text})")
    for pred in spec.effective_mask.walk():
        if isinstance(pred, Formula):
            reasons += _mask_formula(pred)
    return reasons


def _mask_formula(formula: Formula) -> list[str]:
    if formula.needs_heads:
        return [f"a mask formula that reads the batch, the head or an input ({formula.text})"]
    try:
        print_triton(formula.expr(), query="q_pos", key="k_pos")
    except CompileError as err:
        return [f"the mask formula {formula.text} ({err})"]
    return []


def refuse_unsupported(spec: Spec) -> None:
    reasons = unsupported(spec)
    if reasons:
        raise CompileError(f"spec {spec.name!r}: the kernels do not support "
                           f"{'; '.join(reasons)} yet. attngen.reference(spec, q, k, v, ...) runs it "
                           "in float64.")
