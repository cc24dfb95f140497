"""Formulas in specs: the `Formula` mask predicate, the `ScoreFormula`, and `inputs:` declarations.

A formula is held as its canonical text (`formula_syntax.unparse` of the normalised tree), which is
what it compares, hashes and serialises as; `attngen.expr(text)` builds one. It reads declared
inputs by name, so it is *bound* to the spec's declarations when the spec is built (`bind`): the
type check runs then, with the declarations' ranks and dtypes, and errors name the field
(``mask.any[1]``). A formula that reads no input is checked at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import sympy
import torch

from ..errors import SpecError
from .formula_eval import Env, evaluate
from .formula_syntax import Node, input_names, parse_formula, unparse
from .formula_types import SYMBOLS, typed_sympy
from .predicates import EvalContext, Predicate

def _bound_form(node: Node, text: str, kind: str, decls: dict):
    ranks = {n: (len(d.shape), d.dtype) for n, d in decls.items()}
    return typed_sympy(node, text, kind, ranks)


@dataclass(frozen=True, repr=False, eq=False)
class _FormulaBase:
    """Canonical text, tree and (once bound) the declarations of the inputs it reads."""

    text: str
    node: Node = field(compare=False)
    decls: tuple = field(default=(), compare=False)
    bound: bool = field(default=False, compare=False)
    source: str = field(default="", compare=False)   # the text as written: error columns point there
    KIND = "mask"

    @classmethod
    def parse(cls, text) -> "_FormulaBase":
        node = parse_formula(text)
        formula = cls(unparse(node), node, source=text)
        if not formula.inputs_read:
            formula.sympy_form          # checks the types now: no declaration can change them
        return formula

    @property
    def inputs_read(self) -> tuple[str, ...]:
        return input_names(self.node)

    def bind(self, decls: dict) -> "_FormulaBase":
        """This formula checked against the spec's declarations (name → InputDecl)."""
        used = tuple(decls[n] for n in self.inputs_read if n in decls)
        bound = type(self)(self.text, self.node, used, True, self.source)
        _bound_form(self.node, self.source or self.text, self.KIND, decls)      # refuses unknown inputs, ranks
        return bound

    @cached_property
    def sympy_form(self) -> sympy.Basic:
        if self.inputs_read and not self.bound:
            raise SpecError("", self.text, f"reads input{'s' * (len(self.inputs_read) > 1)} "
                            f"{', '.join(self.inputs_read)}: declare {'them' if len(self.inputs_read) > 1 else 'it'} "
                            "in the spec's inputs")
        return _bound_form(self.node, self.source or self.text, self.KIND, {d.name: d for d in self.decls})[0]

    @property
    def symbols(self) -> set:
        return {s for s in self.sympy_form.free_symbols if s in SYMBOLS.values()}

    @property
    def needs_heads(self) -> bool:
        """True where the value depends on the batch or head, or reads an input."""
        return bool(self.inputs_read) or bool(self.symbols & {SYMBOLS["b"], SYMBOLS["h"], SYMBOLS["hk"]})


@dataclass(frozen=True, repr=False, eq=False)
class Formula(_FormulaBase, Predicate):
    """A mask predicate written as a formula (SPEC.md, "Expressions")."""

    def __eq__(self, other):
        return isinstance(other, Formula) and other.text == self.text

    def __hash__(self):
        return hash(("Formula", self.text))

    def to_dict(self):
        """The YAML form of a formula mask is the formula string itself."""
        return self.text

    def expr(self):
        return self.sympy_form

    def evaluate(self, ii, jj, ctx: EvalContext):
        value = evaluate(self.sympy_form, formula_env(self, ii, jj, ctx))
        shape = torch.broadcast_shapes(ii.shape, jj.shape, *(getattr(value, "shape", ()),))
        if not isinstance(value, torch.Tensor):
            return torch.full(shape, bool(value), dtype=torch.bool, device=ii.device)
        return value.expand(shape)

    def __repr__(self):
        return f"Formula({self.text!r})"


@dataclass(frozen=True, repr=False, eq=False)
class ScoreFormula(_FormulaBase):
    """The `score:` formula: the new score from `s` (SPEC.md, "Expressions")."""

    KIND = "score"

    def __eq__(self, other):
        return isinstance(other, ScoreFormula) and other.text == self.text

    def __hash__(self):
        return hash(("ScoreFormula", self.text))

    def evaluate(self, scores, ii, jj, ctx: EvalContext) -> torch.Tensor:
        env = formula_env(self, ii, jj, ctx)
        env.symbols[SYMBOLS["s"]] = scores
        value = evaluate(self.sympy_form, env)
        if not isinstance(value, torch.Tensor):
            value = torch.tensor(float(value), dtype=torch.float64, device=scores.device)
        return value.to(torch.float64).expand(torch.broadcast_shapes(scores.shape, value.shape))

    def __repr__(self):
        return f"ScoreFormula({self.text!r})"


def formula_env(formula: _FormulaBase, ii, jj, ctx: EvalContext) -> Env:
    """The tensors a formula reads at positions ii, jj (and the context's batch and heads)."""
    symbols = {SYMBOLS["i"]: ii, SYMBOLS["j"]: jj}
    heads = getattr(ctx, "heads", None)
    if heads is not None:
        symbols[SYMBOLS["h"]] = heads
        symbols[SYMBOLS["hk"]] = torch.div(heads, ctx.group, rounding_mode="floor")
    if getattr(ctx, "batch", None) is not None:
        symbols[SYMBOLS["b"]] = ctx.batch
    return Env(symbols, getattr(ctx, "inputs", None))


def bind_mask(pred: Predicate | None, decls: dict, path: str = "mask") -> Predicate | None:
    """The mask with every formula bound to the declarations; errors placed at the formula's path
    (``mask.any[1]``). Masks without formulas are returned as they are."""
    if pred is None or not any(isinstance(p, Formula) for p in pred.walk()):
        return pred
    if isinstance(pred, Formula):
        try:
            return pred.bind(decls)
        except SpecError as err:
            raise err.under(path) from None
    parts = pred.children()
    if hasattr(pred, "parts"):
        key = "any" if type(pred).__name__ == "Any_" else "all"
        return type(pred)(tuple(bind_mask(p, decls, f"{path}.{key}[{n}]") for n, p in enumerate(parts)))
    return type(pred)(bind_mask(parts[0], decls, f"{path}.not"))


def expr(text: str) -> Formula:
    """A mask predicate from a formula string: ``expr("j % 16 == 0") | band(6)``."""
    try:
        return Formula.parse(text)
    except SpecError as err:
        raise err.under("expr") from None


def as_formula(value, cls=Formula):
    if isinstance(value, cls):
        return value
    return cls.parse(value)
