"""A mask's sympy formula, printed for people: chains like ``i - 128 <= j <= i``, ``and``/``or``,
``%`` and ``//``, and the call-time tables (random draws, segment ids) in words.

For reading only; the code generator has its own strict printer.
"""
from __future__ import annotations

import sympy
from sympy.printing.str import StrPrinter

from ..spec.predicates import Predicate, i, j, random_hit

_LOWER = {sympy.GreaterThan: False, sympy.StrictGreaterThan: True}     # value: strict
_UPPER = {sympy.LessThan: False, sympy.StrictLessThan: True}
_FLIP = {sympy.GreaterThan: sympy.LessThan, sympy.StrictGreaterThan: sympy.StrictLessThan,
         sympy.LessThan: sympy.GreaterThan, sympy.StrictLessThan: sympy.StrictGreaterThan}


def _bound(rel):
    """(symbol, 'lower' | 'upper', bound, strict) for a comparison of i or j with anything else."""
    if type(rel) not in _FLIP:
        return None
    kind, lhs, rhs = type(rel), rel.lhs, rel.rhs
    if lhs not in (i, j) or (rhs in (i, j) and lhs == i):     # prefer j on the left: j <= i
        kind, lhs, rhs = _FLIP[kind], rhs, lhs
    if lhs not in (i, j):
        return None
    if kind in _LOWER:
        return lhs, "lower", rhs, _LOWER[kind]
    return lhs, "upper", rhs, _UPPER[kind]


class _ReadablePrinter(StrPrinter):
    def _print_BooleanTrue(self, expr):
        return "every pair"

    def _print_BooleanFalse(self, expr):
        return "no pair"

    def _print_And(self, expr):
        chains, rest = {}, []
        for arg in expr.args:
            found = _bound(arg)
            if found is None:
                rest.append(arg)
                continue
            symbol, side, value, strict = found
            chains.setdefault(symbol, {}).setdefault(side, []).append((value, strict))
        parts = []
        for symbol in sorted(chains, key=str, reverse=True):       # j first, then i
            sides = chains[symbol]
            lows, highs = sides.get("lower", [None]), sides.get("upper", [None])
            for n in range(max(len(lows), len(highs))):
                low, high = lows[min(n, len(lows) - 1)], highs[min(n, len(highs) - 1)]
                text = str(symbol)
                if low is not None:
                    text = f"{self._print(low[0])} {'<' if low[1] else '<='} {text}"
                if high is not None:
                    text = f"{text} {'<' if high[1] else '<='} {self._print(high[0])}"
                parts.append(text)
        parts += [self._wrap(arg, sympy.Or) for arg in rest]
        return " and ".join(parts)

    def _print_Or(self, expr):
        return " or ".join(self._wrap(arg, sympy.And) for arg in expr.args)

    def _print_Not(self, expr):
        return f"not ({self._print(expr.args[0])})"

    def _wrap(self, arg, kind):
        text = self._print(arg)
        return f"({text})" if isinstance(arg, kind) else text

    def _print_Equality(self, expr):
        lhs, rhs = expr.lhs, expr.rhs
        if getattr(lhs, "func", None) == random_hit:
            query_block, key_block, per_row, block, seed = lhs.args
            return (f"{self._print(key_block)} in drawn({self._print(query_block)}; "
                    f"{per_row} per row, seed {seed})")
        return f"{self._print(lhs)} == {self._print(rhs)}"

    def _print_Unequality(self, expr):
        return f"{self._print(expr.lhs)} != {self._print(expr.rhs)}"

    def _print_Mod(self, expr):
        value, modulus = expr.args
        text = self._print(value)
        return f"({text}) % {self._print(modulus)}" if isinstance(value, sympy.Add) else f"{text} % {modulus}"

    def _print_floor(self, expr):
        arg = expr.args[0]
        coeff, rest = arg.as_coeff_Mul()
        if isinstance(coeff, sympy.Rational) and coeff.p == 1 and coeff.q > 1:
            return f"{self._print(rest)} // {coeff.q}"
        return f"floor({self._print(arg)})"


def readable_mask(pred: Predicate) -> str:
    """The predicate's sympy formula as people write it."""
    return _ReadablePrinter().doprint(pred.expr())
