"""Normalisation of mask predicates: one list of named rewrites, applied bottom-up to a fixpoint.

Two masks that mean the same thing for a reason listed here normalise to the same value, so specs
compare and hash equal (``band: 3`` and ``band: {left: 3, right: 3}``; ``causal & band(left=w)`` and
``band(left=w, right=0)``). Each rule is a pure function from a predicate to a predicate (or None
when it does not apply) with a one-line reason.
"""
from __future__ import annotations

from math import gcd
from typing import Callable

from .predicates import (All_, Any_, Band, Blocks, Causal, Columns, Everything, Not_, Nothing,
                         Predicate, Stride)

Rule = Callable[[Predicate], "Predicate | None"]


def _min_side(a: int | None, b: int | None) -> int | None:
    """Intersection of two band sides; None is unbounded."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _max_side(a: int | None, b: int | None) -> int | None:
    """Union of two band sides (both bands contain j == i, so the union is one band)."""
    if a is None or b is None:
        return None
    return max(a, b)


def causal_is_a_band(p: Predicate):
    """`j <= i` is the band with no left bound and right 0: one form for the analysis to handle."""
    return Band(None, 0) if isinstance(p, Causal) else None


def trivial_leaves(p: Predicate):
    """Leaves that allow everything, or that are a band in disguise."""
    if isinstance(p, Stride) and p.every == 1:
        return Everything()
    if isinstance(p, Columns) and p.width >= p.every:
        return Everything()
    if isinstance(p, Blocks) and p.size == 1:
        return Band(0, 0)
    return None


def flatten(p: Predicate):
    """any(any(a, b), c) is any(a, b, c); likewise all."""
    if isinstance(p, (Any_, All_)) and any(isinstance(c, type(p)) for c in p.parts):
        parts = []
        for c in p.parts:
            parts.extend(c.parts if isinstance(c, type(p)) else (c,))
        return type(p)(tuple(parts))
    return None


def constants(p: Predicate):
    """Everything and Nothing absorb or vanish in any/all/not."""
    if isinstance(p, Any_):
        if any(isinstance(c, Everything) for c in p.parts):
            return Everything()
        if any(isinstance(c, Nothing) for c in p.parts):
            return Any_(tuple(c for c in p.parts if not isinstance(c, Nothing)))
        if not p.parts:
            return Nothing()
    if isinstance(p, All_):
        if any(isinstance(c, Nothing) for c in p.parts):
            return Nothing()
        if any(isinstance(c, Everything) for c in p.parts):
            return All_(tuple(c for c in p.parts if not isinstance(c, Everything)))
        if not p.parts:
            return Everything()
    if isinstance(p, Not_):
        if isinstance(p.part, Everything):
            return Nothing()
        if isinstance(p.part, Nothing):
            return Everything()
    return None


def double_negation(p: Predicate):
    """not(not(a)) is a."""
    if isinstance(p, Not_) and isinstance(p.part, Not_):
        return p.part.part
    return None


def complements(p: Predicate):
    """a & ~a allows nothing and a | ~a allows everything, whatever a is."""
    if isinstance(p, (All_, Any_)):
        negated = {c.part for c in p.parts if isinstance(c, Not_)}
        if any(c in negated for c in p.parts):
            return Nothing() if isinstance(p, All_) else Everything()
    return None


def _merge_parts(p: Predicate, kind: type, merge: Callable) -> Predicate | None:
    """Replace every part of type `kind` in p's parts by their merge (if there are two or more)."""
    same = [c for c in p.parts if isinstance(c, kind)]
    if len(same) < 2:
        return None
    merged = same[0]
    for c in same[1:]:
        merged = merge(merged, c)
    rest = tuple(c for c in p.parts if not isinstance(c, kind))
    return type(p)(rest + (merged,))


def bands_intersect(p: Predicate):
    """all of bands is one band: the tighter side of each."""
    if isinstance(p, All_):
        return _merge_parts(p, Band, lambda a, b: Band(_min_side(a.left, b.left),
                                                       _min_side(a.right, b.right)))
    return None


def _union_band(a: "Band | Everything", b: Band) -> Predicate:
    if isinstance(a, Everything):             # an earlier pair of the fold was already unbounded
        return a
    left, right = _max_side(a.left, b.left), _max_side(a.right, b.right)
    # Unbounded on both sides allows everything (and Band refuses to be built that way).
    return Everything() if left is None and right is None else Band(left, right)


def bands_unite(p: Predicate):
    """any of bands is one band: every band holds j == i, so their union has no gap."""
    if isinstance(p, Any_):
        return _merge_parts(p, Band, _union_band)
    return None


def nested_blocks(p: Predicate):
    """blocks(a) & blocks(b) with a dividing b is blocks(a): the same a-block lies in one b-block."""
    if isinstance(p, All_):
        sizes = sorted({c.size for c in p.parts if isinstance(c, Blocks)})
        keep = [s for s in sizes if not any(s % t == 0 and s != t for t in sizes)]
        if len(keep) < len(sizes):
            rest = tuple(c for c in p.parts if not isinstance(c, Blocks) or c.size in keep)
            return All_(rest)
    return None


def strides_combine(p: Predicate):
    """stride(a) & stride(b) is stride(lcm(a, b)); stride(a) | stride(b) with a | b is stride(a)."""
    if isinstance(p, All_):
        return _merge_parts(p, Stride, lambda a, b: Stride(a.every * b.every // gcd(a.every, b.every)))
    if isinstance(p, Any_):
        sizes = sorted({c.every for c in p.parts if isinstance(c, Stride)})
        keep = [s for s in sizes if not any(s % t == 0 and s != t for t in sizes)]
        if len(keep) < len(sizes):
            return Any_(tuple(c for c in p.parts if not isinstance(c, Stride) or c.every in keep))
    return None


def canonical_order(p: Predicate):
    """Parts of any/all sorted and deduplicated; a single part stands alone."""
    if isinstance(p, (Any_, All_)):
        unique = {c.sort_key(): c for c in p.parts}
        parts = tuple(unique[k] for k in sorted(unique))
        if len(parts) == 1:
            return parts[0]
        if parts != p.parts:
            return type(p)(parts)
    return None


RULES: tuple[Rule, ...] = (
    causal_is_a_band,
    trivial_leaves,
    flatten,
    constants,
    double_negation,
    complements,
    bands_intersect,
    bands_unite,
    nested_blocks,
    strides_combine,
    canonical_order,
)


def _rebuild(p: Predicate, children: tuple[Predicate, ...]) -> Predicate:
    if isinstance(p, (Any_, All_)):
        return type(p)(children)
    if isinstance(p, Not_):
        return Not_(children[0])
    return p


def normalize(p: Predicate) -> Predicate:
    """The canonical form of `p` under `RULES`."""
    children = tuple(normalize(c) for c in p.children())
    p = _rebuild(p, children) if children else p
    # Every rule makes the predicate strictly simpler or more ordered, so this terminates.
    for rule in RULES:
        rewritten = rule(p)
        if rewritten is not None and rewritten != p:
            return normalize(rewritten)
    return p
