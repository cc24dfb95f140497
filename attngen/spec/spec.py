"""`Spec`: one attention variant, immutable, validated on construction, with a canonical form.

Two specs that mean the same thing compare and hash equal: equality is over `canonical()`, which
holds the normalised mask with ``causal`` folded in and drops the name (a name labels a spec; it
does not change what it computes).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cached_property

import torch

from ..errors import ShapeError, SpecError
from . import random_draw
from .formula import Formula, ScoreFormula, bind_mask
from .lsh import Lsh, refuse_with_lsh
from .inputs import SINK, InputDecl, check_inputs, input_decls
from .normalize import normalize
from .predicates import (All_, Any_, Band, Causal, EvalContext, Everything, Not_, Nothing, Predicate,
                         Random, Segments)

KINDS = ("softmax", "linear")
FEATURE_MAPS = ("elu1", "relu", "favor")
# Maps people try that can go negative: the normaliser phi(q)^T z can then reach zero or change sign.
SIGNED_FEATURE_MAPS = {
    "identity": "phi(x) = x can be negative",
    "linear": "phi(x) = x can be negative",
    "none": "no feature map means phi(x) = x, which can be negative",
    "elu": "elu(x) is negative for x < 0 (down to -1); use elu1 (elu(x) + 1)",
    "tanh": "tanh(x) is negative for x < 0",
}
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _positive_int(name, value, *, low=1, high=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, value, "must be an integer")
    if value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise SpecError(name, value, f"must be {bound}")
    return value


def _positive_float(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(name, value, "must be a number")
    if not math.isfinite(value) or value <= 0:
        raise SpecError(name, value, "must be a finite number > 0")
    return float(value)


@dataclass(frozen=True)
class FeatureMap:
    """The feature map of linear attention: ``elu1``, ``relu`` or ``favor`` (with m features)."""

    name: str
    features: int | None = None
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise SpecError("feature_map.name", self.name, f"must be one of {', '.join(FEATURE_MAPS)}")
        if self.name in SIGNED_FEATURE_MAPS:
            raise SpecError("feature_map", self.name,
                            f"is refused: {SIGNED_FEATURE_MAPS[self.name]}; linear attention needs "
                            f"a positive feature map ({', '.join(FEATURE_MAPS)})")
        if self.name not in FEATURE_MAPS:
            raise SpecError("feature_map", self.name, f"must be one of {', '.join(FEATURE_MAPS)}")
        if self.name != "favor" and self.features is not None:
            raise SpecError("feature_map.features", self.features, "applies to favor only")
        if self.features is not None:
            _positive_int("feature_map.features", self.features, high=4096)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SpecError("feature_map.seed", self.seed, "must be an integer >= 0")


@dataclass(frozen=True)
class Select:
    """`select: {top: k, block: R}` (SPEC.md, "Content-based sparsity"): per query block of R rows
    and kv head, the k key blocks of R keys with the largest gate score, plus the query block's own
    key blocks. R is a power of two >= 16 so that every kernel tile (16..R rows or keys, powers of
    two) lies inside one block and the selection is exact at tile level."""

    top: int
    block: int

    def __post_init__(self):
        _positive_int("select.top", self.top, high=1 << 20)
        _positive_int("select.block", self.block, low=16, high=1 << 16)
        if self.block & (self.block - 1):
            raise SpecError("select.block", self.block, "must be a power of two (16, 32, 64, ...): "
                            "kernel tiles must divide it")

    @classmethod
    def of(cls, value) -> "Select":
        """From a mapping {top, block} (YAML, or `Spec(select={...})`)."""
        if isinstance(value, Select):
            return value
        if not isinstance(value, dict):
            raise SpecError("select", value, "must be a mapping with top: k, block: R")
        for key in value:
            if key not in ("top", "block"):
                raise SpecError(f"select.{key}", value[key], f"unknown key {key!r} (allowed: top, block)")
        for key in ("top", "block"):
            if key not in value:
                raise SpecError(f"select.{key}", None, "is required")
        return cls(value["top"], value["block"])

    def to_dict(self) -> dict:
        return {"top": self.top, "block": self.block}


@dataclass(frozen=True, kw_only=True, eq=False)
class Spec:
    """An attention variant. See SPEC.md for every field's meaning."""

    name: str = "attention"
    query_heads: int
    kv_heads: int
    head_dim: int
    kind: str = "softmax"
    causal: bool = False
    mask: Predicate | None = None
    scale: float | None = None
    softcap: float | None = None
    alibi: bool = False
    feature_map: FeatureMap | None = None
    eps: float | None = None
    inputs: tuple[InputDecl, ...] = ()
    score: ScoreFormula | None = None
    sink: bool = False
    value_head_dim: int | None = None
    select: "Select | None" = None
    lsh: "Lsh | None" = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or not set(self.name) <= NAME_CHARS \
                or self.name[0].isdigit():
            raise SpecError("name", self.name, "must be an identifier (letters, digits, _)")
        _positive_int("heads.query", self.query_heads, high=1024)
        _positive_int("heads.kv", self.kv_heads, high=1024)
        if self.query_heads % self.kv_heads:
            raise SpecError("heads", {"query": self.query_heads, "kv": self.kv_heads},
                            "query heads must be a multiple of kv heads (Hq % Hkv == 0)")
        self._head_dims()
        if self.kind not in KINDS:
            raise SpecError("kind", self.kind, f"must be one of {', '.join(KINDS)}")
        if not isinstance(self.causal, bool):
            raise SpecError("causal", self.causal, "must be true or false")
        if not isinstance(self.alibi, bool):
            raise SpecError("alibi", self.alibi, "must be true or false")
        if isinstance(self.mask, str):
            object.__setattr__(self, "mask", _parsed(Formula, self.mask, "mask"))
        if self.mask is not None and not isinstance(self.mask, Predicate):
            raise SpecError("mask", self.mask, "must be a mask predicate or a formula string")
        object.__setattr__(self, "scale", _positive_float("scale", self.scale))
        object.__setattr__(self, "softcap", _positive_float("softcap", self.softcap))
        object.__setattr__(self, "eps", _positive_float("eps", self.eps))
        (self._check_linear if self.kind == "linear" else self._check_softmax)()

    def _head_dims(self):
        """`head_dim: 64` means both; `{qk: 192, v: 128}` sets the value head dim apart (MLA)."""
        dims = self.head_dim
        if isinstance(dims, dict):
            for key in dims:
                if key not in ("qk", "v"):
                    raise SpecError(f"head_dim.{key}", dims[key], f"unknown key {key!r} (allowed: qk, v)")
            if "qk" not in dims:
                raise SpecError("head_dim.qk", None, "is required")
            value = dims.get("v", dims["qk"])
            _positive_int("head_dim.v", value, high=256)
            if self.value_head_dim is not None:
                raise SpecError("value_head_dim", self.value_head_dim, "give it in head_dim or here, not both")
            object.__setattr__(self, "value_head_dim", value)
            object.__setattr__(self, "head_dim", dims["qk"])
            field = "head_dim.qk"
        else:
            field = "head_dim"
        _positive_int(field, self.head_dim, high=256)
        if self.value_head_dim is not None:
            _positive_int("head_dim.v", self.value_head_dim, high=256)
        if self.value_head_dim == self.head_dim:
            object.__setattr__(self, "value_head_dim", None)

    def _bind_formulas(self):
        """Declarations validated; mask and score formulas type-checked against them."""
        if not isinstance(self.sink, bool):
            raise SpecError("sink", self.sink, "must be true or false")
        object.__setattr__(self, "inputs", input_decls(self.inputs, sink=self.sink))
        decls = {d.name: d for d in self.all_inputs}
        object.__setattr__(self, "mask", bind_mask(self.mask, decls))
        if self.score is not None:
            score = self.score if isinstance(self.score, ScoreFormula) else _parsed(ScoreFormula, self.score, "score")
            try:
                object.__setattr__(self, "score", score.bind(decls))
            except SpecError as err:
                raise err.under("score") from None

    def _check_softmax(self):
        self._bind_formulas()
        if self.select is not None and not isinstance(self.select, Select):
            object.__setattr__(self, "select", Select.of(self.select))
        if self.lsh is not None:
            object.__setattr__(self, "lsh", Lsh.of(self.lsh))
            refuse_with_lsh(self)
        if self.feature_map is not None:
            raise SpecError("feature_map", self.feature_map.name, "applies to kind: linear only")
        if self.eps is not None:
            raise SpecError("eps", self.eps, "applies to kind: linear only")
        if isinstance(self.effective_mask, Nothing):
            raise SpecError("mask", self.mask.to_dict() if self.mask is not None else None,
                            "allows no (i, j) pair at all")

    def _check_linear(self):
        if self.mask is not None:
            raise SpecError("mask", self.mask.to_dict(),
                            "is not allowed on kind: linear (only causal: true is)")
        for name in ("softcap", "alibi"):
            if getattr(self, name):
                raise SpecError(name, getattr(self, name), "applies to kind: softmax only")
        if self.feature_map is None:
            raise SpecError("feature_map", None, f"is required for kind: linear ({', '.join(FEATURE_MAPS)})")
        if self.eps is None:
            object.__setattr__(self, "eps", 1e-6)
        for name, default in (("inputs", ()), ("score", None), ("sink", False), ("value_head_dim", None),
                              ("select", None), ("lsh", None)):
            if getattr(self, name) not in (default, None, {}):
                raise SpecError("head_dim.v" if name == "value_head_dim" else name, getattr(self, name),
                                "applies to kind: softmax only")

    # -- derived facts -----------------------------------------------------------------------
    @property
    def group(self) -> int:
        """Query heads per kv head: query head h reads kv head h // group."""
        return self.query_heads // self.kv_heads

    @property
    def grouping(self) -> str:
        if self.kv_heads == self.query_heads:
            return "MHA"
        return "MQA" if self.kv_heads == 1 else "GQA"

    @property
    def v_head_dim(self) -> int:
        """Dv: the value (and output) head dim, Dqk unless `head_dim: {qk, v}` set it apart."""
        return self.value_head_dim if self.value_head_dim is not None else self.head_dim

    @property
    def all_inputs(self) -> tuple[InputDecl, ...]:
        """The declared inputs, with `sink` when `sink: true`."""
        return tuple(self.inputs) + ((SINK,) if self.sink else ())

    @property
    def uses_formulas(self) -> bool:
        """A mask formula, a score formula, inputs, sinks or Dv != Dqk: what the kernels lack."""
        return bool(self.all_inputs or self.score is not None or self.value_head_dim is not None
                    or (self.kind == "softmax" and any(isinstance(p, Formula) for p in self.effective_mask.walk())))

    @property
    def mask_needs_heads(self) -> bool:
        """The mask reads the batch, the head or an input: it differs per (b, h)."""
        return self.kind == "softmax" and any(isinstance(p, Formula) and p.needs_heads
                                              for p in self.effective_mask.walk())

    @property
    def mask_inputs(self) -> tuple[str, ...]:
        """The names of the inputs the mask's formulas read, in declared order."""
        if self.kind != "softmax":
            return ()
        read = {n for p in self.effective_mask.walk() if isinstance(p, Formula) for n in p.inputs_read}
        return tuple(d.name for d in self.all_inputs if d.name in read)

    @property
    def softmax_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.head_dim)

    @property
    def num_features(self) -> int:
        """Width of phi(x) for linear kinds (favor: m, default head_dim; others: head_dim)."""
        fm = self.feature_map
        return fm.features if fm is not None and fm.features is not None else self.head_dim

    @cached_property
    def effective_mask(self) -> Predicate:
        """The normalised mask with `causal` folded in (Everything when nothing is masked)."""
        parts = [p for p in (self.mask, Causal() if self.causal else None) if p is not None]
        if not parts:
            return Everything()
        return normalize(parts[0] if len(parts) == 1 else All_(tuple(parts)))

    @property
    def uses_segments(self) -> bool:
        return any(isinstance(p, Segments) for p in self.effective_mask.walk())

    def canonical(self) -> dict:
        """What the spec means, as plain data: equal for equal meanings, whatever the name."""
        out = {"kind": self.kind, "heads": {"query": self.query_heads, "kv": self.kv_heads},
               "head_dim": self.head_dim}
        if self.kind == "softmax":
            mask = self.effective_mask
            out.update(mask=None if isinstance(mask, Everything) else mask.to_dict(),
                       scale=self.softmax_scale, softcap=self.softcap, alibi=self.alibi)
            out.update(self._formula_fields())
        else:
            fm = self.feature_map
            out.update(causal=self.causal, scale=self.scale, eps=self.eps,
                       feature_map={"name": fm.name, "features": self.num_features if fm.name == "favor" else None,
                                    "seed": fm.seed if fm.name == "favor" else None})
        return out

    def _formula_fields(self) -> dict:
        """The fields of formulas, inputs, sinks and Dv: present only when set, so that the
        canonical form and hash of every spec without them stay what they were."""
        out = {}
        if self.inputs:
            out["inputs"] = {d.name: d.to_dict() for d in self.inputs}
        if self.score is not None:
            out["score"] = self.score.text
        if self.sink:
            out["sink"] = True
        if self.value_head_dim is not None:
            out["value_head_dim"] = self.value_head_dim
        if self.select is not None:
            out["select"] = self.select.to_dict()
        if self.lsh is not None:
            out["lsh"] = self.lsh.to_dict()
        return out

    def content_hash(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def __eq__(self, other):
        return isinstance(other, Spec) and self.canonical() == other.canonical()

    def __hash__(self):
        return hash(self.content_hash())

    def to_dict(self) -> dict:
        """A dict that `load_spec` reads back to an equal spec, with this spec's name."""
        out = {"name": self.name, "heads": {"query": self.query_heads, "kv": self.kv_heads},
               "head_dim": self.head_dim, "kind": self.kind}
        if self.kind == "softmax":
            mask = self.effective_mask
            if not isinstance(mask, Everything):
                out["mask"] = mask.to_dict()
            for key in ("scale", "softcap"):
                if getattr(self, key) is not None:
                    out[key] = getattr(self, key)
            if self.alibi:
                out["alibi"] = True
            extra = self._formula_fields()
            if "value_head_dim" in extra:
                out["head_dim"] = {"qk": self.head_dim, "v": extra.pop("value_head_dim")}
            out.update(extra)
        else:
            fm = self.feature_map
            out["causal"] = self.causal
            out["feature_map"] = {"name": fm.name, **({"features": self.num_features, "seed": fm.seed}
                                                      if fm.name == "favor" else {})}
            out["eps"] = self.eps
            if self.scale is not None:
                out["scale"] = self.scale
        return out

    # -- meaning at concrete sizes -----------------------------------------------------------
    def eval_context(self, nq: int, nk: int, q_offset: int | None = None, seg_q=None, seg_k=None,
                     device=None, *, inputs: dict | None = None, batch: int | None = None,
                     k_offset: int = 0, total_nk: int | None = None) -> EvalContext:
        """Everything the predicate needs to be evaluated at these sizes (validated). `inputs` are
        the call's inputs by name and `batch` its B (formulas read them; see `formula_context`);
        2-D segment ids must have `batch` rows when it is given.

        A chunk of a longer sequence (context parallelism): keys are positions k_offset ..
        k_offset + nk - 1 of a sequence of `total_nk` keys (default k_offset + nk), and random
        draws are those of that whole sequence; segment ids are the chunk's own."""
        k_offset, total_nk = resolve_k_offset(nk, k_offset, total_nk)
        q_offset = resolve_q_offset(nq, nk, q_offset, k_offset)
        rows = cols = None
        if self.uses_segments:
            rows, cols = segment_grids(seg_q, seg_k, nq, nk, device, batch)
        elif seg_q is not None or seg_k is not None:
            raise ShapeError(f"spec {self.name!r} has no segments mask, but seg_q/seg_k were given")
        extra = self.formula_context(nq, nk, inputs, batch, device)
        tables = {}

        def random_table(pred: Random):
            if pred not in tables:
                first, count = random_draw.query_block_span(nq, q_offset, pred.block)
                table = random_draw.draw_key_blocks(seed=pred.seed, per_row=pred.per_row, block=pred.block,
                                                    nk=total_nk, first_query_block=first, num_query_blocks=count)
                tables[pred] = (first, table.to(device) if device is not None else table)
            return tables[pred]

        for pred in self.effective_mask.walk():   # fail early: per_row vs the number of key blocks
            if isinstance(pred, Random):
                try:
                    random_table(pred)
                except SpecError as err:          # name where the predicate is in the user's mask
                    path = _path_to(self.mask, pred, "mask")
                    raise SpecError(f"{path}.per_row" if path else err.field, err.value,
                                    err.reason) from None
        return EvalContext(nq=nq, nk=nk, q_offset=q_offset, k_offset=k_offset, seg_rows=rows, seg_cols=cols,
                           random_table=random_table, **extra)

    def formula_context(self, nq: int, nk: int, inputs: dict | None, batch: int | None, device) -> dict:
        """The inputs, checked (`ShapeError` naming the input), and batch/head index grids shaped
        (B, 1, 1, 1) and (1, Hq, 1, 1) to broadcast against (nq, nk) position grids."""
        if not self.all_inputs and not inputs and not self.uses_formulas:
            return {}
        batch = 1 if batch is None else batch
        sizes = {"B": batch, "Hq": self.query_heads, "Hkv": self.kv_heads, "Nq": nq, "Nk": nk}
        # inputs None where the mask reads none: the caller evaluates the mask alone (a block map,
        # a picture). Else they are a call's inputs, checked; float64 may stand for float32: what a
        # float64 evaluation (the reference, gradcheck) passes.
        checked = ({} if inputs is None and not self.mask_inputs else
                   check_inputs(self.all_inputs, dict(inputs or {}), sizes, device, float64_ok=True))
        return {"inputs": checked, "group": self.group,
                "batch": torch.arange(batch, device=device).view(batch, 1, 1, 1),
                "heads": torch.arange(self.query_heads, device=device).view(1, self.query_heads, 1, 1)}

    def dense_mask(self, nq: int, nk: int, q_offset: int | None = None, seg_q=None, seg_k=None,
                   *, device=None, inputs: dict | None = None, batch: int | None = None,
                   k_offset: int = 0, total_nk: int | None = None) -> torch.Tensor:
        """The mask evaluated on every pair: bool (nq, nk), or (B, nq, nk) for batched segments,
        or (B, Hq, nq, nk) for a formula that reads the batch, the head or an input. Keys are
        positions k_offset .. k_offset + nk - 1 of total_nk (`eval_context`).

        For tests and pictures only: kernels never build this.
        """
        if self.kind != "softmax":
            base = Band(None, 0) if self.causal else Everything()
        else:
            base = self.effective_mask
        ctx = self.eval_context(nq, nk, q_offset, seg_q, seg_k, device=device, inputs=inputs, batch=batch,
                                k_offset=k_offset, total_nk=total_nk)
        ii = (torch.arange(nq, device=device) + ctx.q_offset).unsqueeze(-1)
        jj = (torch.arange(nk, device=device) + ctx.k_offset).unsqueeze(0)
        mask = base.evaluate(ii, jj, ctx)
        if self.mask_needs_heads:
            mask = mask.expand(ctx.batch.shape[0], self.query_heads, nq, nk)
        return mask


def _parsed(cls, text, field: str):
    try:
        return cls.parse(text)
    except SpecError as err:
        raise err.under(field) from None


def _path_to(pred: Predicate | None, target: Predicate, path: str) -> str | None:
    """The YAML field path of `target` inside `pred` (``mask.any[2].random``), or None."""
    if pred is None:
        return None
    if pred == target:
        return f"{path}.{next(iter(pred.to_dict()))}"
    if isinstance(pred, (All_, Any_)):
        key = "all" if isinstance(pred, All_) else "any"
        for n, part in enumerate(pred.parts):
            found = _path_to(part, target, f"{path}.{key}[{n}]")
            if found:
                return found
    if isinstance(pred, Not_):
        return _path_to(pred.part, target, f"{path}.not")
    return None


def resolve_q_offset(nq: int, nk: int, q_offset: int | None, k_offset: int = 0) -> int:
    """SPEC.md alignment: by default the last query lines up with the last key (at k_offset + nk - 1
    when the call's keys start at position k_offset)."""
    if q_offset is None:
        return k_offset + nk - nq
    if isinstance(q_offset, bool) or not isinstance(q_offset, int):
        raise ShapeError(f"q_offset must be an int, got {q_offset!r}")
    return q_offset


def resolve_k_offset(nk: int, k_offset: int, total_nk: int | None) -> tuple[int, int]:
    """(k_offset, total_nk) checked: the call's keys are positions k_offset .. k_offset + nk - 1 of
    a sequence of total_nk keys (default: the call's keys end the sequence)."""
    if isinstance(k_offset, bool) or not isinstance(k_offset, int) or k_offset < 0:
        raise ShapeError(f"k_offset must be an int >= 0, got {k_offset!r}")
    if total_nk is None:
        return k_offset, k_offset + nk
    if isinstance(total_nk, bool) or not isinstance(total_nk, int) or total_nk < k_offset + nk:
        raise ShapeError(f"total_nk={total_nk!r} must be an int >= k_offset + nk = {k_offset + nk}")
    return k_offset, total_nk


def segment_grids(seg_q, seg_k, nq, nk, device, batch=None):
    if seg_q is None or seg_k is None:
        raise ShapeError("this spec has a segments mask: pass seg_q (Nq,) or (B, Nq) and seg_k "
                         "(Nk,) or (B, Nk) integer tensors")
    for name, seg, n in (("seg_q", seg_q, nq), ("seg_k", seg_k, nk)):
        if not isinstance(seg, torch.Tensor) or seg.dtype.is_floating_point or seg.dtype == torch.bool:
            raise ShapeError(f"{name} must be an integer tensor, got {getattr(seg, 'dtype', type(seg))}")
        if seg.dim() not in (1, 2) or seg.shape[-1] != n:
            raise ShapeError(f"{name} has shape {tuple(seg.shape)}, expected ({n},) or (B, {n})")
        if batch is not None and seg.dim() == 2 and seg.shape[0] != batch:
            # (3, N) ids for a batch of 1 would silently use the first sequence's documents.
            raise ShapeError(f"{name} has shape {tuple(seg.shape)}, expected ({n},) or ({batch}, {n}): "
                             f"2-D segment ids hold one row per sequence of the batch (B = {batch})")
    rows = seg_q.to(device=device, dtype=torch.int64).unsqueeze(-1)    # [.., nq, 1]
    cols = seg_k.to(device=device, dtype=torch.int64).unsqueeze(-2)    # [.., 1, nk]
    return rows, cols


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The standard ALiBi slopes (Press et al.): geometric in 2**(-8/n), with the paper's rule for
    head counts that are not powers of two. float64, (num_heads,)."""
    def powers(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = powers(closest)
    if closest != num_heads:
        slopes += powers(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float64)
