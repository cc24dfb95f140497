"""Formula text → `Node` trees, and `Node` trees → canonical text. Parsed, never evaluated.

The text is read with Python's own parser (`ast.parse(mode="eval")`, which builds a tree and runs
nothing), then every node is checked against an explicit whitelist: a node type that is not
listed here is refused with its column, so attribute access, calls of anything but the formula
functions, lambdas, comprehensions, f-strings, starred arguments and the walrus never get past
this module. No `eval`, no `compile`, no sympy `parse_expr`.

The tree is normalised as it is built, so that texts that mean the same by Python's own rules,
and the same function traced through proxies (`formula_trace`), give equal trees and one
canonical text:
- ``a < b < c`` is ``a < b and b < c``; ``&``/``and`` are one n-ary ``and`` (nested ones
  flattened), likewise ``|``/``or``; ``~`` and ``not`` are one ``not``;
- a comparison with a number on the left and an expression on the right is flipped
  (``0 <= x`` is ``x >= 0``): Python does the same when a traced proxy stands on the right;
- ``-3`` is the number -3; a float infinity is the name ``inf``.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field

from ..errors import SpecError

MAX_LENGTH = 4096
FUNCTIONS = {"min": 2, "max": 2, "abs": 1, "where": 3}           # name → arity
SCORE_FUNCTIONS = {"tanh": 1, "exp": 1, "log": 1, "sqrt": 1, "sigmoid": 1}
NAMES = ("b", "h", "hk", "i", "j", "s", "inf")

_BINARY = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.FloorDiv: "floordiv",
           ast.Mod: "mod", ast.Pow: "pow", ast.BitAnd: "and", ast.BitOr: "or"}
_COMPARE = {ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge", ast.Eq: "eq", ast.NotEq: "ne"}
FLIPPED = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%", "pow": "**",
          "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
COMPARISONS = tuple(_COMPARE.values())
ARITHMETIC = ("add", "sub", "mul", "div", "floordiv", "mod", "pow")

# Why a node type outside the whitelist is refused, by ast class name.
_REFUSED = {
    "Attribute": "attribute access is not allowed in a formula",
    "Lambda": "lambdas are not allowed in a formula",
    "ListComp": "comprehensions are not allowed in a formula",
    "SetComp": "comprehensions are not allowed in a formula",
    "DictComp": "comprehensions are not allowed in a formula",
    "GeneratorExp": "comprehensions are not allowed in a formula",
    "JoinedStr": "f-strings are not allowed in a formula",
    "FormattedValue": "f-strings are not allowed in a formula",
    "Starred": "starred arguments are not allowed in a formula",
    "NamedExpr": "assignment (:=) is not allowed in a formula",
    "IfExp": "`a if c else b` is not in the grammar: write where(c, a, b)",
    "Await": "await is not allowed in a formula",
    "Yield": "yield is not allowed in a formula",
    "YieldFrom": "yield is not allowed in a formula",
    "List": "lists are not allowed in a formula",
    "Tuple": "tuples are only allowed as the indices of an input, name[e1, e2]",
    "Set": "sets are not allowed in a formula",
    "Dict": "dicts are not allowed in a formula",
    "Slice": "slices are not allowed: an input is read at integer indices, name[e1, e2]",
}


class FormulaError(SpecError):
    """A refused formula: `piece` is the offending part of the text, `piece_column` its 1-based
    column in the formula (the YAML line and column, when known, are those of the field)."""

    def __init__(self, field: str, value, reason: str, *, piece: str = "", piece_column: int = 0,
                 **where):
        self.piece, self.piece_column = piece, piece_column
        super().__init__(field, value, reason, **where)

    def _render(self) -> str:
        return super()._render() + (f" (at column {self.piece_column}: {self.piece!r})"
                                    if self.piece else "")


@dataclass(frozen=True)
class Node:
    """One node of a formula: `op` names it (``name``, ``const``, ``neg``, ``not``, an arithmetic
    or comparison op, ``and``/``or`` (n-ary), ``call``, ``index``); `value` is the name, the
    constant, the function or the input; `span` the (start, end) offsets in the text it came from
    (None when traced). `hint` carries a fix to suggest if the type check refuses the node."""

    op: str
    args: tuple = ()
    value: object = None
    span: tuple[int, int] | None = field(default=None, compare=False)
    hint: str | None = field(default=None, compare=False)


def const(value, span=None) -> Node:
    """A number or boolean; infinities become the name ``inf``."""
    if isinstance(value, float) and math.isinf(value):
        inf = Node("name", (), "inf", span)
        return inf if value > 0 else Node("neg", (inf,), None, span)
    return Node("const", (), value, span)


def negate(x: Node, span=None) -> Node:
    if x.op == "const" and not isinstance(x.value, bool):
        return const(-x.value, span)
    return Node("neg", (x,), None, span)


def boolean(op: str, parts, span=None, hint=None) -> Node:
    """n-ary and/or, nested ones of the same op flattened."""
    flat = []
    for part in parts:
        flat.extend(part.args if part.op == op else (part,))
    return Node(op, tuple(flat), None, span, hint)


def compare(op: str, left: Node, right: Node, span=None) -> Node:
    if left.op == "const" and right.op != "const":
        op, left, right = FLIPPED[op], right, left
    return Node(op, (left, right), None, span)


# ---------------------------------------------------------------------------------------------
# Text → Node
# ---------------------------------------------------------------------------------------------
class _Reader:
    """Turns one whitelisted ast tree into a Node tree, refusing everything else."""

    def __init__(self, text: str):
        self.text = text
        self._starts = [0]
        for line in text.split("\n")[:-1]:
            self._starts.append(self._starts[-1] + len(line) + 1)

    def span(self, node) -> tuple[int, int]:
        return (self._starts[node.lineno - 1] + node.col_offset,
                self._starts[node.end_lineno - 1] + node.end_col_offset)

    def fail(self, node, reason: str):
        start, end = self.span(node)
        raise FormulaError("", self.text, reason, piece=self.text[start:end], piece_column=start + 1)

    def read(self, node) -> Node:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            self.fail(node, _REFUSED.get(type(node).__name__,
                                         f"{type(node).__name__} is not in the formula grammar"))
        return method(node)

    def _Constant(self, node):
        value = node.value
        if isinstance(value, bool) or (isinstance(value, (int, float)) and not isinstance(value, complex)):
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2 ** 62:
                self.fail(node, "integer constants must be below 2**62 in size")
            return const(value, self.span(node))
        kind = "strings" if isinstance(value, (str, bytes)) else f"{type(value).__name__} constants"
        self.fail(node, f"{kind} are not allowed in a formula (numbers, True, False)")

    def _Name(self, node):
        return Node("name", (), node.id, self.span(node))

    def _UnaryOp(self, node):
        operand = self.read(node.operand)
        if isinstance(node.op, ast.USub):
            return negate(operand, self.span(node))
        if isinstance(node.op, (ast.Not, ast.Invert)):
            return Node("not", (operand,), None, self.span(node))
        self.fail(node, "unary + is not in the grammar (unary -, ~ and not are)")

    def _BinOp(self, node):
        op = _BINARY.get(type(node.op))
        if op is None:
            self.fail(node, f"operator {_op_text(node.op)} is not in the grammar "
                            "(+ - * / // % ** and & | for booleans)")
        left, right = self.read(node.left), self.read(node.right)
        if op in ("and", "or"):
            return boolean(op, (left, right), self.span(node), getattr(node, "hint", None))
        return Node(op, (left, right), None, self.span(node))

    def _BoolOp(self, node):
        op = "and" if isinstance(node.op, ast.And) else "or"
        return boolean(op, [self.read(v) for v in node.values], self.span(node))

    def _Compare(self, node):
        operands = [node.left, *node.comparators]
        for op in node.ops:
            if type(op) not in _COMPARE:
                self.fail(node, f"{_op_text(op)} is not in the grammar (< <= > >= == !=)")
        self._mark_precedence_trap(node, operands)
        read = [self.read(x) for x in operands]
        pairs = [compare(_COMPARE[type(op)], read[n], read[n + 1], self.span(node))
                 for n, op in enumerate(node.ops)]
        return pairs[0] if len(pairs) == 1 else boolean("and", pairs, self.span(node))

    def _mark_precedence_trap(self, node, operands):
        """`a <= 1 & j <= i` parses as `a <= (1 & j) <= i`: remember the fix the user meant."""
        start, end = self.span(node)
        for x in operands:
            if isinstance(x, ast.BinOp) and isinstance(x.op, (ast.BitAnd, ast.BitOr)) \
                    and not self._parenthesised(x):
                cut_left, cut_right = self.span(x.left)[1], self.span(x.right)[0]
                symbol = "&" if isinstance(x.op, ast.BitAnd) else "|"
                x.hint = (f"({self.text[start:cut_left].strip()}) {symbol} "
                          f"({self.text[cut_right:end].strip()})")

    def _parenthesised(self, node) -> bool:
        start, end = self.span(node)
        return self.text[:start].rstrip().endswith("(") and self.text[end:].lstrip().startswith(")")

    def _Call(self, node):
        if not isinstance(node.func, ast.Name):
            self.fail(node.func, "only the formula functions can be called "
                                 f"({', '.join([*FUNCTIONS, *SCORE_FUNCTIONS])})")
        if node.keywords:
            self.fail(node, "keyword arguments are not allowed in a formula")
        name = node.func.id
        arity = {**FUNCTIONS, **SCORE_FUNCTIONS}.get(name)
        if arity is None:
            self.fail(node.func, f"unknown function {name!r} (functions: "
                                 f"{', '.join([*FUNCTIONS, *SCORE_FUNCTIONS])})")
        args = [self.read(a) for a in node.args]             # a Starred arg is refused here
        if len(args) != arity:
            self.fail(node, f"{name} takes {arity} argument{'s' * (arity > 1)}, got {len(args)}")
        return Node("call", tuple(args), name, self.span(node))

    def _Subscript(self, node):
        if not isinstance(node.value, ast.Name):
            self.fail(node, "only a declared input can be indexed, as name[e1, e2]")
        index = node.slice
        items = index.elts if isinstance(index, ast.Tuple) else [index]
        return Node("index", tuple(self.read(x) for x in items), node.value.id, self.span(node))


def _op_text(op) -> str:
    return {ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>", ast.MatMult: "@", ast.Is: "is",
            ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}.get(type(op), type(op).__name__)


def parse_formula(text) -> Node:
    """The normalised tree of a formula's text; `FormulaError` (a SpecError) if refused."""
    if not isinstance(text, str):
        raise FormulaError("", text, "must be a formula string")
    if not text.strip():
        raise FormulaError("", text, "is an empty formula")
    if len(text) > MAX_LENGTH:
        raise FormulaError("", text[:40] + "...", f"is longer than {MAX_LENGTH} characters")
    bad = next((n for n, c in enumerate(text) if not (c.isascii() and (c.isprintable() or c in "\n\t"))), None)
    if bad is not None:
        raise FormulaError("", text, "formulas are plain ASCII text", piece=text[bad], piece_column=bad + 1)
    try:
        tree = ast.parse(text.replace("\t", " "), mode="eval")
    except SyntaxError as err:
        column = err.offset or 1
        line_start = sum(len(x) + 1 for x in text.split("\n")[: (err.lineno or 1) - 1])
        at = min(line_start + column - 1, len(text) - 1)
        raise FormulaError("", text, f"is not a valid expression ({err.msg})",
                           piece=text[at:at + 10], piece_column=at + 1) from None
    except (RecursionError, MemoryError, ValueError):
        raise FormulaError("", text[:40], "is nested too deeply") from None
    return _Reader(text).read(tree.body)


# ---------------------------------------------------------------------------------------------
# Node → canonical text
# ---------------------------------------------------------------------------------------------
_PRECEDENCE = {"or": 1, "and": 2, "not": 3, **{op: 4 for op in COMPARISONS}, "add": 8, "sub": 8,
               "mul": 9, "div": 9, "floordiv": 9, "mod": 9, "neg": 10, "pow": 11}
_ATOM = 12


def precedence(node: Node) -> int:
    if node.op == "const" and not isinstance(node.value, bool) and node.value < 0:
        return _PRECEDENCE["neg"]
    return _PRECEDENCE.get(node.op, _ATOM)


def unparse(node: Node) -> str:
    """The canonical text of a tree: Python syntax, `and`/`or`/`not`, the fewest parentheses."""
    op, args = node.op, node.args
    if op == "name":
        return node.value
    if op == "const":
        return repr(node.value)
    if op == "call":
        return f"{node.value}({', '.join(unparse(a) for a in args)})"
    if op == "index":
        return f"{node.value}[{', '.join(unparse(a) for a in args)}]"
    mine = _PRECEDENCE[op]
    if op == "neg":
        return "-" + _wrap(args[0], precedence(args[0]) < mine)
    if op == "not":
        return "not " + _wrap(args[0], precedence(args[0]) < mine)
    if op in ("and", "or"):
        return f" {op} ".join(_wrap(a, precedence(a) <= mine) for a in args)
    left, right = args
    if op in COMPARISONS:
        return f"{_wrap(left, precedence(left) <= mine)} {SYMBOL[op]} {_wrap(right, precedence(right) <= mine)}"
    if op == "pow":
        return f"{_wrap(left, precedence(left) <= mine)} ** {_wrap(right, precedence(right) < _PRECEDENCE['neg'])}"
    return f"{_wrap(left, precedence(left) < mine)} {SYMBOL[op]} {_wrap(right, precedence(right) <= mine)}"


def _wrap(node: Node, parens: bool) -> str:
    text = unparse(node)
    return f"({text})" if parens else text


def walk(node: Node):
    yield node
    for arg in node.args:
        yield from walk(arg)


def input_names(node: Node) -> tuple[str, ...]:
    """The inputs a formula may read (indexed names, and bare names that are not formula names),
    in order of first appearance: their declarations decide its types."""
    return tuple(dict.fromkeys(n.value for n in walk(node)
                               if n.op == "index" or (n.op == "name" and n.value not in NAMES)))
