"""What the generated kernels cannot run yet, said before anything is generated.

Mask and score formulas over positions, the batch, the heads and call-time inputs run in the
kernels (codegen/plan_formula.py) wherever the strict printer can write them and, for a score, its
derivatives (integer arithmetic, ``//``/``%`` by constants, ``min``/``max``, comparisons,
and/or/not, float arithmetic and the score functions). Whatever it cannot print is refused here,
naming the formula and the piece, so that no call silently runs a different attention than its
spec.
"""
from __future__ import annotations

from ..errors import CompileError
from ..spec import Formula, Spec
from .plan_formula import FormulaCode


def unsupported(spec: Spec) -> list[str]:
    """Why the kernels cannot run `spec` (empty when they can)."""
    if spec.kind != "softmax":
        return []
    reasons = []
    facts = spec.canonical()
    if spec.score is not None:
        reasons += _printable(facts, None, spec.score.sympy_form, f"the score formula {spec.score.text}")
    for pred in spec.effective_mask.walk():
        if isinstance(pred, Formula):
            reasons += _printable(facts, pred.expr(), None, f"the mask formula {pred.text}")
    return reasons


def _printable(facts: dict, mask, score, what: str) -> list[str]:
    """Whether the strict printer can write a formula (its input reads as masked loads), and for a
    score its derivatives."""
    try:
        code = FormulaCode(facts, mask, score, "fwd")
        code.print(code.score if code.score is not None else code.mask)
        if code.score is not None:
            code.dscore_code()
            for _, _, derivative in code.grad_reads():
                code.print(derivative)
    except CompileError as err:
        return [f"{what} ({err})"]
    return []


def refuse_unsupported(spec: Spec) -> None:
    reasons = unsupported(spec)
    if reasons:
        raise CompileError(f"spec {spec.name!r}: the kernels do not support "
                           f"{'; '.join(reasons)} yet. attngen.reference(spec, q, k, v, ...) runs it "
                           "in float64.")
