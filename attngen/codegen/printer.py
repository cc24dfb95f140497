"""Predicates and bounds as Triton code: a strict subclass of SymPy's Python code printer.

Strict: before printing, every node of the expression is checked against the node types this
printer knows how to write as Triton; anything else raises `CompileError` rather than falling back
to a Python function Triton cannot run. Integer floor division and modulo are written so that they
are right for negative operands too (Triton's ``//`` and ``%`` truncate toward zero, as C does):
they go through the helpers ``floor_div`` / ``floor_mod`` unless sympy knows the operand is not
negative (key positions ``j`` never are).

Formulas (SPEC.md, "Expressions") add float arithmetic: ``/`` and ``**`` (sympy's Rational, Float
and Pow: integer powers as products, half-integer ones through ``tl.sqrt``, others through
exp2/log2), ``abs``, ``where`` (Piecewise), ``inf`` (oo), and in scores ``tanh`` (the template's
saturating helper), ``exp``, ``log``, ``sqrt``, ``sigmoid``; the batch, head and score symbols
print as the names the caller gives (`symbols`). Integer operands of a float function are
converted to float32 first (Triton's math functions take floats).
"""
from __future__ import annotations

import sympy
from sympy.core.function import AppliedUndef
from sympy.printing.pycode import PythonCodePrinter

from ..errors import CompileError
from ..spec.formula_types import sigmoid
from ..spec.predicates import i, j, random_hit, seg_k, seg_q

_ALLOWED = (
    sympy.Symbol, sympy.Integer, sympy.Rational, sympy.Add, sympy.Mul, sympy.Mod, sympy.floor,
    sympy.Max, sympy.Min, sympy.And, sympy.Or, sympy.Not, sympy.Eq, sympy.Ne, sympy.Lt, sympy.Le,
    sympy.Gt, sympy.Ge, AppliedUndef, sympy.logic.boolalg.BooleanTrue, sympy.logic.boolalg.BooleanFalse,
    sympy.Float, sympy.Abs, sympy.Piecewise, sympy.functions.elementary.piecewise.ExprCondPair,
    sympy.Pow, sympy.tanh, sympy.exp, sympy.log, sigmoid, sympy.Equivalent,
    sympy.core.numbers.Infinity, sympy.core.numbers.NegativeInfinity,
)


class TritonPrinter(PythonCodePrinter):
    """Prints integer/boolean sympy expressions over `i` and `j` as Triton expressions.

    `query` / `key`: the Triton names standing for i and j (tile grids or scalars).
    `random_args`: for each random predicate's (per_row, block, seed), the names of its table,
    first query block and row count arguments.
    """

    def __init__(self, *, query: str, key: str | None = None, random_args: dict | None = None,
                 seg_rows: str = "seg_q_rows", seg_cols: str = "seg_k_cols", symbols: dict | None = None,
                 scalars: frozenset = frozenset()):
        super().__init__({"strict": True, "fully_qualified_modules": False})
        self._names = {i: query, **({j: key} if key else {}), **(symbols or {})}
        self._scalars = scalars        # symbols that print as one value per program, not a tile
        self._random_args = random_args or {}
        self._seg = {"seg_q": seg_rows, "seg_k": seg_cols}

    def doprint(self, expr, assign_to=None):
        self._check(expr)
        return super().doprint(expr, assign_to)

    def _check(self, expr):
        for node in sympy.preorder_traversal(expr):
            if not isinstance(node, _ALLOWED):
                raise CompileError(f"cannot print {type(node).__name__} ({node}) as Triton code")
            if isinstance(node, sympy.Symbol) and node not in self._names:
                raise CompileError(f"symbol {node} has no Triton name here")

    # -- leaves -------------------------------------------------------------------------------
    def _print_Symbol(self, expr):
        return self._names[expr]

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    def _print_Rational(self, expr):
        # x / c: a float constant (floor(x / c) never gets here: _print_floor splits it).
        return repr(float(expr))

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Infinity(self, expr):
        return 'float("inf")'

    def _print_NegativeInfinity(self, expr):
        return 'float("-inf")'

    # -- float arithmetic ----------------------------------------------------------------------
    def _float(self, expr) -> str:
        """`expr` printed as a float32 value (integer expressions converted)."""
        code = self._print(expr)
        return f"({code}).to(tl.float32)" if expr.is_integer else code

    def _print_Pow(self, expr):
        base, exponent = expr.args
        if base == sympy.E:
            return f"tl.exp({self._float(exponent)})"
        if exponent.is_Rational and (2 * exponent).is_Integer and exponent != 0:
            # x ** (k / 2): a product of |k| factors of x (k even) or of sqrt(x) (k odd).
            twice = int(2 * exponent)
            factor = f"({self._print(base)})" if twice % 2 == 0 else f"tl.sqrt({self._float(base)})"
            power = "(" + " * ".join([factor] * (abs(twice) // (2 if twice % 2 == 0 else 1))) + ")"
            return f"(1.0 / {power})" if exponent < 0 else power
        return f"tl.exp2({self._float(exponent)} * tl.log2({self._float(base)}))"

    def _print_Abs(self, expr):
        return f"tl.abs({self._print(expr.args[0])})"

    def _print_Piecewise(self, expr):
        *pieces, (last, cond) = expr.args
        if cond != sympy.true:
            raise CompileError(f"{expr}: a where() without an otherwise branch")
        out = self._print(last)
        for value, cond in reversed(pieces):
            out = f"tl.where({self._print(cond)}, {self._print(value)}, {out})"
        return out

    def _print_tanh(self, expr):
        return f"tanh({self._float(expr.args[0])})"

    def _print_exp(self, expr):
        return f"tl.exp({self._float(expr.args[0])})"

    def _print_log(self, expr):
        if len(expr.args) != 1:
            raise CompileError(f"cannot print {expr}: a logarithm to a base")
        return f"tl.log({self._float(expr.args[0])})"

    def _print_sigmoid(self, expr):
        return f"tl.sigmoid({self._float(expr.args[0])})"

    def _print_Equivalent(self, expr):
        first, *rest = (self._print(a) for a in expr.args)
        return "(" + " & ".join(f"({first} == {r})" for r in rest) + ")"

    # -- integer arithmetic --------------------------------------------------------------------
    def _divisor(self, expr) -> tuple[sympy.Expr, int]:
        """floor(x / d) arrives as floor(Mul(Rational(1, d), x)): split it back into (x, d)."""
        numerator, denominator = sympy.fraction(sympy.together(expr))
        if not denominator.is_Integer or denominator <= 0:
            raise CompileError(f"floor({expr}) is not an integer division by a positive constant")
        return numerator, int(denominator)

    def _print_floor(self, expr):
        numerator, divisor = self._divisor(expr.args[0])
        if divisor == 1:
            return self._print(numerator)
        if numerator.is_nonnegative:
            return f"({self._print(numerator)} // {divisor})"
        return f"floor_div({self._print(numerator)}, {divisor})"

    def _print_Mod(self, expr):
        value, modulus = expr.args
        if not modulus.is_Integer or modulus <= 0:
            raise CompileError(f"{expr}: modulus must be a positive constant")
        if value.is_nonnegative:
            return f"({self._print(value)} % {modulus})"
        return f"floor_mod({self._print(value)}, {modulus})"

    def _print_Max(self, expr):
        return self._fold("tl.maximum", expr.args)

    def _print_Min(self, expr):
        return self._fold("tl.minimum", expr.args)

    def _fold(self, fn, args):
        out = self._print(args[0])
        for arg in args[1:]:
            out = f"{fn}({out}, {self._print(arg)})"
        return out

    # -- booleans ------------------------------------------------------------------------------
    def _print_And(self, expr):
        return self._boolean(expr.args, "&", "tl.where({}, {}, False)")

    def _print_Or(self, expr):
        return self._boolean(expr.args, "|", "tl.where({}, True, {})")

    def _boolean(self, args, op, mixed):
        """Operands over per-program scalars (the batch, a head, their input reads) join the tile
        operands through tl.where: Triton's interpreter gives ``scalar & tile`` an int32 mask."""
        scalar = [a for a in args if a.free_symbols and a.free_symbols <= self._scalars]
        tile = [a for a in args if a not in scalar]
        if not scalar or not tile:
            return "(" + f" {op} ".join(self._print(a) for a in args) + ")"
        scalars = "(" + f" {op} ".join(self._print(a) for a in scalar) + ")"
        tiles = "(" + f" {op} ".join(self._print(a) for a in tile) + ")"
        return mixed.format(scalars, tiles)

    def _print_Not(self, expr):
        return f"({self._print(expr.args[0])} == 0)"

    def _print_Relational(self, expr):
        if isinstance(expr.lhs, AppliedUndef) and expr.lhs.func == random_hit and expr.rhs == 1:
            # random_hit(..) == 1 is the table lookup itself; sympy writes its negation as != 1.
            if isinstance(expr, sympy.Eq):
                return self._print_random_hit(expr.lhs)
            if isinstance(expr, sympy.Ne):
                return f"({self._print_random_hit(expr.lhs)} == 0)"
        op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[expr.rel_op]
        return f"({self._print(expr.lhs)} {op} {self._print(expr.rhs)})"

    # -- call-time tables ----------------------------------------------------------------------
    def _print_random_hit(self, call):
        query_block, key_block, per_row, block, seed = call.args
        names = self._random_args.get((int(per_row), int(block), int(seed)))
        if names is None:
            raise CompileError(f"no table argument for random predicate {call}")
        table, first, rows = names
        return (f"random_hit({self._print(query_block)}, {self._print(key_block)}, "
                f"{table}, {first}, {rows}, {int(per_row)})")

    def _print_Function(self, expr):
        if isinstance(expr, sigmoid):
            return self._print_sigmoid(expr)
        if isinstance(expr, AppliedUndef) and expr.func in (seg_q, seg_k):
            return self._seg[expr.func.__name__]
        raise CompileError(f"cannot print function {expr} as Triton code")

    _print_AppliedUndef = _print_Function


def print_triton(expr, **names) -> str:
    return TritonPrinter(**names).doprint(expr)
