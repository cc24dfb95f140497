"""Formulas that read the batch, the heads and call-time inputs, and score formulas, as kernel code.

SPEC.md, "Expressions". The mask's and the score's sympy forms read inputs as
``Indexed(IndexedBase(name), e1, ..)``; here every distinct read becomes a symbol ``read_<n>``
(inner reads first, so an index may itself read an input) and is printed one of two ways:

- *hoisted*: its indices use only ``b``, ``h``, ``hk``, constants and other hoisted reads (a
  per-(batch, head) scalar such as ``slope[h]`` or ``prefix[b]``): loaded once per program, in the
  kernel's body before the key loop (`setup`), and passed to the tile functions by name;
- *inline*: a masked load where the tile needs it, ``tl.load(in_x + i0 * stride_in_x_0 + ..,
  mask=(0 <= i0 < in_x_size0) & .., other=0)``: an index outside the input's shape reads 0
  (False for a boolean input) and the kernel never reads outside the tensor.

Each input read gets the kernel arguments ``in_<name>`` (the tensor), ``in_<name>_size<k>`` and
``stride_in_<name>_<k>`` (declared in the plans' signatures, `signature_args`). The batch and the
heads print as ``batch``, ``query_head`` (``head_rows``, a column of the packed rows, in decode) and
``kv_head``; the tile functions receive them, the inline inputs' arguments and the hoisted reads as
`args` (threaded through the templates' ``formula_args`` hole).

The score formula is printed over ``s_nat`` (the score in natural units, after scale, softcap and
ALiBi: the kernels' log2-unit score times ln 2); its derivative in ``s`` (`dscore_code`) chains into
the backward's dS, and its derivative in each read of a ``grad: true`` input (`grad_reads`) gives
that input's gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..errors import CompileError
from ..spec.formula import bind_mask
from ..spec.formula_types import SYMBOLS
from ..spec.inputs import SINK, InputDecl, input_decl
from .printer import print_triton
from .signature import Arg

B, H, HK, S = (SYMBOLS[n] for n in ("b", "h", "hk", "s"))
DATA = {B, H, HK}
TENSOR_DTYPE = {"float32": "fp32", "int32": "i32", "int64": "i64", "bool": "i1"}
# What a tile function calls the batch, the query head and the kv head, per kernel kind (decode's
# tile functions already take `batch` and `kv_head`, and its rows mix heads: h is a column there).
DATA_NAMES = {"fwd": ("batch", "query_head", "kv_head"), "bwd": ("batch", "query_head", "kv_head"),
              "decode": ("seq_batch", "head_rows", "seq_kv_head")}


@dataclass(frozen=True)
class Read:
    """One distinct read of an input: `indices` may use the symbols of earlier reads."""

    symbol: sympy.Symbol
    name: str
    indices: tuple
    hoisted: bool


def _decls(spec: dict) -> dict[str, InputDecl]:
    decls = {name: input_decl(name, value) for name, value in (spec.get("inputs") or {}).items()}
    if spec.get("sink"):
        decls["sink"] = SINK
    return decls


class FormulaCode:
    """The reads, arguments and printed code of one graph's mask and score formulas."""

    def __init__(self, spec: dict, mask, score, kind: str):
        """`spec`: the canonical spec (its inputs); `mask`, `score`: sympy forms or None."""
        self.kind = kind
        self.decls = _decls(spec)
        self.reads: list[Read] = []
        self._seen: dict = {}
        self.mask = None if mask is None else self._rewrite(mask)
        self.score = None if score is None else self._rewrite(score)
        exprs = [e for e in (self.mask, self.score) if e is not None]
        self.reads_data = any(e.free_symbols & (DATA | {r.symbol for r in self.reads}) for e in exprs)
        self.inputs = tuple(dict.fromkeys(r.name for r in self.reads))
        self.names = self._names()

    @classmethod
    def of_graph(cls, g, kind: str) -> "FormulaCode":
        # A graph read back from the cache holds its formulas unbound: bind them to the inputs again.
        mask = bind_mask(g.node("mask").attrs["predicate"], _decls(g.facts["spec"])).expr() if "mask" in g else None
        score = g.node("score").attrs["formula"] if "score" in g else None
        return cls(g.facts["spec"], mask, score, kind)

    # -- reads ----------------------------------------------------------------------------------
    def _rewrite(self, expr):
        if isinstance(expr, sympy.Indexed):
            name = str(expr.base.label)
            if name not in self.decls:
                raise CompileError(f"the formula reads {name!r}, which is not a declared input")
            indices = tuple(self._rewrite(e) for e in expr.indices)
            key = (name, indices)
            if key not in self._seen:
                dtype = self.decls[name].dtype
                symbol = sympy.Symbol(f"read_{len(self.reads)}", **(
                    {"real": True} if dtype == "float32" else {"integer": True}))
                hoisted_symbols = DATA | {r.symbol for r in self.reads if r.hoisted}
                hoisted = all(e.free_symbols <= hoisted_symbols for e in indices)
                self.reads.append(Read(symbol, name, indices, hoisted))
                self._seen[key] = symbol
            return self._seen[key]
        if not expr.args or isinstance(expr, sympy.Symbol):
            return expr
        return expr.func(*(self._rewrite(a) for a in expr.args))

    @property
    def scalars(self) -> frozenset:
        """Symbols that are one value per program (decode's rows mix heads: there h is a column)."""
        out = {B, HK} | ({H} if self.kind != "decode" else set())
        for read in self.reads:
            if read.hoisted and all(e.free_symbols <= out for e in read.indices):
                out.add(read.symbol)
        return frozenset(out)

    def _names(self) -> dict:
        """Printer names of the data symbols and of every read (a hoisted read by its local, an
        inline one as its masked load)."""
        names = dict(zip((B, H, HK), DATA_NAMES[self.kind]))
        for n, read in enumerate(self.reads):
            names[read.symbol] = f"read_{n}" if read.hoisted else f"({self.load(read, names)})"
        return names

    def load(self, read: Read, names: dict) -> str:
        """The masked load of `read`, its indices printed with `names`."""
        base = f"in_{read.name}"
        offset = " + ".join(f"({self._index(e, names)}) * stride_{base}_{k}" for k, e in enumerate(read.indices))
        other = "0.0" if self.decls[read.name].dtype == "float32" else "0"
        return f"tl.load({base} + {offset}, mask={self._inside(read, names)}, other={other})"

    def flat_index(self, read: Read, names: dict) -> tuple[str, str]:
        """(the flat row-major element index of `read`, whether it lies inside the input)."""
        flat = None
        for k, index in enumerate(read.indices):
            code = f"({self._index(index, names)})"
            flat = code if flat is None else f"({flat} * in_{read.name}_size{k} + {code})"
        return flat, self._inside(read, names)

    @staticmethod
    def _index(index, names: dict) -> str:
        return print_triton(index, query="q_pos", key="k_pos", symbols=names)

    def _inside(self, read: Read, names: dict) -> str:
        """0 <= index < size for every index (the lower check only where an index may be negative)."""
        checks, sizes = [], {}
        for k, index in enumerate(read.indices):
            size = sympy.Symbol(f"in_{read.name}_size{k}", integer=True, positive=True)
            sizes[size] = size.name
            checks += ([] if index.is_nonnegative else [sympy.Ge(index, 0)]) + [sympy.Lt(index, size)]
        return print_triton(sympy.And(*checks, evaluate=False), query="q_pos", key="k_pos",
                            symbols={**names, **sizes}, scalars=self.scalars | set(sizes))

    # -- what the plans and templates read ------------------------------------------------------
    @property
    def active(self) -> bool:
        return bool(self.reads) or self.reads_data

    def args(self) -> str:
        """The tile functions' extra parameters (and arguments: the same names at every call)."""
        if not self.active:
            return ""
        names = list(DATA_NAMES[self.kind])
        for name in self.inputs:
            if any(not r.hoisted for r in self.reads if r.name == name):
                names += self._input_arg_names(name)
        names += [f"read_{n}" for n, r in enumerate(self.reads) if r.hoisted]
        return "".join(f", {n}" for n in names)

    def _input_arg_names(self, name: str) -> list[str]:
        rank = len(self.decls[name].shape)
        return ([f"in_{name}"] + [f"in_{name}_size{k}" for k in range(rank)]
                + [f"stride_in_{name}_{k}" for k in range(rank)])

    def setup(self) -> list[str]:
        """Lines of the kernel body, before the key loop: the hoisted reads."""
        lines = ["seq_batch, head_rows, seq_kv_head = batch, query_head[:, None], kv_head   # head_rows: [BLOCK_M, 1]"] if (
            self.active and self.kind == "decode") else []
        for n, read in enumerate(self.reads):
            if read.hoisted:
                lines.append(f"read_{n} = {self.load(read, self.names)}    # {read.name}[{', '.join(map(str, read.indices))}]")
        return lines

    def signature_args(self) -> tuple[Arg, ...]:
        """The kernel arguments of the inputs read: tensor, sizes, then strides."""
        out = []
        for name in self.inputs:
            decl = self.decls[name]
            rank = len(decl.shape)
            out.append(Arg(f"in_{name}", "tensor", TENSOR_DTYPE[decl.dtype]))
            out += [Arg(f"in_{name}_size{k}", "size") for k in range(rank)]
        for name in self.inputs:
            out += [Arg(f"stride_in_{name}_{k}", "stride", axis=str(k)) for k in range(len(self.decls[name].shape))]
        return tuple(out)

    def print(self, expr, **names) -> str:
        return print_triton(expr, query="q_pos", key="k_pos", symbols={**self.names, S: "s_nat", **names},
                            scalars=self.scalars)

    def mask_code(self, random_args: dict) -> str:
        return print_triton(self.mask, query="q_pos", key="k_pos", random_args=random_args, symbols=self.names,
                            scalars=self.scalars)

    def score_code(self) -> str:
        return self.print(self.score)

    def dscore_code(self) -> str:
        """d score / d s, printed over the same names."""
        return self.print(sympy.diff(self.score, S))

    def grad_reads(self) -> list[tuple[int, Read, sympy.Expr]]:
        """(n, read, d score / d read) of every read of a `grad: true` input by the score."""
        if self.score is None:
            return []
        out = []
        for n, read in enumerate(self.reads):
            if self.decls[read.name].grad and read.symbol in self.score.free_symbols:
                out.append((n, read, sympy.diff(self.score, read.symbol)))
        return out


def formula_values(g, kind: str, random_args: dict) -> dict:
    """Template values of the formula holes: `formula_args`, `formula_setup_lines`, the score's code."""
    code = FormulaCode.of_graph(g, kind)
    values = dict(formula_args=code.args(), formula_setup_lines=code.setup(), has_score=code.score is not None,
                  score_code="", dscore_code="", score_text="")
    if code.score is not None:
        values.update(score_code=code.score_code(), dscore_code=code.dscore_code(),
                      score_text=str(g.facts["spec"].get("score", "")))
    if code.mask is not None:
        values["formula_mask_code"] = code.mask_code(random_args)
    return values


# -- gradients of `grad: true` inputs (the backward's dQ kernel) --------------------------------
def grad_values(code: FormulaCode) -> dict:
    """Template values of the dQ kernel's input-gradient holes.

    Each program (query tile of one batch and query head) owns a row of a zeroed float32 buffer
    ``d_in_<name>`` (programs x the input's elements) and adds its share there: a hoisted read's
    share is summed over the program's tiles in registers (`dread_<n>`) and added once at the end;
    an inline read's share is scattered per tile, element by element over the tile's range of
    flat indices (a load and a store per element, ordered by a barrier: no atomics). The launcher
    sums the rows in a fixed order: two runs give the same bits."""
    reads = code.grad_reads()
    if not reads:
        return dict(has_grad_reads=False, grad_args="", grad_returns="", grad_tile_lines=[],
                    grad_setup_lines=[], grad_finish_lines=[])
    inline_inputs = list(dict.fromkeys(r.name for _, r, _ in reads if not r.hoisted))
    hoisted = [n for n, r, _ in reads if r.hoisted]
    tile = ["g = p * (dp - delta_rows[:, None])                           # d(loss)/d(score), natural units"]
    setup = [f"d_in_{name}_row = d_in_{name} + (batch_head.to(tl.int64) * tl.num_programs(0) + query_tile) * "
             f"({' * '.join(f'in_{name}_size{k}' for k in range(len(code.decls[name].shape)))})"
             for name in dict.fromkeys(r.name for _, r, _ in reads)]
    setup += [f"dread_{n} = 0.0" for n in hoisted]
    finish = []
    for n, read, derivative in reads:
        share = f"tl.where(p > 0.0, g * ({code.print(derivative)}), 0.0)"
        if read.hoisted:
            tile.append(f"dread_{n} += tl.sum({share})               # d(loss)/d {read.name}[..], read {n}")
            flat, inside = code.flat_index(read, code.names)
            finish += [f"tl.store(d_in_{read.name}_row + {flat}, tl.load(d_in_{read.name}_row + {flat}, mask={inside}, "
                       f"other=0.0) + dread_{n}, mask={inside})", "tl.debug_barrier()"]
            continue
        flat, inside = code.flat_index(read, code.names)
        tile += [f"share = {share}                   # d(loss)/d {read.name}[..], read {n}",
                 f"flat = tl.where({inside}, {flat}, -1) + tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)",
                 "flat = tl.where(p > 0.0, flat, -1)",
                 "for element in range(tl.min(tl.where(flat >= 0, flat, 1 << 30)), tl.max(flat) + 1):",
                 f"    part = tl.sum(tl.where(flat == element, share, 0.0))",
                 f"    tl.store(d_in_{read.name}_row + element, tl.load(d_in_{read.name}_row + element) + part)",
                 "    tl.debug_barrier()"]
    params = [f"d_in_{name}_row" for name in inline_inputs] + [f"dread_{n}" for n in hoisted]
    return dict(has_grad_reads=True, grad_args="".join(f", {p}" for p in params),
                grad_returns="".join(f", dread_{n}" for n in hoisted), grad_tile_lines=tile,
                grad_setup_lines=setup, grad_finish_lines=finish)


def grad_signature_args(code: FormulaCode) -> tuple[Arg, ...]:
    """The dQ kernel's per-program gradient buffers, one per `grad: true` input the score reads."""
    return tuple(Arg(f"d_in_{name}", "tensor", "fp32")
                 for name in dict.fromkeys(r.name for _, r, _ in code.grad_reads()))
