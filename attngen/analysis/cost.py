"""What a spec costs at concrete sizes: allowed pairs, FLOPs, bytes, KV cache, receptive field.

The pairs are counted exactly by `pairs` (without building the mask), the receptive field comes from
`reach`; this module adds the FLOPs, bytes and KV cache that follow and gathers them in `Cost`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from ..spec.predicates import All_, Any_, Band, GlobalTokens
from ..spec.spec import Spec, resolve_q_offset
from .pairs import allowed_pairs, counted_mask, counted_symbolically, pairs_formula
from .selection import selected_pairs_bound
from .reach import Reach, reach

BACKWARD_FACTOR = 2.5          # dq, dk, dv and the recomputed scores: 2.5x the forward FLOPs
LINEAR_STATE_BYTES = 4         # the linear-attention state is kept in float32


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------
def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def linear_state_bytes(spec: Spec) -> int:
    """Per layer and batch element: the float32 state S (d_phi × D) and normaliser z (d_phi) of
    every kv head (phi(k) and v depend on the kv head only, so a group shares its state)."""
    d_phi = spec.num_features
    return spec.kv_heads * (d_phi * spec.head_dim + d_phi) * LINEAR_STATE_BYTES


def kv_bytes_per_token(spec: Spec, *, dtype: torch.dtype = torch.float16) -> int:
    """K and V of one token in one layer (0 for linear kinds, whose state does not grow)."""
    if spec.kind == "linear":
        return 0
    return 2 * spec.kv_heads * spec.head_dim * dtype_bytes(dtype)


def sliding_window(spec: Spec) -> int | None:
    """w when the mask is a causal band of finite left width w: the cache then holds w + 1 tokens."""
    mask = spec.effective_mask
    if spec.kind == "softmax" and isinstance(mask, Band) and mask.left is not None and mask.right == 0:
        return mask.left
    return None


def flops_forward(spec: Spec, *, pairs: int, n: int, nk: int, batch: int = 1, layers: int = 1) -> int:
    """Forward FLOPs. Softmax: 4 * D per allowed pair and query head (q·k and p·v, a multiply-add
    being 2). Linear: the state update phi(k) v^T per key and kv head, and the readout phi(q)^T S
    per query and query head, 2 * d_phi * D each."""
    if spec.kind == "linear":
        per_layer = 2 * spec.num_features * spec.head_dim * (n * spec.query_heads + nk * spec.kv_heads)
    else:
        per_layer = 4 * spec.head_dim * pairs * spec.query_heads
    return per_layer * batch * layers


CAUSAL = Band(None, 0)


def window_and_sinks(spec: Spec) -> tuple[int, GlobalTokens | None] | None:
    """(w, sinks) when a query sees only the last w + 1 keys and, optionally, global tokens (the
    attention sinks of StreamingLLM: causal & (band(left=w) | global_tokens(g))): a KV cache then
    keeps exactly those keys. None for any other mask."""
    mask = spec.effective_mask
    if spec.kind != "softmax":
        return None
    parts = list(mask.parts) if isinstance(mask, All_) else [mask]
    causal = CAUSAL in parts
    parts = [p for p in parts if p != CAUSAL]
    if len(parts) != 1:
        return None
    options = parts[0].parts if isinstance(parts[0], Any_) else parts[0:1]
    bands = [p for p in options if isinstance(p, Band)]
    sinks = [p for p in options if isinstance(p, GlobalTokens)]
    if len(bands) != 1 or len(sinks) > 1 or len(bands) + len(sinks) != len(options):
        return None
    band = bands[0]
    if band.left is None or not (causal or band.right == 0):
        return None
    return band.left, (sinks[0] if sinks else None)


def cached_tokens(spec: Spec, nk: int) -> tuple[int, str | None]:
    """Keys a KV cache of nk tokens must keep for the next query (position nk - 1 onwards), and a
    note saying why when that is fewer than nk: the last w + 1 keys and the sinks before them."""
    found = window_and_sinks(spec)
    if found is None:
        return nk, None
    window, sinks = found
    first_dropped = nk - 1 - window            # keys below this fall out of the window
    if sinks is None:
        kept_sinks = 0
    elif sinks.first is not None:
        kept_sinks = min(sinks.first, max(0, first_dropped))
    else:
        kept_sinks = sum(1 for t in sinks.tokens if t < first_dropped)
    cached = min(nk, window + 1) + kept_sinks
    if cached >= nk:
        return nk, None
    what = f"the last {window + 1} tokens" + (f" and {kept_sinks} sink tokens" if sinks is not None else "")
    return cached, f"sliding window {window}: the KV cache holds {what}"


# ---------------------------------------------------------------------------------------------
# The whole picture
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cost:
    """Costs of one spec at concrete sizes; `to_json` field names are stable (docs/cli.md)."""

    spec: str
    kind: str
    n: int
    nk: int
    q_offset: int
    batch: int
    layers: int
    dtype: str
    query_heads: int
    kv_heads: int
    head_dim: int
    allowed_pairs: int
    flops_fwd: int
    flops_bwd: int
    bytes_min: int
    arithmetic_intensity: float
    kv_cache_bytes_per_token: int
    kv_cache_bytes: int
    receptive_field: int | None
    layers_to_full_reach: int | None
    formula: str | None
    notes: tuple[str, ...] = ()
    selected_pairs_bound: int | None = None       # `select:` only: the data-dependent pairs' bound

    def to_dict(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        if self.selected_pairs_bound is None:      # every other spec's JSON stays as it was
            del out["selected_pairs_bound"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def cost(spec: Spec, *, n: int, nk: int | None = None, batch: int = 1, layers: int = 1,
         dtype: torch.dtype = torch.float16, q_offset: int | None = None,
         seg_q: torch.Tensor | None = None, seg_k: torch.Tensor | None = None) -> Cost:
    """Exact pair count and the costs that follow from it, for `layers` layers of `batch` sequences
    of `n` queries against `nk` keys (default n)."""
    for name, value, low in (("n", n, 1), ("nk", nk, 1), ("batch", batch, 1), ("layers", layers, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    nk = n if nk is None else nk
    q_offset = resolve_q_offset(n, nk, q_offset)
    notes = []
    if spec.uses_segments and seg_q is None and seg_k is None:
        notes.append("segments: counted as one segment (no segment ids given)")
    pairs = allowed_pairs(spec, n, nk, q_offset, seg_q=seg_q, seg_k=seg_k)
    segmented = seg_q is not None or seg_k is not None
    symbolic = counted_symbolically(counted_mask(spec, segments=segmented)) if spec.kind == "softmax" else None
    if symbolic is True:
        notes.append("allowed pairs: counted from the mask formula's tile classes (exact, symbolic: "
                     "no pair evaluated one by one)")
    elif symbolic is False:
        notes.append("allowed pairs: the mask is outside what the formula tile analysis decides "
                     "exactly (affine terms in i and j, // and % by constants, min/max/abs, "
                     "comparisons, and/or/not; no random or segments leaf), so every pair was "
                     "evaluated (exact, n x nk work)")
    heads, d, size = spec.query_heads, spec.head_dim, dtype_bytes(dtype)
    bound = None
    if spec.kind == "softmax" and spec.select is not None:
        bound = min(pairs, selected_pairs_bound(spec, n, nk, q_offset, seg_q=seg_q, seg_k=seg_k))
        notes.append(f"select: top {spec.select.top} blocks of {spec.select.block} keys (+ own blocks) per "
                     "query block, chosen from the data: allowed pairs are the mask's; FLOPs are for at "
                     "most the selected pairs' bound")
    if spec.kind == "softmax" and spec.lsh is not None:
        lsh = spec.lsh
        notes.append(f"lsh: {lsh.buckets} buckets, {lsh.rounds} round{'s' * (lsh.rounds > 1)}: the pairs depend on "
                     "the data, at most the mask's (FLOPs are for those); for independent random q, k about "
                     f"1 - (1 - 1/{lsh.buckets})^{lsh.rounds} = {1 - (1 - 1 / lsh.buckets) ** lsh.rounds:.1%} "
                     "of them (benchmarks/lsh_tiles.py measures the tiles)")
    flops = flops_forward(spec, pairs=pairs if bound is None else bound, n=n, nk=nk, batch=batch, layers=layers)
    if spec.kind == "linear":
        notes.append("linear: FLOPs are 2 * d_phi * D per key and kv head (state update) plus "
                     "2 * d_phi * D per query and query head (readout)")
    io = (2 * heads * n * d + 2 * spec.kv_heads * nk * d) * size
    if spec.kind == "softmax":
        io += heads * n * 4                                          # lse, float32
    bytes_min = io * batch * layers
    per_token = kv_bytes_per_token(spec, dtype=dtype) * layers
    cached, why = cached_tokens(spec, nk)
    if why is not None:
        notes.append(why)
    if spec.kind == "linear":
        kv_bytes = linear_state_bytes(spec) * layers * batch
        notes.append("linear: the KV cache is the fixed float32 state (d_phi*D + d_phi per kv head)")
    else:
        kv_bytes = per_token * cached * batch
    if n == nk and q_offset == 0:
        reached = reach(spec, n=n, layers=layers)
    else:       # stacked layers feed a layer's outputs to the next as its keys: self-attention only
        reached = Reach(None, None, (f"receptive field: n/a when queries and keys are not the same "
                                     f"positions (n={n}, nk={nk}, q_offset={q_offset}: cross-attention "
                                     f"or a decoding step)",))
    notes.extend(reached.notes)
    formula = pairs_formula(counted_mask(spec, segments=False)) \
        if n == nk and q_offset == 0 and not spec.uses_segments else None
    return Cost(spec=spec.name, kind=spec.kind, n=n, nk=nk, q_offset=q_offset, batch=batch,
                layers=layers, dtype=str(dtype).removeprefix("torch."), query_heads=heads,
                kv_heads=spec.kv_heads, head_dim=d, allowed_pairs=pairs, flops_fwd=flops,
                flops_bwd=int(flops * BACKWARD_FACTOR), bytes_min=bytes_min,
                arithmetic_intensity=flops / bytes_min, kv_cache_bytes_per_token=per_token,
                kv_cache_bytes=kv_bytes, receptive_field=reached.receptive_field,
                layers_to_full_reach=reached.layers_to_full_reach,
                formula=None if formula is None else str(formula), notes=tuple(notes),
                selected_pairs_bound=bound)
