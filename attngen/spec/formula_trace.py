"""FlexAttention-style functions traced into formulas: `mask_mod(fn)` and `score_mod(fn)`.

``fn(b, h, i, j, **inputs)`` (a mask) or ``fn(s, b, h, i, j, **inputs)`` (a score) is called once
with proxies: each operator, index and ``torch.where/abs/minimum/maximum/tanh/exp`` (also
``log/sqrt/sigmoid/clamp``) on a proxy records a `formula_syntax.Node`, built with the same normalising
constructors the text parser uses, so the traced formula is the one its text gives: same canonical
text, same spec hash. The positional parameters are b, h, i, j (whatever their names; ``i`` is the
query *position*, see SPEC.md); the other parameters are inputs, named by their parameter names.

Python's ``and``/``or``/``not``, ``if`` and chained comparisons call ``bool()`` on a proxy, which
has no value while tracing: that raises a TypeError saying to use ``&``, ``|``, ``~`` or
``torch.where``. Nothing else of the function is evaluated on data: only its arithmetic is recorded.
"""
from __future__ import annotations

import inspect
import math

import torch

from .formula import Formula, ScoreFormula
from .formula_syntax import Node, boolean, compare, const, negate, unparse

_TORCH = {torch.where: "where", torch.abs: "abs", torch.minimum: "min", torch.maximum: "max",
          torch.tanh: "tanh", torch.exp: "exp", torch.log: "log", torch.sqrt: "sqrt",
          torch.sigmoid: "sigmoid"}


def _node(x) -> Node:
    if isinstance(x, Proxy):
        return x.node
    if isinstance(x, bool) or (isinstance(x, (int, float)) and not isinstance(x, complex)):
        if isinstance(x, float) and math.isnan(x):
            raise TypeError("a NaN constant cannot be traced into a formula")
        return const(x)
    if isinstance(x, torch.Tensor) and x.dim() == 0:
        return _node(x.item())
    raise TypeError(f"cannot trace {type(x).__name__} into a formula: use numbers and the arguments "
                    "of the traced function (inputs are passed as parameters, not captured)")


class Proxy:
    """A formula under construction. Supports what SPEC.md's grammar has, nothing else."""

    def __init__(self, node: Node):
        self.node = node

    def _binary(self, op, other, reflected=False):
        left, right = (_node(other), self.node) if reflected else (self.node, _node(other))
        return Proxy(Node(op, (left, right)))

    def __add__(self, o): return self._binary("add", o)            # noqa: E704
    def __radd__(self, o): return self._binary("add", o, True)     # noqa: E704
    def __sub__(self, o): return self._binary("sub", o)            # noqa: E704
    def __rsub__(self, o): return self._binary("sub", o, True)     # noqa: E704
    def __mul__(self, o): return self._binary("mul", o)            # noqa: E704
    def __rmul__(self, o): return self._binary("mul", o, True)     # noqa: E704
    def __truediv__(self, o): return self._binary("div", o)        # noqa: E704
    def __rtruediv__(self, o): return self._binary("div", o, True)  # noqa: E704
    def __floordiv__(self, o): return self._binary("floordiv", o)   # noqa: E704
    def __rfloordiv__(self, o): return self._binary("floordiv", o, True)  # noqa: E704
    def __mod__(self, o): return self._binary("mod", o)            # noqa: E704
    def __rmod__(self, o): return self._binary("mod", o, True)     # noqa: E704
    def __pow__(self, o): return self._binary("pow", o)            # noqa: E704
    def __rpow__(self, o): return self._binary("pow", o, True)     # noqa: E704

    def __neg__(self):
        return Proxy(negate(self.node))

    def __abs__(self):
        return Proxy(Node("call", (self.node,), "abs"))

    def __and__(self, o): return Proxy(boolean("and", (self.node, _node(o))))    # noqa: E704
    def __rand__(self, o): return Proxy(boolean("and", (_node(o), self.node)))   # noqa: E704
    def __or__(self, o): return Proxy(boolean("or", (self.node, _node(o))))      # noqa: E704
    def __ror__(self, o): return Proxy(boolean("or", (_node(o), self.node)))     # noqa: E704

    def __invert__(self):
        return Proxy(Node("not", (self.node,)))

    def __lt__(self, o): return Proxy(compare("lt", self.node, _node(o)))   # noqa: E704
    def __le__(self, o): return Proxy(compare("le", self.node, _node(o)))   # noqa: E704
    def __gt__(self, o): return Proxy(compare("gt", self.node, _node(o)))   # noqa: E704
    def __ge__(self, o): return Proxy(compare("ge", self.node, _node(o)))   # noqa: E704
    def __eq__(self, o): return Proxy(compare("eq", self.node, _node(o)))   # noqa: E704
    def __ne__(self, o): return Proxy(compare("ne", self.node, _node(o)))   # noqa: E704

    __hash__ = None

    def __bool__(self):
        raise TypeError("a traced formula has no truth value: use & | ~ instead of and/or/not, "
                        "torch.where instead of if, and (a <= x) & (x < c) instead of a <= x < c")

    def __getitem__(self, index):
        if self.node.op != "name" or self.node.value in ("b", "h", "hk", "i", "j", "s"):
            raise TypeError(f"only an input can be indexed, not {unparse(self.node)}")
        items = index if isinstance(index, tuple) else (index,)
        return Proxy(Node("index", tuple(_node(x) for x in items), self.node.value))

    def __index__(self):
        raise TypeError("a traced formula is not a Python integer: index inputs with it, as name[i]")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.clamp, torch.clip):
            return _clamp(*args, **(kwargs or {}))
        name = _TORCH.get(func)
        if name is None or kwargs:
            raise TypeError(f"{getattr(func, '__name__', func)} cannot be traced into a formula "
                            f"(traceable: {', '.join(sorted({f'torch.{f.__name__}' for f in _TORCH} | {'torch.clamp'}))})")
        return Proxy(Node("call", tuple(_node(a) for a in args), name))

    def __repr__(self):
        return f"Proxy({unparse(self.node)})"


def _clamp(x, min=None, max=None):   # noqa: A002 - torch.clamp's own keywords
    """torch.clamp(x, lo, hi) is min(max(x, lo), hi)."""
    node = _node(x)
    if min is not None:
        node = Node("call", (node, _node(min)), "max")
    if max is not None:
        node = Node("call", (node, _node(max)), "min")
    return Proxy(node)


def _trace(fn, leading: tuple[str, ...]) -> Node:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < len(leading):
        raise TypeError(f"{getattr(fn, '__name__', fn)} must take ({', '.join(leading)}, **inputs)")
    args = [Proxy(Node("name", (), name)) for name in leading]
    inputs = {p.name: Proxy(Node("name", (), p.name)) for p in params[len(leading):]
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    result = fn(*args, **inputs)
    return _node(result)


def mask_mod(fn) -> Formula:
    """The mask formula of a function ``fn(b, h, i, j, **inputs)`` returning a boolean."""
    node = _trace(fn, ("b", "h", "i", "j"))
    formula = Formula(unparse(node), node)
    if not formula.inputs_read:
        formula.sympy_form          # checks the types now
    return formula


def score_mod(fn) -> ScoreFormula:
    """The score formula of a function ``fn(s, b, h, i, j, **inputs)`` returning the new score."""
    node = _trace(fn, ("s", "b", "h", "i", "j"))
    formula = ScoreFormula(unparse(node), node)
    if not formula.inputs_read:
        formula.sympy_form
    return formula
