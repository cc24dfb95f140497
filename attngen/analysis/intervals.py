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

from ..spec.predicates import All_, Band, Blocks, Everything, Predicate, i, j

Bounds = tuple[sympy.Expr, sympy.Expr]


def key_interval(pred: Predicate) -> Bounds | None:
    """(L(i), R(i)) as sympy expressions in `i` (±oo when unbounded), or None if `pred` is not an
    interval predicate. Expects a normalised predicate."""
    return _interval(pred, i, transposed=False)


def query_interval(pred: Predicate) -> Bounds | None:
    """The transposed interval: (Linv(j), Rinv(j)) as sympy expressions in `j` such that the query
    positions that see key j are exactly Linv(j) <= i <= Rinv(j); None where `key_interval` is None.

    Linv(j) = min{i: R(i) >= j} and Rinv(j) = max{i: L(i) <= j}; both never decrease as j grows
    (L and R never decrease), and every interval holds j itself (every key interval holds i), so the
    key-major backward kernel takes closed-form query-tile ranges from them exactly as the forward
    takes key-tile ranges from (L, R). Band(left a, right b) gives [j - b, j + a]; blocks(s) gives
    j's block; an ``all`` intersects its parts' intervals (Max of the lower bounds, Min of the
    upper), since a query sees j under all parts iff it lies in each part's transposed interval."""
    return _interval(pred, j, transposed=True)


def _interval(pred: Predicate, x: sympy.Symbol, *, transposed: bool) -> Bounds | None:
    """Bounds in position `x`; transposing swaps a band's sides (blocks are symmetric)."""
    if isinstance(pred, Everything):
        return -sympy.oo, sympy.oo
    if isinstance(pred, Band):
        below, above = (pred.right, pred.left) if transposed else (pred.left, pred.right)
        return (-sympy.oo if below is None else x - below), (sympy.oo if above is None else x + above)
    if isinstance(pred, Blocks):
        start = pred.size * sympy.floor(x / pred.size)
        return start, start + pred.size - 1
    if isinstance(pred, All_):
        bounds = [_interval(part, x, transposed=transposed) for part in pred.parts]
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
