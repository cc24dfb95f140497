"""A mask's sympy form as a *program* of quasi-affine atoms, for deciding tiles exactly.

The family (SPEC.md, "Expressions"; issue 12): integer expressions built from ``i``, ``j`` and
integer constants with ``+``, ``-``, multiplication by a constant, ``//`` and ``%`` by a nonzero
constant, ``min``, ``max``, ``abs`` and numeric ``where``; compared with ``< <= > >= == !=``;
combined with and / or / not (and boolean ``==``/``!=``). Every built-in leaf but random and
segments is such a formula too (`Predicate.expr`), so whole predicate trees compile.

What a program is:
- a *term* is ``i``, ``j`` or ``floor(L / m)`` for a linear form L (integer coefficients) over
  earlier terms and an integer m > 0; ``x % m`` is ``x - m * floor(x / m)``;
- an *atom* is ``L <= 0`` or ``L == 0`` for a linear form L over the terms (``<``, ``>``, ``>=``
  and ``!=`` are rewritten over integers: ``L < 0`` is ``L + 1 <= 0``, ``!=`` is ``not ==``);
- the mask is a boolean tree over the atoms.
``min``, ``max``, ``abs`` and ``where`` are *lifted* out of the arithmetic by cases: an expression
is a list of (guard, linear form) whose guards partition the plane (``min(a, b)`` is ``a`` where
``a <= b`` and ``b`` elsewhere), and a comparison is the ``or`` over its cases of ``guard and
atom``. Lifting multiplies cases, so a formula whose lifting passes `MAX_CASES` cases, or
`MAX_ATOMS` atoms, is outside the family too (`compile_mask` gives None; the callers then stay
merely sound). Anything else (products of positions, ``/``, floats, ``**``, heads, inputs, random
blocks, segments) is outside.

Three evaluations, all vectorised with torch over many boxes or cells (`formula_tiles` uses them):
- `Program.interval`: sound three-valued verdicts over boxes ``[i0, i1] x [j0, j1]``
  (interval arithmetic; exact for one atom whose form is affine in i, j over the box);
- `Program.at`: the value at points (the ground truth, same integers as the kernels);
- `Program.row_counts`: the exact number of allowed pairs per box, row by row (see there).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from math import lcm

import sympy
import torch

from ..spec.predicates import Predicate, i as I_SYMBOL, j as J_SYMBOL

MAX_CASES = 64        # cases of one lifted expression (min/max/abs/where multiply them)
MAX_ATOMS = 48        # distinct atoms of a program (a row cell costs O(atoms^2))


class Outside(Exception):
    """The expression is not in the family this module decides."""


# -- linear forms ---------------------------------------------------------------------------------
# A linear form is a tuple of (term index, coefficient) sorted by term, plus a constant; terms 0 and
# 1 are i and j, later ones floors. Rational forms (Fractions) occur only while compiling.
I_TERM, J_TERM = 0, 1


@dataclass(frozen=True)
class Lin:
    coeffs: tuple            # ((term, coefficient), ...) sorted by term, no zero coefficient
    const: object = 0

    @staticmethod
    def of(mapping: dict, const=0) -> "Lin":
        return Lin(tuple(sorted((t, c) for t, c in mapping.items() if c != 0)), const)

    def as_dict(self) -> dict:
        return dict(self.coeffs)

    def __add__(self, other: "Lin") -> "Lin":
        out = self.as_dict()
        for t, c in other.coeffs:
            out[t] = out.get(t, 0) + c
        return Lin.of(out, self.const + other.const)

    def scale(self, k) -> "Lin":
        return Lin.of({t: c * k for t, c in self.coeffs}, self.const * k)

    def denominator(self) -> int:
        return lcm(*[Fraction(c).denominator for _, c in self.coeffs], Fraction(self.const).denominator)

    def integral(self) -> "Lin":
        return Lin.of({t: int(c) for t, c in self.coeffs}, int(self.const))


@dataclass(frozen=True)
class Floor:
    arg: Lin                 # integer coefficients
    m: int                   # > 0


@dataclass(frozen=True)
class Atom:
    lin: Lin                 # integer coefficients
    op: str                  # "le": lin <= 0; "eq": lin == 0


# Boolean trees: ("const", bool) | ("atom", k) | ("not", x) | ("and", (x, ..)) | ("or", (x, ..)).
TRUE, FALSE = ("const", True), ("const", False)
FLIP = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}


def _and(parts) -> tuple:
    parts = [p for p in parts if p != TRUE]
    if any(p == FALSE for p in parts):
        return FALSE
    return TRUE if not parts else parts[0] if len(parts) == 1 else ("and", tuple(parts))


def _or(parts) -> tuple:
    parts = [p for p in parts if p != FALSE]
    if any(p == TRUE for p in parts):
        return TRUE
    return FALSE if not parts else parts[0] if len(parts) == 1 else ("or", tuple(parts))


def _not(x) -> tuple:
    if x[0] == "const":
        return ("const", not x[1])
    return x[1] if x[0] == "not" else ("not", x)


# -- compiling sympy --------------------------------------------------------------------------------
class _Compiler:
    def __init__(self, params: tuple = ()):
        self.terms: list = ["i", "j", *(str(p) for p in params)]
        self.params = {p: 2 + n for n, p in enumerate(params)}       # parameter → its term
        self.term_index: dict = {}
        self.atoms: list[Atom] = []
        self.atom_index: dict = {}

    # arithmetic: a list of (guard, rational Lin) cases
    def arith(self, e) -> list:
        if e == I_SYMBOL:
            return [(TRUE, Lin.of({I_TERM: 1}))]
        if e == J_SYMBOL:
            return [(TRUE, Lin.of({J_TERM: 1}))]
        if e in self.params:
            return [(TRUE, Lin.of({self.params[e]: 1}))]
        if isinstance(e, (sympy.Integer, sympy.Rational)) and e.is_finite:
            return [(TRUE, Lin.of({}, Fraction(int(e.p), int(e.q))))]
        if isinstance(e, sympy.Add):
            return self._combine([self.arith(a) for a in e.args], lambda lins: sum(lins[1:], lins[0]))
        if isinstance(e, sympy.Mul):
            consts = [a for a in e.args if isinstance(a, sympy.Rational)]
            rest = [a for a in e.args if not isinstance(a, sympy.Rational)]
            if len(rest) != 1:
                raise Outside(f"a product of non-constants ({e})")
            k = Fraction(1)
            for c in consts:
                k *= Fraction(int(c.p), int(c.q))
            return [(g, lin.scale(k)) for g, lin in self.arith(rest[0])]
        if isinstance(e, sympy.floor):
            return [(g, self.floor(lin)) for g, lin in self.arith(e.args[0])]
        if isinstance(e, sympy.Mod):
            m = e.args[1]
            if not isinstance(m, sympy.Integer) or m == 0:
                raise Outside(f"% by a non-constant ({e})")
            m = int(m)
            out = []
            for g, lin in self.arith(e.args[0]):
                if lin.denominator() != 1:
                    raise Outside(f"% of a non-integer ({e})")
                out.append((g, lin + self.floor(lin.scale(Fraction(1, m))).scale(-m)))
            return out
        if isinstance(e, sympy.Abs):
            return self._cap([c for g, lin in self.arith(e.args[0]) for c in (
                (_and([g, self.compare(lin, "ge")]), lin), (_and([g, self.compare(lin, "lt")]), lin.scale(-1)))])
        if isinstance(e, (sympy.Min, sympy.Max)):
            keep = "le" if isinstance(e, sympy.Min) else "ge"      # a where a - b keep 0, else b
            cases = self.arith(e.args[0])
            for arg in e.args[1:]:
                cases = self._cap([c for ga, a in cases for gb, b in self.arith(arg) for c in (
                    (_and([ga, gb, self.compare(a + b.scale(-1), keep)]), a),
                    (_and([ga, gb, _not(self.compare(a + b.scale(-1), keep))]), b))])
            return cases
        if isinstance(e, sympy.Piecewise):
            out, rest = [], TRUE
            for value, cond in e.args:
                c = self.boolean(cond)
                out += [(_and([rest, c, g]), lin) for g, lin in self.arith(value)]
                rest = _and([rest, _not(c)])
            return self._cap(out)
        raise Outside(f"{type(e).__name__} ({e})")

    def _combine(self, lists, fn) -> list:
        cases = [(TRUE, [])]
        for options in lists:
            cases = self._cap([(_and([g, h]), lins + [lin]) for g, lins in cases for h, lin in options])
        return [(g, fn(lins)) for g, lins in cases]

    def _cap(self, cases):
        cases = [c for c in cases if c[0] != FALSE]
        if len(cases) > MAX_CASES:
            raise Outside(f"more than {MAX_CASES} cases once min/max/abs/where are lifted")
        return cases

    def floor(self, lin: Lin) -> Lin:
        """floor(lin) as a linear form: lin itself when integral, else a floor term."""
        m = lin.denominator()
        if m == 1:
            return lin.integral()
        arg = lin.scale(m).integral()
        key = Floor(arg, m)
        if key not in self.term_index:
            self.term_index[key] = len(self.terms)
            self.terms.append(key)
        return Lin.of({self.term_index[key]: 1})

    # booleans
    def compare(self, lin: Lin, op: str) -> tuple:
        """lin op 0 over the integers, as a boolean tree over atoms."""
        lin = lin.scale(lin.denominator()).integral()        # a positive factor keeps the sign
        if op in ("ge", "gt"):
            lin, op = lin.scale(-1), {"ge": "le", "gt": "lt"}[op]
        if op == "lt":
            lin, op = lin + Lin.of({}, 1), "le"
        if op == "ne":
            return _not(self.compare(lin, "eq"))
        if not lin.coeffs:
            return ("const", lin.const <= 0 if op == "le" else lin.const == 0)
        if op == "eq":                                        # one sign: lin == 0 iff -lin == 0
            lead = lin.coeffs[0][1]
            lin = lin.scale(-1) if lead < 0 else lin
        atom = Atom(lin, op)
        if atom not in self.atom_index:
            if len(self.atoms) >= MAX_ATOMS:
                raise Outside(f"more than {MAX_ATOMS} atoms")
            self.atom_index[atom] = len(self.atoms)
            self.atoms.append(atom)
        return ("atom", self.atom_index[atom])

    def boolean(self, e) -> tuple:
        if e is sympy.true or e is True:
            return TRUE
        if e is sympy.false or e is False:
            return FALSE
        if isinstance(e, sympy.And):
            return _and([self.boolean(a) for a in e.args])
        if isinstance(e, sympy.Or):
            return _or([self.boolean(a) for a in e.args])
        if isinstance(e, sympy.Not):
            return _not(self.boolean(e.args[0]))
        if isinstance(e, sympy.ITE):                          # sympy's own boolean where
            c, a, b = (self.boolean(x) for x in e.args)
            return _or([_and([c, a]), _and([_not(c), b])])
        if isinstance(e, (sympy.Equivalent, sympy.Xor)):
            parts = [self.boolean(a) for a in e.args]
            same = _or([_and(parts), _and([_not(p) for p in parts])])
            if isinstance(e, sympy.Equivalent) or len(parts) == 2:
                return same if isinstance(e, sympy.Equivalent) else _not(same)
            raise Outside(f"an n-ary xor ({e})")
        if isinstance(e, sympy.core.relational.Relational):
            op = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}[e.rel_op]
            return self.relation(e.lhs, op, e.rhs)
        raise Outside(f"{type(e).__name__} ({e})")

    def relation(self, lhs, op: str, rhs) -> tuple:
        """lhs op rhs. A max, min or abs standing alone on one side of an order comparison splits
        the comparison without guards (``max(a, b) <= r`` is ``a <= r and b <= r``, ``abs(x) <= r``
        is ``x <= r and -x <= r``); anything else is lifted by cases."""
        if op in ("lt", "le", "gt", "ge"):
            for side, other, flipped in ((lhs, rhs, op), (rhs, lhs, FLIP[op])):
                if isinstance(side, (sympy.Min, sympy.Max, sympy.Abs)):
                    args = (side.args[0], -side.args[0]) if isinstance(side, sympy.Abs) else side.args
                    is_max = not isinstance(side, sympy.Min)
                    # max(..) below r: every part is; max(..) above r: some part is (min: dual)
                    every = is_max == (flipped in ("lt", "le"))
                    parts = [self.relation(a, flipped, other) for a in args]
                    return _and(parts) if every else _or(parts)
        out = []
        for ga, a in self.arith(lhs):
            for gb, b in self.arith(rhs):
                out.append(_and([ga, gb, self.compare(a + b.scale(-1), op)]))
        return _or(out)


@dataclass(frozen=True, eq=False)
class Program:
    """Terms (``"i"``, ``"j"``, the `num_params` parameters, then `Floor`s, each over earlier
    terms), atoms, and the tree. A parameter is an integer the caller gives per box or row
    (`params=` of each evaluation, broadcast like the positions): a call-time scalar such as
    ``prefix[b]`` (`tiles_params`)."""

    terms: tuple
    atoms: tuple
    tree: tuple
    num_params: int = 0

    @property
    def floors(self) -> tuple:
        return self.terms[2 + self.num_params:]

    # -- values of linear forms -------------------------------------------------------------------
    @staticmethod
    def _lin(lin: Lin, values: list):
        out = lin.const
        for t, c in lin.coeffs:
            out = out + c * values[t]
        return out

    def at(self, ii: torch.Tensor, jj: torch.Tensor, params: tuple = ()) -> torch.Tensor:
        """The mask at integer positions (broadcast): exactly what the kernels compute."""
        ii, jj = torch.broadcast_tensors(ii, jj)
        values = [ii, jj, *params]
        for term in self.floors:
            values.append(torch.div(self._lin(term.arg, values), term.m, rounding_mode="floor"))
        truth = [self._lin(a.lin, values) <= 0 if a.op == "le" else self._lin(a.lin, values) == 0
                 for a in self.atoms]
        return _tree(self.tree, truth, ii.shape, ii.device)

    # -- interval arithmetic over boxes -----------------------------------------------------------
    @staticmethod
    def _lin_range(lin: Lin, lo: list, hi: list):
        low = high = lin.const
        for t, c in lin.coeffs:
            a, b = c * lo[t], c * hi[t]
            low, high = low + torch.minimum(a, b), high + torch.maximum(a, b)
        return low, high

    def interval(self, i0, i1, j0, j1, params: tuple = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """(may be true, may be false) on each box: False is a proof (sound, never exact-claimed)."""
        lo, hi = [i0, j0, *params], [i1, j1, *params]
        for term in self.floors:
            a, b = self._lin_range(term.arg, lo, hi)
            lo.append(torch.div(a, term.m, rounding_mode="floor"))
            hi.append(torch.div(b, term.m, rounding_mode="floor"))
        may_true, may_false = [], []
        for atom in self.atoms:
            a, b = self._lin_range(atom.lin, lo, hi)
            if atom.op == "le":
                may_true.append(a <= 0)
                may_false.append(b > 0)
            else:
                may_true.append((a <= 0) & (b >= 0))
                may_false.append((a != 0) | (b != 0))
        return _three_valued(self.tree, may_true, may_false, i0.shape, i0.device)

    # -- exact counts, row by row ---------------------------------------------------------------------
    def row_counts(self, ii: torch.Tensor, j0: torch.Tensor, j1: torch.Tensor, params: tuple = ()) -> torch.Tensor:
        """Exact number of allowed j in [j0[n], j1[n]] for query position ii[n] (int64 [n]).

        A row is cut into *cells* ``j = p*l + s`` for l in a range, on which every term is affine
        in l: per floor term, in order, a cell where ``floor((A*l + B) / m)`` is not already affine
        is split either into its ``q`` runs of constant value (cut where the value steps) or into
        the ``r = m / gcd(A, m)`` residues of l modulo r (on each, the floor is affine), whichever
        is fewer. On a cell each atom holds on one interval of l (a point for ``==``), so the
        tree is constant between the atoms' interval ends: it is evaluated once per such piece and
        the lengths of the true pieces are summed. Cost: O(cells x atoms^2), cells per row at most
        the product over floor terms of min(q, r), q ~ |A| * width / m + 1 (no pair is evaluated).
        """
        n = len(ii)
        owner = torch.arange(n, device=ii.device)
        lo, hi = j0.clone(), j1.clone()                       # the range of l
        forms = [(torch.zeros_like(ii), ii.clone()), (torch.ones_like(ii), torch.zeros_like(ii)),
                 *((torch.zeros_like(ii), p.expand_as(ii)) for p in params)]       # parameters: constant per row
        for term in self.floors:
            owner, lo, hi, forms = _split_floor(term, owner, lo, hi, forms)
        counts = _count_cells(self, lo, hi, forms)
        return torch.zeros(n, dtype=torch.int64, device=ii.device).index_add_(0, owner, counts)


def _tree(node, truth: list, shape, device) -> torch.Tensor:
    kind = node[0]
    if kind == "const":
        return torch.full(shape, node[1], dtype=torch.bool, device=device)
    if kind == "atom":
        return truth[node[1]].expand(shape)
    if kind == "not":
        return ~_tree(node[1], truth, shape, device)
    parts = [_tree(p, truth, shape, device) for p in node[1]]
    out = parts[0]
    for p in parts[1:]:
        out = (out & p) if kind == "and" else (out | p)
    return out


def _three_valued(node, may_true: list, may_false: list, shape, device):
    kind = node[0]
    if kind == "const":
        value = torch.full(shape, node[1], dtype=torch.bool, device=device)
        return value, ~value
    if kind == "atom":
        return may_true[node[1]].expand(shape), may_false[node[1]].expand(shape)
    if kind == "not":
        t, f = _three_valued(node[1], may_true, may_false, shape, device)
        return f, t
    parts = [_three_valued(p, may_true, may_false, shape, device) for p in node[1]]
    t, f = parts[0]
    for pt, pf in parts[1:]:
        t, f = ((t & pt), (f | pf)) if kind == "and" else ((t | pt), (f & pf))
    return t, f


def _fdiv(a, b):
    return torch.div(a, b, rounding_mode="floor")


def _cdiv(a, b):
    return -torch.div(-a, b, rounding_mode="floor")


def _split_floor(term: Floor, owner, lo, hi, forms):
    """Cells → cells on which floor(term.arg / m) is affine in l; the term's form appended."""
    m = term.m
    a = Program._lin(Lin(tuple((t, c) for t, c in term.arg.coeffs), 0), [f[0] for f in forms])
    b = Program._lin(term.arg, [f[1] for f in forms])
    a = a if isinstance(a, torch.Tensor) else torch.full_like(lo, a)
    b = b if isinstance(b, torch.Tensor) else torch.full_like(lo, b)
    v_lo, v_hi = _fdiv(a * lo + b, m), _fdiv(a * hi + b, m)
    runs = (v_hi - v_lo).abs() + 1                            # values the floor takes (at most)
    residues = m // torch.gcd(a, torch.full_like(a, m))
    affine = (a % m == 0) | (runs == 1)
    by_runs = ~affine & (runs <= residues)
    by_residue = ~affine & ~by_runs
    out = []
    # already affine: floor((a l + b) / m) = (a / m) l + floor(b / m), or the one value
    sel = affine
    slope = torch.where(a % m == 0, _fdiv(a, m), 0)[sel]
    value = torch.where(a % m == 0, _fdiv(b, m), v_lo)[sel]
    out.append((owner[sel], lo[sel], hi[sel], [(f0[sel], f1[sel]) for f0, f1 in forms] + [(slope, value)]))
    # runs of one value: v*m <= a*l + b <= v*m + m - 1
    sel = by_runs
    if bool(sel.any()):
        k = runs[sel]
        rep = lambda x: x[sel].repeat_interleave(k)          # noqa: E731
        step = torch.arange(int(k.sum()), device=lo.device) - (torch.cumsum(k, 0) - k).repeat_interleave(k)
        v = torch.minimum(v_lo, v_hi)[sel].repeat_interleave(k) + step
        ar, br = rep(a), rep(b)
        low, up = v * m - br, v * m + m - 1 - br              # a*l in [low, up]
        pos = ar > 0
        first = torch.where(pos, _cdiv(low, ar), _cdiv(up, ar))
        last = torch.where(pos, _fdiv(up, ar), _fdiv(low, ar))
        first, last = torch.maximum(first, rep(lo)), torch.minimum(last, rep(hi))
        out.append((rep(owner), first, last, [(rep(f0), rep(f1)) for f0, f1 in forms]
                    + [(torch.zeros_like(v), v)]))
    # residues: l = r*l' + t, t in [0, r): a*(r*l' + t) + b, and m divides a*r
    sel = by_residue
    if bool(sel.any()):
        r = residues[sel]
        rep = lambda x: x[sel].repeat_interleave(r)          # noqa: E731
        t = torch.arange(int(r.sum()), device=lo.device) - (torch.cumsum(r, 0) - r).repeat_interleave(r)
        rr, ar, br = rep(residues), rep(a), rep(b)
        first, last = _cdiv(rep(lo) - t, rr), _fdiv(rep(hi) - t, rr)
        new_forms = [(rep(f0) * rr, rep(f1) + rep(f0) * t) for f0, f1 in forms]
        new_forms.append((_fdiv(ar * rr, m), _fdiv(ar * t + br, m)))
        out.append((rep(owner), first, last, new_forms))
    owner = torch.cat([o[0] for o in out])
    lo, hi = torch.cat([o[1] for o in out]), torch.cat([o[2] for o in out])
    forms = [(torch.cat([o[3][k][0] for o in out]), torch.cat([o[3][k][1] for o in out]))
             for k in range(len(out[0][3]))]
    keep = lo <= hi
    return owner[keep], lo[keep], hi[keep], [(f0[keep], f1[keep]) for f0, f1 in forms]


def _count_cells(program: Program, lo, hi, forms) -> torch.Tensor:
    """Allowed l in [lo, hi] per cell, every atom affine in l (alpha*l + beta)."""
    if len(lo) == 0:
        return torch.zeros(0, dtype=torch.int64, device=lo.device)
    ends = []                                                  # per atom: its interval [first, last]
    for atom in program.atoms:
        alpha = Program._lin(Lin(atom.lin.coeffs, 0), [f[0] for f in forms])
        beta = Program._lin(atom.lin, [f[1] for f in forms])
        alpha = alpha if isinstance(alpha, torch.Tensor) else torch.full_like(lo, alpha)
        beta = beta if isinstance(beta, torch.Tensor) else torch.full_like(lo, beta)
        safe = torch.where(alpha == 0, 1, alpha)
        if atom.op == "le":                                    # alpha*l <= -beta
            bound_hi = torch.where(alpha > 0, _fdiv(-beta, safe), hi)
            bound_lo = torch.where(alpha < 0, _cdiv(-beta, safe), lo)
            none = (alpha == 0) & (beta > 0)
        else:                                                  # alpha*l == -beta
            point = _fdiv(-beta, safe)
            hit = (alpha != 0) & (point * alpha == -beta)
            bound_lo = torch.where(alpha == 0, lo, point)
            bound_hi = torch.where(alpha == 0, hi, point)
            none = ((alpha == 0) & (beta != 0)) | ((alpha != 0) & ~hit)
        first = torch.where(none, hi + 1, torch.maximum(bound_lo, lo))
        last = torch.where(none, hi, torch.minimum(bound_hi, hi))
        ends.append((first, last))
    cuts = [lo, hi + 1] + [torch.clamp(x, min=lo, max=hi + 1) for f, la in ends for x in (f, la + 1)]
    cuts = torch.stack(cuts, 1).sort(1).values                 # [cells, K]
    start, stop = cuts[:, :-1], cuts[:, 1:]
    truth = [(start >= f[:, None]) & (start <= la[:, None]) for f, la in ends]
    allowed = _tree(program.tree, truth, start.shape, lo.device)
    return ((stop - start) * allowed).sum(1)


@lru_cache(maxsize=256)
def compile_mask(pred: Predicate) -> Program | None:
    """The program of a mask predicate (any tree of formulas and built-in leaves), or None when it
    is outside the family."""
    try:
        expr = pred.expr()
    except NotImplementedError:
        return None
    return compile_expr(expr)


def compile_expr(expr: sympy.Basic, params: tuple = ()) -> Program | None:
    """The program of a boolean sympy form whose symbols are i, j and the integer `params`
    (symbols that stand for call-time scalars), or None outside the family."""
    compiler = _Compiler(params)
    try:
        tree = compiler.boolean(expr)
    except Outside:
        return None
    return Program(tuple(compiler.terms), tuple(compiler.atoms), tree, len(params))

