"""Exact block maps of masks whose data reads are per-(batch, head) scalars, from the call's values.

A mask formula may read the batch, the heads and inputs (SPEC.md, "Expressions"). Where every
such read is a *scalar per (b, h)* — ``b``, ``h``, ``hk`` themselves, or an int/bool input read at
indices built from ``b``, ``h``, ``hk`` and constants (``prefix[b]``, ``window[h]``, ``flag[hk]``)
— fixing one (b, h) fixes every read, and what is left is an input-free formula of i and j. If it
is affine in i, j and the reads (``//`` and ``%`` by constants, min/max/abs/where, comparisons,
and/or/not: `formula_program`'s family with the reads as extra integer variables), its tiles are
decided exactly by the machinery of input-free formulas (`tiles_formula`: interval arithmetic,
witnesses, exact row counts), never pair by pair.

Prepared once per spec (`scalar_reads`, sympy at lowering time only): the `Program` over i, j and
one parameter per read, and a numeric evaluator per read (closures over torch ops, no sympy). Per
call (`set_lists`): the reads evaluated for every *set* (each b, each h, or each (b, h) / (b, hk):
`axes`, the axes the reads depend on), O(sets x reads); the distinct value rows found
(`torch.unique`); the tiles of all distinct rows classified in one vectorised pass; the lists
expanded to one set of rows per set, in the kernels' layout (row = set * rows + tile). Work:
O(distinct rows x candidate tiles) for the classes, O(sets x non-empty tiles) for the lists, plus
the input size; nothing symbolic.

How the distinct rows run through `tiles_formula` unchanged: they are stacked as one tall problem
whose query position carries the row in its high bits (``i + OFFSET + row * SPAN``); `_SetProgram`
splits a position back into the row (its parameters) and i before evaluating. Tiles never straddle
two rows, so every box the machinery builds lies in one row.

Anything else keeps the sound static map of `tiles_data` (input-free bounds, one map per shape):
reads indexed by i or j (document ids per position, per-key masks), float inputs, products of a
read with a position (``i * stride[h]``), reads as divisors (``j // chunk[h]``), and masks beside
random or segments leaves.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sympy
import torch

from ..spec.formula_types import SYMBOLS
from ..spec.formula import Formula
from ..spec.predicates import EvalContext, Predicate
from .formula_program import Program, compile_expr
from .tiles_base import Geometry
from .tiles_data import reads_data
from .tiles_formula import candidate_keys, exact_verdict

SPAN = 1 << 40          # positions of one stacked row (|i| < OFFSET)
OFFSET = 1 << 39
POSITIONS = {SYMBOLS["i"], SYMBOLS["j"]}
AXIS_SYMBOLS = {"b": SYMBOLS["b"], "h": SYMBOLS["h"], "hk": SYMBOLS["hk"]}
INTEGER_DTYPES = ("int32", "int64", "bool")


@dataclass(frozen=True, eq=False)
class ScalarReads:
    """A mask decided exactly per set of (b, h) from its scalar reads (see the module docstring)."""

    program: Program         # over i, j and one parameter per read
    evaluators: tuple        # per read: env → int64 tensor over the sets
    texts: tuple             # per read: its sympy form as text (notes, errors)
    axes: tuple              # ("b",), ("h",), ("hk",), ("b", "h"), ("b", "hk") or () (constant indices)

    def num_sets(self, batch: int, query_heads: int, kv_heads: int) -> int:
        sizes = {"b": batch, "h": query_heads, "hk": kv_heads}
        out = 1
        for axis in self.axes:
            out *= sizes[axis]
        return out

    def values(self, inputs: dict, *, batch: int, query_heads: int, kv_heads: int, device) -> torch.Tensor:
        """int64 (sets, reads): each read's value for every set, sets in the kernels' order
        (b outermost, then the head axis). O(sets x reads) plus the reads of the inputs."""
        sets = torch.arange(self.num_sets(batch, query_heads, kv_heads), device=device)
        heads = query_heads if "h" in self.axes else kv_heads if "hk" in self.axes else 1
        head = sets % heads
        env = {"b": torch.div(sets, heads, rounding_mode="floor") if "b" in self.axes else torch.zeros_like(sets),
               "h": head if "h" in self.axes else torch.zeros_like(sets),
               "hk": (torch.div(head, query_heads // kv_heads, rounding_mode="floor") if "h" in self.axes
                      else head if "hk" in self.axes else torch.zeros_like(sets)),
               "inputs": inputs}
        if not self.evaluators:
            return torch.zeros((len(sets), 0), dtype=torch.int64, device=device)
        return torch.stack([torch.as_tensor(f(env), device=device).to(torch.int64).expand(len(sets))
                            for f in self.evaluators], 1)


def scalar_reads(pred: Predicate) -> ScalarReads | None:
    """The scalar reads of a mask (its formulas bound to their declarations), or None where its
    map stays the static bound (`tiles_data`): no data read, or a read outside this module's
    family. Symbolic: once per spec (lowering, a launcher's construction), never per call."""
    if not reads_data(pred):
        return None
    dtypes = {d.name: d.dtype for p in pred.walk() if isinstance(p, Formula) for d in p.decls}
    return _scalar_reads(pred, tuple(sorted(dtypes.items())))


@lru_cache(maxsize=256)
def _scalar_reads(pred: Predicate, dtypes: tuple) -> ScalarReads | None:
    try:
        expr = pred.expr()
    except NotImplementedError:                  # random or segments leaves
        return None
    dtypes = dict(dtypes)
    reads: list = []
    if not _collect(expr, dtypes, reads):
        return None
    params = tuple(sympy.Dummy(f"read{n}", integer=True) for n in range(len(reads)))
    free = expr.xreplace(dict(zip(reads, params)))
    if free.has(sympy.Indexed) or not free.free_symbols <= POSITIONS | set(params):
        return None
    program = compile_expr(free, params)
    evaluators = [_numeric(r) for r in reads]
    if program is None or None in evaluators:
        return None
    used = set().union(*(r.free_symbols for r in reads))
    axes = (("b",) if AXIS_SYMBOLS["b"] in used else ()) + (
        ("h",) if AXIS_SYMBOLS["h"] in used else ("hk",) if AXIS_SYMBOLS["hk"] in used else ())
    return ScalarReads(program, tuple(evaluators), tuple(str(r) for r in reads), axes)


def _collect(e, dtypes: dict, reads: list) -> bool:
    """Append the scalar reads of `e` (whole input reads, and b, h, hk outside them) to `reads`;
    False where a read is indexed by a position or reads a float input."""
    if isinstance(e, sympy.Indexed):
        index_symbols = set().union(*(x.free_symbols for x in e.indices))
        if index_symbols & POSITIONS or dtypes.get(str(e.base.label)) not in INTEGER_DTYPES:
            return False
        if e not in reads:
            reads.append(e)
        return True
    if e in AXIS_SYMBOLS.values():
        if e not in reads:
            reads.append(e)
        return True
    return all(_collect(a, dtypes, reads) for a in e.args)


def _numeric(e):
    """A closure env → integer tensor computing the read `e` (integer arithmetic of b, h, hk,
    constants and input reads; an index outside an input reads 0), or None outside that grammar."""
    if e in AXIS_SYMBOLS.values():
        name = str(e)
        return lambda env: env[name]
    if isinstance(e, sympy.Integer):
        value = int(e)
        return lambda env: value
    if isinstance(e, sympy.Indexed):
        name, indices = str(e.base.label), [_numeric(x) for x in e.indices]
        if None in indices:
            return None
        return lambda env: _read(env["inputs"][name], [f(env) for f in indices])
    if isinstance(e, sympy.floor):
        num, den = sympy.fraction(sympy.together(e.args[0]))
        top = _numeric(sympy.expand(num))
        if top is None or not isinstance(den, sympy.Integer) or den <= 0:
            return None
        d = int(den)
        return lambda env: _as_tensor(top(env)).div(d, rounding_mode="floor")
    parts = [_numeric(a) for a in e.args]
    if None in parts or not parts:
        return None
    if isinstance(e, sympy.Add):
        return lambda env: _fold(lambda a, b: a + b, [f(env) for f in parts])
    if isinstance(e, sympy.Mul) and all(not isinstance(a, sympy.Rational) or a.is_Integer for a in e.args):
        return lambda env: _fold(lambda a, b: a * b, [f(env) for f in parts])
    if isinstance(e, sympy.Mod):
        return lambda env: torch.remainder(_as_tensor(parts[0](env)), parts[1](env))
    if isinstance(e, sympy.Min):
        return lambda env: _fold(torch.minimum, [_as_tensor(f(env)) for f in parts])
    if isinstance(e, sympy.Max):
        return lambda env: _fold(torch.maximum, [_as_tensor(f(env)) for f in parts])
    if isinstance(e, sympy.Abs):
        return lambda env: _as_tensor(parts[0](env)).abs()
    return None


def _fold(fn, values):
    out = values[0]
    for x in values[1:]:
        out = fn(out, x)
    return out


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.int64)


def _read(t: torch.Tensor, indices: list) -> torch.Tensor:
    """t[indices] (one index tensor or int per axis, broadcast), 0 outside t's shape."""
    indices = [_as_tensor(x).to(device=t.device, dtype=torch.int64) for x in indices]
    indices = torch.broadcast_tensors(*indices)
    inside = torch.ones(indices[0].shape, dtype=torch.bool, device=t.device)
    flat = torch.zeros(indices[0].shape, dtype=torch.int64, device=t.device)
    for x, size in zip(indices, t.shape):
        inside &= (x >= 0) & (x < size)
        flat = flat * size + x.clamp(0, size - 1)
    value = t.reshape(-1)[flat].to(torch.int64)
    return torch.where(inside, value, torch.zeros_like(value))


class _Stacked:
    """`rows` copies of one tiling, stacked: query tile u * T + t is tile t of value row u, its
    positions moved to u * SPAN + OFFSET + i (what `tiles_formula` reads of a `Geometry`)."""

    def __init__(self, geom: Geometry, rows: int):
        shift = (torch.arange(rows, device=geom.device, dtype=torch.int64) * SPAN + OFFSET)[:, None]
        self.q_lo, self.q_hi = (shift + geom.q_lo).reshape(-1), (shift + geom.q_hi).reshape(-1)
        self.k_lo, self.k_hi = geom.k_lo, geom.k_hi
        self.num_q_tiles, self.num_k_tiles = rows * geom.num_q_tiles, geom.num_k_tiles
        self.device, self.cache = geom.device, {}

    def split(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.div(keys, self.num_k_tiles, rounding_mode="floor"), keys % self.num_k_tiles


class _SetProgram:
    """`program` evaluated at stacked positions: the row (hence the parameters) read off i."""

    def __init__(self, program: Program, values: torch.Tensor):
        self.program, self.values, self.atoms = program, values, program.atoms

    def _split(self, ii: torch.Tensor):
        row = torch.div(ii, SPAN, rounding_mode="floor")
        params = tuple(self.values[:, k][row] for k in range(self.values.shape[1]))
        return row, ii - row * SPAN - OFFSET, params

    def at(self, ii, jj):
        _, i, params = self._split(ii)
        return self.program.at(i, jj, params)

    def interval(self, i0, i1, j0, j1):
        row, lo, params = self._split(i0)
        return self.program.interval(lo, i1 - row * SPAN - OFFSET, j0, j1, params)

    def row_counts(self, ii, j0, j1):
        _, i, params = self._split(ii)
        return self.program.row_counts(i, j0, j1, params)


def set_lists(reads: ScalarReads, values: torch.Tensor, nq: int, nk: int, q_offset: int, block_q: int,
              block_k: int, *, k_offset: int = 0, transposed: bool = False) -> tuple:
    """(partial_ptr, partial_idx, full_ptr, full_idx, rows): the exact lists of every set
    (`values`: int64 (sets, reads), `ScalarReads.values`), one block of `rows` rows per set — query
    tiles, or key tiles where `transposed` — entries ascending; row = set * rows + tile."""
    device = values.device
    distinct, inverse = torch.unique(values, dim=0, return_inverse=True)
    geom = Geometry(nq, nk, q_offset, block_q, block_k, EvalContext(nq=nq, nk=nk, q_offset=q_offset,
                                                                      k_offset=k_offset),
                    device, k_offset=k_offset)
    stacked, program = _Stacked(geom, len(distinct)), _SetProgram(reads.program, distinct)
    keys = candidate_keys(program, stacked, 0, stacked.num_q_tiles)
    row, kt = stacked.split(keys)
    verdict = exact_verdict(program, stacked, row, kt)
    tiles, rows = geom.num_q_tiles, (geom.num_k_tiles if transposed else geom.num_q_tiles)
    owner, qt = torch.div(row, tiles, rounding_mode="floor"), row % tiles
    line, col = (owner * rows + kt, qt) if transposed else (row, kt)
    out = []
    for keep in (verdict.nonempty & ~verdict.full, verdict.full):
        ptr, idx = _csr(line[keep], col[keep], len(distinct) * rows, ordered=not transposed)
        out += _expand(ptr, idx, inverse, rows)
    return (*out, rows)


def _csr(rows: torch.Tensor, cols: torch.Tensor, num_rows: int, *, ordered: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR of (row, col) pairs, cols ascending within a row; `ordered`: already sorted so (the
    candidates' keys are sorted by query tile, then key tile)."""
    if not ordered:
        cols = cols[torch.argsort(rows * (int(cols.max()) + 1 if len(cols) else 1) + cols)]
    ptr = torch.zeros(num_rows + 1, dtype=torch.int64, device=rows.device)
    ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=num_rows), 0)
    return ptr, cols


def _expand(ptr: torch.Tensor, idx: torch.Tensor, inverse: torch.Tensor, rows: int) -> list:
    """Lists of the distinct value rows → lists of every set (set s takes row inverse[s]'s)."""
    source = (inverse[:, None] * rows + torch.arange(rows, device=ptr.device)).reshape(-1)
    counts = ptr[source + 1] - ptr[source]
    out_ptr = torch.zeros(len(source) + 1, dtype=torch.int64, device=ptr.device)
    out_ptr[1:] = torch.cumsum(counts, 0)
    total = int(out_ptr[-1])
    within = torch.arange(total, device=ptr.device) - out_ptr[:-1].repeat_interleave(counts, output_size=total)
    positions = ptr[source].repeat_interleave(counts, output_size=total) + within
    return [out_ptr.to(torch.int32), idx[positions].to(torch.int32)]
