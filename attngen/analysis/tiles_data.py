"""Static block maps of masks whose formulas read call-time data: the batch, the heads or inputs.

Masks whose reads are per-(b, h) scalars get exact lists per call from the values instead
(`tiles_params`); this map serves the others (reads indexed by positions, floats, ...), varlen,
and every caller of `block_map` without input values. A tile's class must hold for every batch
row, every head and every input value, and the map is built once per shape, not per call. So each data-reading atom of a formula (a comparison, or a
boolean input, that mentions ``b``, ``h``, ``hk`` or an input) is replaced by a constant, by its
polarity (under an even or odd number of nots):

- the *upper* mask U: atoms True where positive, False where negated — U allows every pair the
  mask can allow for some data;
- the *lower* mask L: the opposite — L allows only pairs the mask allows for all data.

Both are input-free masks, mapped by the usual block map (`blockmap.block_map`). A tile is EMPTY
where U allows nothing in it, FULL where L allows all of it, PARTIAL otherwise: sound for any data
(a FULL tile never needs the mask, an EMPTY tile is never needed). The input-free parts keep their
classes: ``j <= i or j < prefix[b]`` is FULL below the diagonal and PARTIAL above it (the prefix
may reach any key). A formula the text form cannot rebuild is replaced whole (U: every pair, L:
none).
"""
from __future__ import annotations

import dataclasses

import sympy
import torch
from sympy.printing.str import StrPrinter

from ..errors import SpecError
from ..spec.formula import Formula
from ..spec.formula_types import SYMBOLS
from ..spec.predicates import All_, Any_, Everything, Not_, Nothing, Predicate

DATA = {SYMBOLS["b"], SYMBOLS["h"], SYMBOLS["hk"]}


def reads_data(pred: Predicate) -> bool:
    """Whether a formula of the mask reads the batch, a head or an input."""
    return any(isinstance(p, Formula) and p.needs_heads for p in pred.walk())


def bound(pred: Predicate, upper: bool) -> Predicate:
    """The input-free upper (`upper`) or lower bound of `pred` (see the module's docstring)."""
    if isinstance(pred, Formula):
        return _formula_bound(pred, upper) if pred.needs_heads else pred
    if isinstance(pred, Not_):
        return Not_(bound(pred.part, not upper))
    if isinstance(pred, (Any_, All_)):
        return type(pred)(tuple(bound(p, upper) for p in pred.parts))
    return pred


def _has_data(e) -> bool:
    return bool(e.free_symbols & DATA) or e.has(sympy.Indexed)


def _replace(e, positive: bool, upper: bool):
    if isinstance(e, sympy.Not):
        return sympy.Not(_replace(e.args[0], not positive, upper))
    if isinstance(e, (sympy.And, sympy.Or)):
        return e.func(*(_replace(a, positive, upper) for a in e.args))
    if _has_data(e):
        return sympy.true if upper == positive else sympy.false
    return e


def _formula_bound(pred: Formula, upper: bool) -> Predicate:
    whole = Everything() if upper else Nothing()
    e = _replace(pred.expr(), True, upper)
    if e == sympy.true:
        return Everything()
    if e == sympy.false:
        return Nothing()
    try:
        text = _Text().doprint(e)
        out = Formula.parse(text)
        # Kept only where the text parses back to the very bound (else the whole formula's bound).
        same = out.expr() == e or sympy.simplify_logic(sympy.Xor(out.expr(), e)) == sympy.false
        return out if same else whole
    except Exception:       # noqa: BLE001 - any failure to rebuild: the whole formula's bound
        return whole


class _Text(StrPrinter):
    """sympy boolean/integer forms back into formula text (SPEC.md, "Expressions")."""

    def _print_And(self, e):
        return " and ".join(f"({self._print(a)})" for a in e.args)

    def _print_Or(self, e):
        return " or ".join(f"({self._print(a)})" for a in e.args)

    def _print_Not(self, e):
        return f"not ({self._print(e.args[0])})"

    def _print_Relational(self, e):
        return f"({self._print(e.lhs)}) {e.rel_op} ({self._print(e.rhs)})"

    def _print_BooleanTrue(self, e):
        return "True"

    def _print_BooleanFalse(self, e):
        return "False"

    def _print_floor(self, e):
        num, den = sympy.fraction(sympy.together(e.args[0]))
        return f"(({self._print(num)}) // ({self._print(den)}))"

    def _print_Mod(self, e):
        return f"(({self._print(e.args[0])}) % ({self._print(e.args[1])}))"

    def _print_Min(self, e):
        return self._fold("min", e.args)

    def _print_Max(self, e):
        return self._fold("max", e.args)

    def _fold(self, fn, args):
        out = self._print(args[0])
        for a in args[1:]:
            out = f"{fn}({out}, {self._print(a)})"
        return out

    def _print_Abs(self, e):
        return f"abs({self._print(e.args[0])})"

    def _print_Piecewise(self, e):
        *pieces, (last, _) = e.args
        out = self._print(last)
        for value, cond in reversed(pieces):
            out = f"where({self._print(cond)}, {self._print(value)}, {out})"
        return out

    def _print_Infinity(self, e):
        return "inf"

    def _print_NegativeInfinity(self, e):
        return "-inf"


def input_free_spec(spec, upper: bool):
    """`spec` with its mask replaced by its input-free bound, and no inputs, score or sink (what a
    block map reads: the mask alone); None where the bound allows no pair."""
    mask = bound(spec.effective_mask, upper)
    try:
        return dataclasses.replace(spec, causal=False, mask=None if isinstance(mask, Everything) else mask,
                                   inputs=(), score=None, sink=False)
    except SpecError:            # "allows no (i, j) pair at all": no tile is full (or non-empty)
        return None


def data_bounded_keys(spec, build):
    """The tiles of a data-reading mask from the maps of its bounds (`build(spec)`: the block map
    of an input-free spec): (geometry, sorted keys of the PARTIAL tiles, of the FULL tiles,
    unresolved). EMPTY outside U's non-empty tiles, FULL on L's full tiles."""
    upper_spec, lower_spec = input_free_spec(spec, True), input_free_spec(spec, False)
    upper = None if upper_spec is None else build(upper_spec)
    lower = None if lower_spec is None else build(lower_spec)
    maps = [m for m in (upper, lower) if m is not None]
    geom = maps[0].geometry if maps else build(dataclasses.replace(
        spec, causal=False, mask=None, inputs=(), score=None, sink=False)).geometry

    def keys(ptr, idx):
        rows = torch.repeat_interleave(torch.arange(len(ptr) - 1, device=ptr.device), (ptr[1:] - ptr[:-1]).long())
        return rows * geom.num_k_tiles + idx.to(torch.int64)

    none = torch.zeros(0, dtype=torch.int64, device=geom.device)
    nonempty = torch.cat([keys(upper.partial_ptr, upper.partial_idx), keys(upper.full_ptr, upper.full_idx)]) \
        if upper is not None else none
    full = keys(lower.full_ptr, lower.full_idx) if lower is not None else none
    partial = torch.sort(nonempty[~torch.isin(nonempty, full)]).values
    return geom, partial, full, sum(m.unresolved for m in maps)
