"""Mask predicates: what each one means, three ways.

Every predicate is an immutable value with
- ``to_dict()``: its canonical YAML form (``{"band": {"left": 3, "right": 3}}``);
- ``expr()``: its meaning as a sympy boolean over the integer symbols ``i`` (query position) and
  ``j`` (key position). Tables that only exist at call time (random draws, segment ids) appear as
  applied sympy functions (``random_hit``, ``seg_q``, ``seg_k``) whose meaning `EvalContext` gives;
- ``evaluate(ii, jj, ctx)``: the same meaning evaluated on torch tensors of positions, written
  independently of the sympy form so that each checks the other.

Predicates compose with ``|``, ``&`` and ``~``. Python's ``and``/``or``/``not`` would silently call
``bool()`` on a predicate; that raises a TypeError that says what to write instead.
Positions follow SPEC.md: ``i = q_index + q_offset``, ``j = k_index``; ``i`` may be negative when
there are more queries than keys, ``j`` never is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import sympy
import torch

from ..errors import SpecError

# The two position symbols every predicate is written in. ``j`` is a key index, never negative,
# which lets the code printer use plain ``%`` and ``//`` on it.
i = sympy.Symbol("i", integer=True)
j = sympy.Symbol("j", integer=True, nonnegative=True)

# Call-time tables, as undefined sympy functions. random_hit(query_block, key_block, per_row, block,
# seed) is true where the key block was drawn for the query block; seg_q(i) / seg_k(j) are the
# segment ids of query position i and key j.
random_hit = sympy.Function("random_hit")
seg_q = sympy.Function("seg_q")
seg_k = sympy.Function("seg_k")


@dataclass
class EvalContext:
    """What a predicate needs to be evaluated at concrete sizes.

    `random_table(pred)` returns ``(first_query_block, table)`` with ``table[qb - first_query_block]``
    the sorted key blocks drawn for query block ``qb`` (see `attngen.spec.random_draw`).
    `seg_rows` / `seg_cols` are segment ids already shaped to broadcast against the position grids.
    Query row r is position ``r + q_offset``, key index c position ``c + k_offset`` (a chunk of a
    longer sequence; 0 otherwise).
    Formulas (`attngen.spec.formula`) may also read `batch` and `heads` (indices shaped to
    broadcast against the grids, e.g. (B, 1, 1, 1) and (1, Hq, 1, 1)), the kv head ``h // group``
    and the call's `inputs` by name; none of the built-in predicates reads them.
    """

    nq: int
    nk: int
    q_offset: int
    k_offset: int = 0
    seg_rows: torch.Tensor | None = None
    seg_cols: torch.Tensor | None = None
    random_table: Callable | None = None
    batch: torch.Tensor | None = None
    heads: torch.Tensor | None = None
    group: int = 1
    inputs: dict = field(default_factory=dict)


# Widths, sizes and token positions: kernels compute positions and i ± width in int32, which
# holds for positions below 2**30 and widths up to 2**30 (a width past every length means the same
# as an unbounded side: leave the side out).
MAX_POSITION_INT = 2**30


def _int_field(name: str, value, *, minimum: int | None = None,
               maximum: int | None = MAX_POSITION_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, value, "must be an integer")
    if minimum is not None and value < minimum:
        raise SpecError(name, value, f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise SpecError(name, value, f"must be <= {maximum:,} (2**30): kernels compute positions "
                                     "in int32 (for an unbounded band side, leave the side out)")
    return value


class Predicate:
    """Base of every mask predicate. Subclasses are frozen dataclasses."""

    def __or__(self, other: "Predicate") -> "Predicate":
        return Any_((self, _as_predicate(other)))

    def __and__(self, other: "Predicate") -> "Predicate":
        return All_((self, _as_predicate(other)))

    def __invert__(self) -> "Predicate":
        return Not_(self)

    def __bool__(self):
        raise TypeError("a mask predicate has no truth value: combine predicates with | (or), "
                        "& (and) and ~ (not), not with Python's `or`, `and`, `not`")

    def children(self) -> tuple["Predicate", ...]:
        return ()

    def to_dict(self) -> dict:
        raise NotImplementedError(type(self).__name__)

    def expr(self) -> sympy.Basic:
        raise NotImplementedError(type(self).__name__)

    def evaluate(self, ii: torch.Tensor, jj: torch.Tensor, ctx: EvalContext) -> torch.Tensor:
        raise NotImplementedError(type(self).__name__)

    def sort_key(self) -> str:
        return repr(self.to_dict())

    def walk(self):
        """This predicate and every predicate below it, depth first."""
        yield self
        for child in self.children():
            yield from child.walk()

    def __repr__(self) -> str:
        return f"{type(self).__name__.rstrip('_')}({self.to_dict()!r})"


def _as_predicate(value) -> Predicate:
    if not isinstance(value, Predicate):
        raise TypeError(f"cannot combine a mask predicate with {type(value).__name__}: "
                        "build both sides with attngen's predicate functions")
    return value


def _floor_div(x: torch.Tensor, d: int) -> torch.Tensor:
    return torch.div(x, d, rounding_mode="floor")


# ---------------------------------------------------------------------------------------------
# Leaves
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class Everything(Predicate):
    """Every pair allowed (no mask)."""

    def to_dict(self):
        return {"all": []}

    def expr(self):
        return sympy.true

    def evaluate(self, ii, jj, ctx):
        return torch.ones(torch.broadcast_shapes(ii.shape, jj.shape), dtype=torch.bool, device=ii.device)


@dataclass(frozen=True, repr=False)
class Nothing(Predicate):
    """No pair allowed."""

    def to_dict(self):
        return {"any": []}

    def expr(self):
        return sympy.false

    def evaluate(self, ii, jj, ctx):
        return torch.zeros(torch.broadcast_shapes(ii.shape, jj.shape), dtype=torch.bool, device=ii.device)


@dataclass(frozen=True, repr=False)
class Causal(Predicate):
    """``j <= i``. Normalisation rewrites it as ``Band(left=None, right=0)``."""

    def to_dict(self):
        return {"causal": True}

    def expr(self):
        return sympy.Le(j, i)

    def evaluate(self, ii, jj, ctx):
        return jj <= ii


@dataclass(frozen=True, repr=False)
class Band(Predicate):
    """``i - left <= j <= i + right``; a side that is None is unbounded."""

    left: int | None = None
    right: int | None = None

    def __post_init__(self):
        if self.left is None and self.right is None:
            raise SpecError("", {}, "needs at least one of left, right")
        for side in ("left", "right"):
            value = getattr(self, side)
            if value is not None:
                _int_field(side, value, minimum=0)

    def to_dict(self):
        sides = {k: v for k, v in (("left", self.left), ("right", self.right)) if v is not None}
        return {"band": sides}

    def expr(self):
        parts = []
        if self.left is not None:
            parts.append(sympy.Ge(j, i - self.left))
        if self.right is not None:
            parts.append(sympy.Le(j, i + self.right))
        return sympy.And(*parts)

    def evaluate(self, ii, jj, ctx):
        ok = torch.ones(torch.broadcast_shapes(ii.shape, jj.shape), dtype=torch.bool, device=ii.device)
        if self.left is not None:
            ok = ok & (jj >= ii - self.left)
        if self.right is not None:
            ok = ok & (jj <= ii + self.right)
        return ok


@dataclass(frozen=True, repr=False)
class Stride(Predicate):
    """``(i - j) mod every == 0`` (Sparse Transformer, strided)."""

    every: int

    def __post_init__(self):
        _int_field("every", self.every, minimum=1)

    def to_dict(self):
        return {"stride": {"every": self.every}}

    def expr(self):
        return sympy.Eq(sympy.Mod(i - j, self.every), 0)

    def evaluate(self, ii, jj, ctx):
        return torch.remainder(ii - jj, self.every) == 0


@dataclass(frozen=True, repr=False)
class Columns(Predicate):
    """``j mod every >= every - width`` (Sparse Transformer, fixed: the summary columns)."""

    every: int
    width: int

    def __post_init__(self):
        _int_field("every", self.every, minimum=1)
        _int_field("width", self.width, minimum=1)
        if self.width > self.every:
            raise SpecError("width", self.width, f"must be <= every ({self.every})")

    def to_dict(self):
        return {"columns": {"every": self.every, "width": self.width}}

    def expr(self):
        return sympy.Ge(sympy.Mod(j, self.every), self.every - self.width)

    def evaluate(self, ii, jj, ctx):
        return (torch.remainder(jj, self.every) >= self.every - self.width).expand(
            torch.broadcast_shapes(ii.shape, jj.shape))


@dataclass(frozen=True, repr=False)
class GlobalTokens(Predicate):
    """``i in G or j in G``: G is ``{0, .., first-1}`` or an explicit sorted token tuple."""

    first: int | None = None
    tokens: tuple[int, ...] | None = None

    def __post_init__(self):
        if (self.first is None) == (self.tokens is None):
            raise SpecError("", {"first": self.first, "tokens": self.tokens},
                            "needs exactly one of first, tokens")
        if self.first is not None:
            _int_field("first", self.first, minimum=1)
        else:
            if not isinstance(self.tokens, tuple) or not self.tokens:
                raise SpecError("tokens", self.tokens, "must be a non-empty list of token positions")
            for n, token in enumerate(self.tokens):
                _int_field(f"tokens[{n}]", token, minimum=0)
            if len(set(self.tokens)) != len(self.tokens):
                dup = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
                raise SpecError("tokens", list(self.tokens), f"has duplicate positions {dup}")
            if list(self.tokens) != sorted(self.tokens):
                object.__setattr__(self, "tokens", tuple(sorted(self.tokens)))

    def to_dict(self):
        if self.first is not None:
            return {"global": {"first": self.first}}
        return {"global": {"tokens": list(self.tokens)}}

    def expr(self):
        if self.first is not None:
            return sympy.Or(sympy.And(i >= 0, i < self.first), j < self.first)
        return sympy.Or(*[sympy.Eq(i, t) for t in self.tokens], *[sympy.Eq(j, t) for t in self.tokens])

    def members(self, positions: torch.Tensor) -> torch.Tensor:
        if self.first is not None:
            return (positions >= 0) & (positions < self.first)
        table = torch.tensor(self.tokens, dtype=positions.dtype, device=positions.device)
        return torch.isin(positions, table)

    def evaluate(self, ii, jj, ctx):
        return self.members(ii) | self.members(jj)


@dataclass(frozen=True, repr=False)
class Blocks(Predicate):
    """``i // size == j // size`` (block-diagonal local attention; floor division)."""

    size: int

    def __post_init__(self):
        _int_field("size", self.size, minimum=1)

    def to_dict(self):
        return {"blocks": {"size": self.size}}

    def expr(self):
        return sympy.Eq(sympy.floor(i / self.size), sympy.floor(j / self.size))

    def evaluate(self, ii, jj, ctx):
        return _floor_div(ii, self.size) == _floor_div(jj, self.size)


@dataclass(frozen=True, repr=False)
class Random(Predicate):
    """Key block ``j // block`` is one of the `per_row` blocks drawn for query block ``i // block``.

    The draw is `attngen.spec.random_draw.draw_key_blocks`: a function of (seed, query block,
    number of key blocks, per_row) alone, so it is the same on every device and for every tile size.
    """

    per_row: int
    block: int
    seed: int = 0

    def __post_init__(self):
        _int_field("per_row", self.per_row, minimum=1)
        _int_field("block", self.block, minimum=1)
        _int_field("seed", self.seed, minimum=0, maximum=None)
        if self.seed >= 2**64:                     # the draw hashes the seed as a uint64
            raise SpecError("seed", self.seed, "must be < 2**64")

    def to_dict(self):
        return {"random": {"per_row": self.per_row, "block": self.block, "seed": self.seed}}

    def expr(self):
        return sympy.Eq(random_hit(sympy.floor(i / self.block), sympy.floor(j / self.block),
                                   self.per_row, self.block, self.seed), 1)

    def evaluate(self, ii, jj, ctx):
        if ctx.random_table is None:
            raise ValueError("evaluating a random mask needs the call's sizes (random_table)")
        first_block, table = ctx.random_table(self)
        query_block = _floor_div(ii, self.block) - first_block
        key_block = _floor_div(jj, self.block)
        drawn = table[query_block]                         # [..., nq, 1, per_row]
        return (drawn == key_block.unsqueeze(-1)).any(-1)


@dataclass(frozen=True, repr=False)
class Segments(Predicate):
    """``seg_q[i] == seg_k[j]``: segment ids passed at call time (packed documents).

    ``seg_q`` is indexed by the query's row (``i - q_offset``), ``seg_k`` by the key index.
    """

    def to_dict(self):
        return {"segments": True}

    def expr(self):
        return sympy.Eq(seg_q(i), seg_k(j))

    def evaluate(self, ii, jj, ctx):
        if ctx.seg_rows is None or ctx.seg_cols is None:
            raise ValueError("a segments mask needs seg_q and seg_k at call time")
        return ctx.seg_rows == ctx.seg_cols


# ---------------------------------------------------------------------------------------------
# Combinators
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class Any_(Predicate):
    """True where any part is true."""

    parts: tuple[Predicate, ...] = field(default_factory=tuple)

    def children(self):
        return self.parts

    def to_dict(self):
        return {"any": [p.to_dict() for p in self.parts]}

    def expr(self):
        return sympy.Or(*[p.expr() for p in self.parts])

    def evaluate(self, ii, jj, ctx):
        out = Nothing().evaluate(ii, jj, ctx)
        for part in self.parts:
            out = out | part.evaluate(ii, jj, ctx)
        return out


@dataclass(frozen=True, repr=False)
class All_(Predicate):
    """True where every part is true."""

    parts: tuple[Predicate, ...] = field(default_factory=tuple)

    def children(self):
        return self.parts

    def to_dict(self):
        return {"all": [p.to_dict() for p in self.parts]}

    def expr(self):
        return sympy.And(*[p.expr() for p in self.parts])

    def evaluate(self, ii, jj, ctx):
        out = Everything().evaluate(ii, jj, ctx)
        for part in self.parts:
            out = out & part.evaluate(ii, jj, ctx)
        return out


@dataclass(frozen=True, repr=False)
class Not_(Predicate):
    """True where the part is false."""

    part: Predicate

    def children(self):
        return (self.part,)

    def to_dict(self):
        return {"not": self.part.to_dict()}

    def expr(self):
        return sympy.Not(self.part.expr())

    def evaluate(self, ii, jj, ctx):
        return ~self.part.evaluate(ii, jj, ctx)


LEAF_TYPES = (Everything, Nothing, Causal, Band, Stride, Columns, GlobalTokens, Blocks, Random,
              Segments)


# ---------------------------------------------------------------------------------------------
# The Python builders of SPEC.md
# ---------------------------------------------------------------------------------------------
def causal() -> Predicate:
    """``j <= i``."""
    return Causal()


def band(width: int | None = None, *, left: int | None = None, right: int | None = None) -> Predicate:
    """``band(w)`` is ``i - w <= j <= i + w``; ``band(left=a, right=b)`` bounds each side."""
    if width is not None:
        if left is not None or right is not None:
            raise SpecError("band", width, "give either a width or left/right, not both")
        return Band(width, width)
    return Band(left, right)


def stride(every: int) -> Predicate:
    return Stride(every)


def columns(every: int, width: int) -> Predicate:
    return Columns(every, width)


def global_tokens(first: int | None = None, *, tokens=None) -> Predicate:
    return GlobalTokens(first, None if tokens is None else tuple(tokens))


def blocks(size: int) -> Predicate:
    return Blocks(size)


def random(per_row: int, block: int, seed: int = 0) -> Predicate:
    return Random(per_row, block, seed)


def segments() -> Predicate:
    return Segments()
