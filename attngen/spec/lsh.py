"""`lsh: {buckets, seed, rounds}` (SPEC.md, "Content-based sparsity"): Reformer-style hashing.

With ``R = torch.randn(rounds, D, n // 2, generator=torch.Generator().manual_seed(seed))``
(float32, n even) the bucket of a vector x in round r is ``argmax([x·R[r], −x·R[r]])`` (the first
maximum). A pair (i, j) of query head h is allowed iff the mask allows it and, in some round,
bucket(q[b, h, i]) == bucket(k[b, hk, j]).

The kernels run an lsh spec through its *kernel spec* (`kernel_spec`): per round, queries and keys
are sorted by bucket (runtime/lsh.py), so the kernels see permuted rows. The kernel spec is the
same attention over those permuted rows, with the batch and query heads flattened into one batch
axis (each (b, h) has its own query order), one head, and the mask rewritten:
- ``segments`` with the sorted bucket ids as seg_q / seg_k: attention within bucket runs;
- the spec's mask at the ORIGINAL positions: a formula over the inputs ``lsh_i[b, i]`` and
  ``lsh_j[b, j]`` (original query and key positions of the permuted rows), so causal, band, ...
  keep their meaning through the permutation;
- ALiBi as the score ``s - lsh_alibi_slope[b] * (lsh_i[b, i] - lsh_j[b, j])``: the row's head's
  slope, at the original positions; a score formula after it, read like the mask;
- formulas' b, h, hk as the flattened row's ``lsh_b[b]``, ``lsh_h[b]``, ``lsh_hk[b]``; the user's
  inputs as they are (heads as fixed sizes; an axis B is padded to B·Hq rows at call time);
- a segments mask as ``lsh_docq[b, i] == lsh_dock[b, j]`` (the documents of the permuted rows), a
  random mask over each permuted query row's drawn key blocks (`random_input`);
- for rounds > 1, ``lsh_q{r}[b, i] != lsh_k{r}[b, j]`` for every earlier round r: a pair equal in
  several rounds is attended in the first one only, so the rounds' parts are disjoint and merge
  exactly by lse (runtime/merge.py). Slots of rounds not yet run hold -1 (queries) and -2 (keys).
Its `lsh` carries ``permuted: true``: the kernels take their tile lists per call (like `select:`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SpecError
from .formula import Formula
from .formula_syntax import Node, parse_formula, unparse
from .predicates import (All_, Any_, Band, Blocks, Causal, Columns, Everything, GlobalTokens, Not_, Nothing,
                         Predicate, Random, Segments, Stride)

MAX_BUCKETS = 1 << 16
MAX_ROUNDS = 16
QUERY_POS, KEY_POS, SLOPE = "lsh_i", "lsh_j", "lsh_alibi_slope"
# Per flattened row b * Hq + h: the original batch, query head and kv head (formulas read them).
ROW_BATCH, ROW_HEAD, ROW_KV_HEAD = "lsh_b", "lsh_h", "lsh_hk"
# The document ids (seg_q, seg_k of a segments mask) of the permuted rows.
DOC_Q, DOC_K = "lsh_docq", "lsh_dock"


@dataclass(frozen=True)
class Lsh:
    """`lsh: {buckets: n, seed: s, rounds: r}`; `permuted` marks a kernel spec (never written by
    users: `kernel_spec` sets it)."""

    buckets: int
    seed: int = 0
    rounds: int = 1
    permuted: bool = False

    def __post_init__(self):
        for name, value, low, high in (("buckets", self.buckets, 2, MAX_BUCKETS),
                                       ("rounds", self.rounds, 1, MAX_ROUNDS)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise SpecError(f"lsh.{name}", value, f"must be an integer in {low}..{high}")
        if self.buckets % 2:
            raise SpecError("lsh.buckets", self.buckets, "must be even: a bucket is the argmax over "
                            "[x·R, −x·R] with R of buckets / 2 columns")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 1 << 63:
            raise SpecError("lsh.seed", self.seed, "must be an integer in 0..2**63-1")
        if not isinstance(self.permuted, bool):
            raise SpecError("lsh.permuted", self.permuted, "must be true or false")

    @classmethod
    def of(cls, value) -> "Lsh":
        """From a mapping {buckets, seed, rounds} (YAML, or `Spec(lsh={...})`)."""
        if isinstance(value, Lsh):
            return value
        if not isinstance(value, dict):
            raise SpecError("lsh", value, "must be a mapping with buckets: n (even), seed: s, rounds: r")
        allowed = ("buckets", "seed", "rounds", "permuted")
        for key in value:
            if key not in allowed:
                raise SpecError(f"lsh.{key}", value[key], f"unknown key {key!r} (allowed: buckets, seed, rounds)")
        if "buckets" not in value:
            raise SpecError("lsh.buckets", None, "is required")
        return cls(value["buckets"], value.get("seed", 0), value.get("rounds", 1), value.get("permuted", False))

    def to_dict(self) -> dict:
        out = {"buckets": self.buckets, "seed": self.seed, "rounds": self.rounds}
        return {**out, "permuted": True} if self.permuted else out

    def rotations(self, head_dim: int, device=None) -> torch.Tensor:
        """R, float32 (rounds, D, buckets // 2), drawn exactly as SPEC.md writes it (on the CPU)."""
        rot = torch.randn(self.rounds, head_dim, self.buckets // 2,
                          generator=torch.Generator().manual_seed(self.seed))
        return rot if device is None else rot.to(device)


# -- validation ---------------------------------------------------------------------------------
def refuse_with_lsh(spec) -> None:
    """What a user's lsh spec may not combine with, refused naming the field and the reason."""
    lsh = spec.lsh
    if lsh.permuted:
        return
    if spec.select is not None:
        raise SpecError("lsh", lsh.to_dict(), "cannot be combined with select: (one content-based "
                        "pattern per spec)")
    if spec.mask is not None:
        try:
            mask_formula(spec.effective_mask, "i", "j")
        except ValueError as err:
            raise SpecError("mask", spec.mask.to_dict(), f"is not supported with lsh: ({err})") from None


# -- the kernel spec ----------------------------------------------------------------------------
def mask_formula(pred: Predicate, i: str, j: str) -> str | None:
    """The formula text of `pred` with positions `i` and `j` (texts), None for Everything.
    ValueError naming what cannot be written that way."""
    if isinstance(pred, Everything):
        return None
    if isinstance(pred, Nothing):
        return "False"
    if isinstance(pred, Causal):
        return f"{j} <= {i}"
    if isinstance(pred, Band):
        parts = ([f"{j} >= {i} - {pred.left}"] if pred.left is not None else []) + \
                ([f"{j} <= {i} + {pred.right}"] if pred.right is not None else [])
        return " and ".join(parts) or None
    if isinstance(pred, Blocks):
        return f"{i} // {pred.size} == {j} // {pred.size}"
    if isinstance(pred, Columns):
        return f"{j} % {pred.every} >= {pred.every - pred.width}"
    if isinstance(pred, GlobalTokens):
        if pred.tokens is None:
            return f"({i} >= 0 and {i} < {pred.first}) or ({j} >= 0 and {j} < {pred.first})"
        return " or ".join(f"{x} == {t}" for t in pred.tokens for x in (i, j))
    if isinstance(pred, (Any_, All_)):
        parts = [mask_formula(p, i, j) for p in pred.parts]
        word = " or " if isinstance(pred, Any_) else " and "
        if isinstance(pred, Any_) and any(p is None for p in parts):
            return None
        parts = [f"({p})" for p in parts if p is not None]
        return word.join(parts) or ("False" if isinstance(pred, Any_) else None)
    if isinstance(pred, Not_):
        inner = mask_formula(pred.part, i, j)
        return "False" if inner is None else f"not ({inner})"
    if isinstance(pred, Formula):
        return _substituted(pred, i, j)
    if isinstance(pred, Segments):         # the permuted rows' documents (`segments` holds the buckets)
        return f"{DOC_Q}[b, i] == {DOC_K}[b, j]"
    if isinstance(pred, Stride):
        return f"({i} - {j}) % {pred.every} == 0"
    if isinstance(pred, Random):          # the permuted query rows' drawn key blocks (runtime/lsh.py)
        name = random_input(pred)
        return " or ".join(f"{name}[b, i, {t}] == {j} // {pred.block}" for t in range(pred.per_row))
    raise ValueError(f"the {next(iter(pred.to_dict()))} mask cannot be evaluated at permuted positions")


def _substituted(pred, i: str, j: str, s: str | None = None) -> str:
    """A mask (or score) formula read through the permutation: the positions i, j replaced by the
    texts `i`, `j`, the batch and heads b, h, hk by the flattened row's (inputs lsh_b[b], lsh_h[b],
    lsh_hk[b]), and the score s by `s` when given. The user's inputs stay: indexed by the
    substituted names, the kernels read the user's own tensors."""
    by_name = {"i": parse_formula(i), "j": parse_formula(j), "b": parse_formula(f"{ROW_BATCH}[b]"),
               "h": parse_formula(f"{ROW_HEAD}[b]"), "hk": parse_formula(f"{ROW_KV_HEAD}[b]")}
    if s is not None:
        by_name["s"] = parse_formula(s)

    def swap(node: Node) -> Node:
        if node.op == "name" and node.value in by_name:
            return by_name[node.value]
        return Node(node.op, tuple(swap(a) for a in node.args), node.value)
    return unparse(swap(pred.node))


def _walk(node: Node):
    yield node
    for arg in node.args:
        yield from _walk(arg)


def kernel_spec(spec):
    """The spec the kernels of an lsh spec are generated from (see the module docstring); any other
    spec is returned as it is."""
    if getattr(spec, "lsh", None) is None or spec.lsh.permuted:
        return spec
    lsh = spec.lsh
    i, j = f"{QUERY_POS}[b, i]", f"{KEY_POS}[b, j]"
    parts = [mask_formula(spec.effective_mask, i, j)]
    inputs = {}
    if parts[0] is not None or spec.alibi:
        inputs = {QUERY_POS: {"shape": ["B", "Nq"], "dtype": "int32"},
                  KEY_POS: {"shape": ["B", "Nk"], "dtype": "int32"}}
    for r in range(lsh.rounds - 1):
        parts.append(f"lsh_q{r}[b, i] != lsh_k{r}[b, j]")
        inputs.update({f"lsh_q{r}": {"shape": ["B", "Nq"], "dtype": "int32"},
                       f"lsh_k{r}": {"shape": ["B", "Nk"], "dtype": "int32"}})
    score = None
    if spec.alibi:                        # the head's slope per flattened row, at original positions
        inputs[SLOPE] = {"shape": ["B"], "dtype": "float32"}
        score = f"s - {SLOPE}[b] * ({i} - {j})"
    if spec.score is not None:            # after ALiBi (SPEC.md's order): s is the ALiBi score there
        score = _substituted(spec.score, i, j, None if score is None else f"({score})")
        if QUERY_POS not in inputs and (QUERY_POS in score or KEY_POS in score):
            inputs.update({QUERY_POS: {"shape": ["B", "Nq"], "dtype": "int32"},
                           KEY_POS: {"shape": ["B", "Nk"], "dtype": "int32"}})
    text = " and ".join(f"({p})" for p in parts if p is not None)
    read = _names(text) | _names(score or "")
    for name in (ROW_BATCH, ROW_HEAD, ROW_KV_HEAD):
        if name in read:
            inputs[name] = {"shape": ["B"], "dtype": "int32"}
    for pred in spec.effective_mask.walk():
        if isinstance(pred, Random) and random_input(pred) in read:
            inputs[random_input(pred)] = {"shape": ["B", "Nq", pred.per_row], "dtype": "int32"}
    if DOC_Q in read:
        inputs.update({DOC_Q: {"shape": ["B", "Nq"], "dtype": "int32"}, DOC_K: {"shape": ["B", "Nk"], "dtype": "int32"}})
    for decl in spec.inputs:              # the user's tensors as they are: heads as fixed sizes, rows of
        # a B axis past the user's B never read (runtime/lsh.py pads them to the flattened B·Hq)
        fixed = {"Hq": spec.query_heads, "Hkv": spec.kv_heads}
        inputs[decl.name] = {"shape": [fixed.get(d, d) for d in decl.shape], "dtype": decl.dtype, "grad": decl.grad}
    mask = All_((Segments(), Formula.parse(text))) if text else Segments()
    return type(spec)(name=f"{spec.name}_by_bucket", query_heads=1, kv_heads=1, head_dim=spec.head_dim,
                value_head_dim=spec.value_head_dim, scale=spec.softmax_scale, softcap=spec.softcap,
                mask=mask, inputs=inputs, score=score, lsh=Lsh(lsh.buckets, lsh.seed, lsh.rounds, permuted=True))


def random_input(pred: Random) -> str:
    """The kernel spec's input holding a random mask's drawn key blocks per permuted query row
    (B, Nq, per_row): table[query block of the row's original position]."""
    return f"lsh_random_{pred.per_row}_{pred.block}_{pred.seed}"


def _names(text: str) -> set:
    """The names (and inputs) a formula text reads."""
    return {n.value for n in _walk(parse_formula(text)) if n.op in ("name", "index")} if text else set()
