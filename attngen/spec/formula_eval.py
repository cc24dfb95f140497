"""A formula's sympy form evaluated on torch tensors: for the reference, dense masks and the
block-map refinement. It evaluates exactly the form the kernels are printed from.

Integers stay int64 (so ``floor(a / c)`` is an exact floored division and ``Mod`` a floored
remainder, as in Python), everything else is float64; booleans are torch bools. An input read
outside the input's shape gives 0 (False for booleans), without reading outside the tensor.
"""
from __future__ import annotations

import sympy
import torch

from ..errors import ShapeError
from .formula_types import sigmoid


class Env:
    """What a formula reads: `symbols` (sympy Symbol → tensor or int, broadcastable) and `inputs`
    (name → tensor as passed; bool, int or float)."""

    def __init__(self, symbols: dict, inputs: dict | None = None):
        self.symbols = symbols
        self.inputs = inputs or {}


def evaluate(expr: sympy.Basic, env: Env) -> torch.Tensor:
    """The value of `expr`: a tensor (or a Python scalar where nothing varies)."""
    return _Evaluator(env).run(expr)


def _is_int(x) -> bool:
    if isinstance(x, torch.Tensor):
        return not x.dtype.is_floating_point and x.dtype != torch.bool
    return isinstance(x, int) and not isinstance(x, bool)


def _float(x):
    if isinstance(x, torch.Tensor):
        return x if x.dtype.is_floating_point else x.to(torch.float64)
    return float(x)


def _fold(fn, values):
    out = values[0]
    for x in values[1:]:
        out = fn(out, x)
    return out


def _tensor(x, like=None):
    if isinstance(x, torch.Tensor):
        return x
    dtype = torch.bool if isinstance(x, bool) else (torch.int64 if isinstance(x, int) else torch.float64)
    return torch.tensor(x, dtype=dtype)


class _Evaluator:
    def __init__(self, env: Env):
        self.env = env

    def run(self, e):
        if isinstance(e, sympy.Symbol):
            if e not in self.env.symbols:
                raise ValueError(f"evaluating this formula needs {e}, which the context does not give")
            return self.env.symbols[e]
        method = getattr(self, f"_{type(e).__name__}", None)
        if method is None:
            for base in type(e).__mro__:
                method = getattr(self, f"_{base.__name__}", None)
                if method is not None:
                    break
        if method is None:
            raise NotImplementedError(f"cannot evaluate {type(e).__name__} ({e})")
        return method(e)

    def args(self, e):
        return [self.run(a) for a in e.args]

    # -- numbers and constants ---------------------------------------------------------------
    def _Integer(self, e):
        return int(e)

    def _Rational(self, e):
        return float(e)

    def _Float(self, e):
        return float(e)

    def _Infinity(self, e):
        return float("inf")

    def _NegativeInfinity(self, e):
        return float("-inf")

    def _BooleanTrue(self, e):
        return True

    def _BooleanFalse(self, e):
        return False

    # -- arithmetic ----------------------------------------------------------------------------
    # Mixed int/float arithmetic is float64: torch would make an int tensor times a Python float
    # float32 (its default dtype).
    def _Add(self, e):
        return _fold(lambda a, b: a + b, self._promoted(e))

    def _Mul(self, e):
        return _fold(lambda a, b: a * b, self._promoted(e))

    def _Pow(self, e):
        base, exponent = self.args(e)
        if exponent == 0.5:
            return torch.sqrt(_tensor(_float(base)))
        return _tensor(_float(base)) ** exponent

    def _floor(self, e):
        numerator, denominator = sympy.fraction(sympy.together(e.args[0]))
        top, bottom = self.run(numerator), self.run(denominator)
        if _is_int(top) and _is_int(bottom):
            bottom = _tensor(bottom)
            if bool((bottom == 0).any()):
                raise ValueError(f"floor division by zero in {e}")
            return torch.div(_tensor(top), bottom, rounding_mode="floor")
        return torch.floor(_tensor(_float(top)) / _float(bottom)).to(torch.int64)

    def _Mod(self, e):
        value, modulus = self.args(e)
        if _is_int(modulus) and bool((_tensor(modulus) == 0).any()):
            raise ValueError(f"modulo by zero in {e}")
        return torch.remainder(_tensor(value), _tensor(modulus))

    def _Min(self, e):
        return _fold(lambda a, b: torch.minimum(_tensor(a), _tensor(b)), self._promoted(e))

    def _Max(self, e):
        return _fold(lambda a, b: torch.maximum(_tensor(a), _tensor(b)), self._promoted(e))

    def _promoted(self, e):
        values = self.args(e)
        if all(_is_int(v) for v in values):
            return values
        return [_float(v) for v in values]

    def _Abs(self, e):
        return torch.abs(_tensor(self.run(e.args[0])))

    def _Piecewise(self, e):
        pieces = [(self.run(value), self.run(cond)) for value, cond in e.args]
        out = pieces[-1][0]
        if not all(_is_int(v) for v, _ in pieces):
            pieces = [(_float(v), c) for v, c in pieces]
            out = _float(out)
        for value, cond in reversed(pieces[:-1]):
            out = torch.where(_tensor(cond), _tensor(value), _tensor(out))
        return out

    def _tanh(self, e):
        return torch.tanh(_tensor(_float(self.run(e.args[0]))))

    def _exp(self, e):
        return torch.exp(_tensor(_float(self.run(e.args[0]))))

    def _log(self, e):
        return torch.log(_tensor(_float(self.run(e.args[0]))))

    def _sigmoid(self, e):
        return torch.sigmoid(_tensor(_float(self.run(e.args[0]))))

    # -- comparisons and logic -----------------------------------------------------------------
    def _Relational(self, e):
        x, y = self.args(e)
        op = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq,
              "!=": torch.ne}[e.rel_op]
        return op(_tensor(x), _tensor(y))

    def _And(self, e):
        return _fold(lambda a, b: _tensor(a) & _tensor(b), self.args(e))

    def _Or(self, e):
        return _fold(lambda a, b: _tensor(a) | _tensor(b), self.args(e))

    def _Not(self, e):
        return ~_tensor(self.run(e.args[0]))

    def _Equivalent(self, e):
        values = [_tensor(v) for v in self.args(e)]
        return _fold(lambda a, b: a & b, [v == values[0] for v in values[1:]])

    def _ITE(self, e):
        # sympy writes a where() nested in a condition as ITE(c, a, b) (booleans a, b)
        cond, yes, no = (_tensor(v) for v in self.args(e))
        return torch.where(cond, yes, no)

    def _Xor(self, e):
        return _fold(lambda a, b: _tensor(a) ^ _tensor(b), self.args(e))

    # -- inputs ----------------------------------------------------------------------------------
    def _Indexed(self, e):
        name = str(e.base.label)
        if name not in self.env.inputs:
            raise ShapeError(f"this formula reads input {name!r}, which was not passed")
        return read_input(self.env.inputs[name], [self.run(x) for x in e.indices])


def read_input(table: torch.Tensor, indices: list) -> torch.Tensor:
    """table[indices] elementwise over the broadcast indices; 0 (False) outside the shape."""
    idx = torch.broadcast_tensors(*[_tensor(x).to(table.device) for x in indices])
    inside = torch.ones(idx[0].shape, dtype=torch.bool, device=table.device)
    flat = torch.zeros(idx[0].shape, dtype=torch.int64, device=table.device)
    for size, x in zip(table.shape, idx):
        inside &= (x >= 0) & (x < size)
        flat = flat * size + x.clamp(0, max(size - 1, 0))
    values = table.reshape(-1)[flat]
    if table.dtype == torch.bool:
        return values & inside
    if table.dtype.is_floating_point:
        return torch.where(inside, values.to(torch.float64), torch.zeros((), dtype=torch.float64,
                                                                          device=table.device))
    return torch.where(inside, values.to(torch.int64), torch.zeros((), dtype=torch.int64, device=table.device))


_ = sigmoid   # evaluated by class name (_sigmoid)
