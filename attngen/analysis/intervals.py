"""Interval predicates: masks whose allowed keys for query i form one interval [L(i), R(i)].

Band, causal (a band), blocks and any ``all`` of them are such masks, and their bounds L and R never
decrease as i grows. That is what makes closed-form tile ranges exact: for a query tile holding
positions i0..i1,
- the key tiles that may hold an allowed pair are those meeting [L(i0), R(i1)];
- the key tiles where every pair is allowed are those inside [L(i1), R(i0)].
The kernels compute both from their program id with these formulas and load no index list.
"""
from __future__ import annotations

import sympy

from ..spec.predicates import All_, Band, Blocks, Everything, Predicate, i

Bounds = tuple[sympy.Expr, sympy.Expr]


def key_interval(pred: Predicate) -> Bounds | None:
    """(L(i), R(i)) as sympy expressions in `i` (±oo when unbounded), or None if `pred` is not an
    interval predicate. Expects a normalised predicate."""
    if isinstance(pred, Everything):
        return -sympy.oo, sympy.oo
    if isinstance(pred, Band):
        low = -sympy.oo if pred.left is None else i - pred.left
        high = sympy.oo if pred.right is None else i + pred.right
        return low, high
    if isinstance(pred, Blocks):
        start = pred.size * sympy.floor(i / pred.size)
        return start, start + pred.size - 1
    if isinstance(pred, All_):
        bounds = [key_interval(part) for part in pred.parts]
        if any(b is None for b in bounds):
            return None
        return sympy.Max(*[b[0] for b in bounds]), sympy.Min(*[b[1] for b in bounds])
    return None


def evaluate_bound(bound: sympy.Expr, positions):
    """A bound evaluated on an int64 torch tensor of positions (±oo become ±2**62)."""
    import torch

    big = 2 ** 62
    if bound == sympy.oo:
        return torch.full_like(positions, big)
    if bound == -sympy.oo:
        return torch.full_like(positions, -big)
    fn = sympy.lambdify(i, bound, modules=[{"floor": lambda x: torch.floor(x).to(torch.int64),
                                             "Max": _tmax, "Min": _tmin}, "math"])
    out = fn(positions)
    if not isinstance(out, torch.Tensor):
        out = torch.full_like(positions, int(out))
    return out.to(torch.int64)


def _tmax(*xs):
    import torch
    out = xs[0]
    for x in xs[1:]:
        out = torch.maximum(torch.as_tensor(out), torch.as_tensor(x))
    return out


def _tmin(*xs):
    import torch
    out = xs[0]
    for x in xs[1:]:
        out = torch.minimum(torch.as_tensor(out), torch.as_tensor(x))
    return out
