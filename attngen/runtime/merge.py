"""Exact merge of attention computed over disjoint key sets, through each part's lse.

If part s attended to key set K_s (disjoint from the others) and gave (out_s, lse_s), then over the
union:  lse = log sum_s exp(lse_s)  and  out = sum_s exp(lse_s - lse) out_s.
A part that saw no key (lse_s = -inf, out_s = 0) weighs nothing; a row that no part saw gives
out = 0 and lse = -inf, never NaN. Attention sinks (SPEC.md) join once, after the parts: the sink
is one more part with out 0 and lse = sink[h], so a row that no part saw gives out 0, lse sink[h]. This is what split-KV decoding does between its two kernels
(the generated merge kernel, templates/decode.py.jinja) and what ring/context parallelism needs.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ShapeError


def merge(outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor], *,
          sink: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) over the union of the parts' key sets.

    outs: tensors of one shape (..., D), any float dtype; lses: (...) matching, natural log.
    Computed in float32 (float64 when the parts are float64); out has the parts' dtype, lse is
    float32 (float64 for float64 parts).
    sink: the attention sinks' logits, (Hq,), counted once: the parts must have been computed
    without them, and lse's last two dims must be (Hq, N) — (B, Hq, N) or varlen's (Hq, total).
    """
    outs, lses = list(outs), list(lses)
    if sink is not None and outs:
        outs.append(torch.zeros_like(outs[0]))
        lses.append(_sink_part(sink, lses[0]))
    if not outs or len(outs) != len(lses):
        raise ShapeError(f"merge needs one lse per out and at least one part; got {len(outs)} outs "
                         f"and {len(lses)} lses")
    shape, dtype = outs[0].shape, outs[0].dtype
    for n, (o, l) in enumerate(zip(outs, lses)):
        if o.shape != shape or o.dtype != dtype:
            raise ShapeError(f"outs[{n}] has shape {tuple(o.shape)} and dtype {o.dtype}, expected "
                             f"{tuple(shape)} and {dtype} (those of outs[0])")
        if tuple(l.shape) != tuple(shape[:-1]):
            raise ShapeError(f"lses[{n}] has shape {tuple(l.shape)}, expected {tuple(shape[:-1])} "
                             f"(outs[{n}] without its last dim)")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    lse_all = torch.stack([l.to(work) for l in lses])                      # [S, ...]
    top = lse_all.max(0).values
    top_safe = torch.where(torch.isneginf(top), torch.zeros_like(top), top)
    weights = torch.exp(lse_all - top_safe)                                # 0 for lse = -inf
    total = weights.sum(0)
    empty = total == 0
    out = sum(w.unsqueeze(-1) * o.to(work) for w, o in zip(weights, outs))
    out = out / torch.where(empty, torch.ones_like(total), total).unsqueeze(-1)
    lse = torch.where(empty, torch.full_like(top, float("-inf")),
                      top_safe + torch.log(torch.where(empty, torch.ones_like(total), total)))
    return out.to(dtype), lse


def _sink_part(sink: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The sink as a part's lse: sink[h] on every row of head h."""
    if sink.dim() != 1 or like.dim() < 2 or like.shape[-2] != sink.shape[0]:
        raise ShapeError(f"sink has shape {tuple(sink.shape)}: expected (Hq,) with Hq = {like.shape[-2] if like.dim() >= 2 else '?'}"
                         f" (the second-to-last dim of lse, shape {tuple(like.shape)})")
    return sink.detach().to(like.dtype)[:, None].expand(like.shape)
