"""The type check of a formula tree, and its sympy form (the IR's expression form).

Three types: ``int`` (positions, heads, integer inputs and literals), ``float`` (``s``, ``inf``,
float inputs and literals, ``/``, ``**`` and the score functions) and ``bool`` (comparisons,
boolean inputs, ``True``/``False``). Integers mix into float arithmetic as floats; a boolean is
never a number and a number never a boolean; ``//`` and ``%`` take integers (Python's floor
semantics); ``&``/``|``/``~``/``and``/``or``/``not`` take booleans.

The sympy form, exactly:
- ``i``, ``j`` are the predicates' position symbols (``j`` is nonnegative), ``b``, ``h``, ``hk``
  nonnegative integer symbols, ``s`` a real symbol, ``inf`` is ``oo``;
- ``a // c`` is ``floor(a / c)`` and ``a % c`` is ``Mod(a, c)``: for integers both are Python's
  floored division and modulo (sympy's ``Mod`` takes the divisor's sign, as Python's ``%`` does);
- ``a / c`` and ``a ** c`` are sympy's exact ``Mul(a, Pow(c, -1))`` and ``Pow``;
- ``where(c, x, y)`` is ``Piecewise((x, c), (y, True))`` for numbers, ``(c & x) | (~c & y)``
  for booleans; ``sigmoid`` is `sigmoid` below (with its derivative);
- ``name[e1, ..]`` is ``Indexed(IndexedBase(name), e1, ..)``, read as 0 outside the input's shape;
  a boolean input's read is ``Ne(name[..], 0)``.
"""
from __future__ import annotations

import sympy

from .formula_syntax import ARITHMETIC, COMPARISONS, SCORE_FUNCTIONS, FormulaError, Node, unparse
from .predicates import i, j

b = sympy.Symbol("b", integer=True, nonnegative=True)
h = sympy.Symbol("h", integer=True, nonnegative=True)
hk = sympy.Symbol("hk", integer=True, nonnegative=True)
s = sympy.Symbol("s", real=True)
SYMBOLS = {"b": b, "h": h, "hk": hk, "i": i, "j": j, "s": s}
NAME_TYPES = {"b": "int", "h": "int", "hk": "int", "i": "int", "j": "int", "s": "float", "inf": "float"}
DTYPE_TYPES = {"int32": "int", "int64": "int", "float32": "float", "bool": "bool"}


class sigmoid(sympy.Function):  # noqa: N801 - named as the formula function
    """1 / (1 + exp(-x)), kept whole so that kernels can print a stable sigmoid."""

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0]) * (1 - sigmoid(self.args[0]))

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sympy.exp(-x))


_FUNCTIONS = {"tanh": sympy.tanh, "exp": sympy.exp, "log": sympy.log, "sqrt": sympy.sqrt,
              "sigmoid": sigmoid}


class Checker:
    """Type-checks one tree for one field (`kind` "mask" or "score") against the declared inputs
    (`inputs`: name → (rank, dtype)); `check` returns (sympy expression, type)."""

    def __init__(self, text: str, kind: str, inputs: dict):
        self.text, self.kind, self.inputs = text, kind, inputs

    def fail(self, node: Node, reason: str):
        if node.span is None:
            piece, column = unparse(node), 0
        else:
            piece, column = self.text[node.span[0]:node.span[1]], node.span[0] + 1
        raise FormulaError("", self.text, reason, piece=piece, piece_column=column)

    def check(self, node: Node):
        return getattr(self, f"_{node.op}", self._arith)(node)

    def number(self, node: Node, what: str):
        expr, kind = self.check(node)
        if kind == "bool":
            self.fail(node, f"a boolean is used as a number ({what}); booleans are not numbers")
        return expr, kind

    def condition(self, node: Node, what: str):
        expr, kind = self.check(node)
        if kind != "bool":
            self.fail(node, f"{what} needs a boolean, got {kind}")
        return expr

    # -- leaves ------------------------------------------------------------------------------
    def _name(self, node):
        name = node.value
        if name == "s" and self.kind != "score":
            self.fail(node, "s (the score) is only allowed in score")
        if name == "inf":
            return sympy.oo, "float"
        if name in SYMBOLS:
            return SYMBOLS[name], NAME_TYPES[name]
        if name in self.inputs:
            rank = self.inputs[name][0]
            self.fail(node, f"input {name!r} has rank {rank}: read it as {name}[{', '.join(['..'] * rank)}]")
        self.fail(node, f"unknown name {name!r} (names: b, h, hk, i, j, "
                        f"{'s, ' if self.kind == 'score' else ''}inf"
                        f"{', ' if self.inputs else ''}{', '.join(self.inputs)}"
                        f"{'' if self.inputs else '; declare call-time tensors under inputs'})")

    def _const(self, node):
        value = node.value
        if isinstance(value, bool):
            return (sympy.true if value else sympy.false), "bool"
        if isinstance(value, int):
            return sympy.Integer(value), "int"
        return sympy.Float(value), "float"

    def _index(self, node):
        name = node.value
        if name not in self.inputs:
            known = ", ".join(self.inputs) or "none are declared"
            self.fail(node, f"{name!r} is not a declared input: only inputs can be indexed (inputs: {known})")
        rank, dtype = self.inputs[name]
        if len(node.args) != rank:
            self.fail(node, f"input {name!r} has rank {rank}, indexed with {len(node.args)} "
                            f"ind{'ex' if len(node.args) == 1 else 'ices'}")
        indices = []
        for arg in node.args:
            expr, kind = self.check(arg)
            if kind != "int":
                self.fail(arg, f"an index must be an integer, got {kind}")
            indices.append(expr)
        read = sympy.Indexed(sympy.IndexedBase(name), *indices)
        kind = DTYPE_TYPES[dtype]
        return (sympy.Ne(read, 0) if kind == "bool" else read), kind

    # -- operators ---------------------------------------------------------------------------
    def _neg(self, node):
        expr, kind = self.number(node.args[0], "unary -")
        return -expr, kind

    def _not(self, node):
        return sympy.Not(self.condition(node.args[0], "not / ~")), "bool"

    def _and(self, node):
        return self._boolean(node, sympy.And, "&")

    def _or(self, node):
        return self._boolean(node, sympy.Or, "|")

    def _boolean(self, node, combine, symbol):
        parts = []
        for arg in node.args:
            expr, kind = self.check(arg)
            if kind != "bool":
                if node.hint:
                    self.fail(node, f"{symbol} binds tighter than comparisons in Python, so this "
                                    f"{symbol} got {kind} operands; write {node.hint}")
                self.fail(arg, f"{symbol} / {'and' if symbol == '&' else 'or'} combine booleans, got "
                               f"{kind} (there are no bitwise integer operators)")
            parts.append(expr)
        return combine(*parts), "bool"

    def _arith(self, node):
        if node.op in COMPARISONS:
            return self._compare(node)
        if node.op not in ARITHMETIC:
            self.fail(node, f"{node.op} is not in the grammar")
        symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%",
                  "pow": "**"}[node.op]
        (x, kx), (y, ky) = (self.number(a, symbol) for a in node.args)
        if node.op in ("floordiv", "mod"):
            for arg, kind in zip(node.args, (kx, ky)):
                if kind != "int":
                    self.fail(arg, f"{symbol} takes integers (Python's floor semantics), got {kind}")
        if node.op in ("div", "floordiv", "mod") and y == 0:
            self.fail(node, "division by zero")
        kind = "float" if node.op in ("div", "pow") or "float" in (kx, ky) else "int"
        expr = {"add": lambda: x + y, "sub": lambda: x - y, "mul": lambda: x * y,
                "div": lambda: x / y, "floordiv": lambda: sympy.floor(x / y),
                "mod": lambda: sympy.Mod(x, y), "pow": lambda: x ** y}[node.op]()
        return expr, kind

    def _compare(self, node):
        (x, kx), (y, ky) = (self.check(a) for a in node.args)
        symbol = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}[node.op]
        if "bool" in (kx, ky):
            if kx != ky or node.op not in ("eq", "ne"):
                bad = node.args[0] if kx == "bool" else node.args[1]
                self.fail(bad, f"a boolean is compared with {symbol}: booleans compare only with "
                               "== and != to booleans")
            same = sympy.Equivalent(x, y)
            return (same if node.op == "eq" else sympy.Not(same)), "bool"
        relation = {"lt": sympy.Lt, "le": sympy.Le, "gt": sympy.Gt, "ge": sympy.Ge,
                    "eq": sympy.Eq, "ne": sympy.Ne}[node.op]
        return relation(x, y), "bool"

    def _call(self, node):
        name = node.value
        if name in SCORE_FUNCTIONS and self.kind != "score":
            self.fail(node, f"{name} is only allowed in score")
        if name == "where":
            return self._where(node)
        args = [self.number(a, f"argument of {name}") for a in node.args]
        if name in SCORE_FUNCTIONS:
            return _FUNCTIONS[name](args[0][0]), "float"
        kind = "float" if any(k == "float" for _, k in args) else "int"
        if name == "abs":
            return sympy.Abs(args[0][0]), kind
        return (sympy.Min if name == "min" else sympy.Max)(*(e for e, _ in args)), kind

    def _where(self, node):
        cond = self.condition(node.args[0], "where's first argument")
        (x, kx), (y, ky) = (self.check(a) for a in node.args[1:])
        if (kx == "bool") != (ky == "bool"):
            self.fail(node, f"where's branches must both be booleans or both numbers, got {kx} and {ky}")
        if kx == "bool":
            return sympy.Or(sympy.And(cond, x), sympy.And(sympy.Not(cond), y)), "bool"
        kind = "float" if "float" in (kx, ky) else "int"
        return sympy.Piecewise((x, cond), (y, True)), kind


def typed_sympy(node: Node, text: str, kind: str, inputs: dict):
    """(sympy form, type) of a checked tree; `FormulaError` if refused. The result must be a
    boolean for a mask and a number for a score."""
    expr, result = Checker(text, kind, inputs).check(node)
    if kind == "mask" and result != "bool":
        Checker(text, kind, inputs).fail(node, f"a mask formula must give a boolean, got {result} "
                                               "(compare it, e.g. `... != 0`)")
    if kind == "score" and result == "bool":
        Checker(text, kind, inputs).fail(node, "a score formula must give a number, got bool "
                                               "(use where(c, s, -inf) to mask by score)")
    if expr.has(sympy.zoo, sympy.nan):
        Checker(text, kind, inputs).fail(node, "is undefined (a division by zero or log(0))")
    return expr, result
