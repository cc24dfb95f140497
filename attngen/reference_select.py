"""The float64 reference's content-based selection (SPEC.md, "Content-based sparsity"): the rule
applied as written, densely, for `attngen.reference`. Kernels never call it.

For batch b, kv head hk and query block qb (query rows qb·QR .. qb·QR+QR−1, QR = R; in decode the
Nq new tokens are one block, QR = Nq) the gate score of key block kb (keys kb·R .. kb·R+R−1) is

    mean(q[b, group of hk, rows of qb]) · mean(k[b, hk, keys of kb])          in float32

where a partial last block's mean is over the rows (keys) it has. Candidates: the key blocks where
the mask allows at least one pair of the query block (for at least one query head of the group).
Selected: the `top` candidates with the largest score (ties: the lower kb), plus every key block
holding one of the query block's own positions i = row + q_offset (kb = i // R, where 0 <= kb <
ceil(Nk / R)). A pair is allowed iff the mask allows it and its key block is selected.
"""
from __future__ import annotations

import torch


def block_means(x: torch.Tensor, rows: int, group: int = 1) -> torch.Tensor:
    """Means over blocks of `rows` rows (a partial last block over the rows it has) and over each
    run of `group` heads: (B, H, N, D) → (B, H // group, ceil(N / rows), D), float32."""
    b, h, n, d = x.shape
    x = x.detach().to(torch.float32).reshape(b, h // group, group, n, d)
    blocks = -(-n // rows)
    pad = blocks * rows - n
    sums = torch.nn.functional.pad(x, (0, 0, 0, pad)).reshape(b, h // group, group, blocks, rows, d).sum(dim=(2, 4))
    counts = torch.full((blocks,), rows, dtype=torch.float32, device=x.device)
    counts[-1] = n - (blocks - 1) * rows
    return sums / (counts[:, None] * group)


def top_blocks(gate: torch.Tensor, candidates: torch.Tensor, top: int) -> torch.Tensor:
    """bool, like `gate` (.., key blocks): the `top` candidates with the largest gate per row, ties
    to the lower key block (a stable sort keeps equal scores in key-block order)."""
    masked = gate.masked_fill(~candidates, float("-inf"))
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=gate.device).expand_as(order))
    return candidates & (rank < top)


def own_blocks(nq: int, nk: int, q_offset: int, rows: int, block: int, device=None) -> torch.Tensor:
    """bool (query blocks, key blocks): the key blocks holding a position i of each query block."""
    blocks_q, blocks_k = -(-nq // rows), -(-nk // block)
    first = torch.arange(blocks_q, device=device) * rows + q_offset                  # first position
    last = torch.clamp(torch.arange(1, blocks_q + 1, device=device) * rows, max=nq) - 1 + q_offset
    kb = torch.arange(blocks_k, device=device)[None, :]
    return (kb >= torch.div(first, block, rounding_mode="floor")[:, None]) & \
           (kb <= torch.div(last, block, rounding_mode="floor")[:, None])


def selected_blocks(spec, q: torch.Tensor, k: torch.Tensor, candidates: torch.Tensor, q_offset: int, *,
                    rows: int) -> torch.Tensor:
    """bool (B, Hkv, QB, KB): the selected key blocks of each query block of `rows` rows, given the
    candidates (broadcastable to that shape)."""
    nq, nk, block = q.shape[2], k.shape[2], spec.select.block
    gate = block_means(q, rows, spec.group) @ block_means(k, block).transpose(-1, -2)  # (B, Hkv, QB, KB)
    candidates = candidates.expand(gate.shape)
    return top_blocks(gate, candidates, spec.select.top) | own_blocks(nq, nk, q_offset, rows, block, q.device)


def selected_pairs(spec, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, q_offset: int, *,
                   decode: bool = False) -> torch.Tensor:
    """bool (B, Hq, Nq, Nk): `mask` (broadcastable to that) AND the selection. `q` is (B, Hq, Nq, D),
    `k` (B, Hkv, Nk, D), not repeated per query head."""
    top, block = spec.select.top, spec.select.block
    b, hq, nq, _ = q.shape
    nk = k.shape[2]
    group = spec.group
    rows = max(nq, 1) if decode else block
    qb, kb = -(-nq // rows), -(-nk // block)
    full = mask.expand(b, hq, nq, nk)
    padded = torch.nn.functional.pad(full, (0, kb * block - nk, 0, qb * rows - nq))
    candidates = padded.reshape(b, hq // group, group, qb, rows, kb, block).any(dim=(2, 4, 6))
    chosen = selected_blocks(spec, q, k, candidates, q_offset, rows=rows)
    chosen = chosen.repeat_interleave(group, dim=1)                                  # (B, Hq, QB, KB)
    rows_of = torch.arange(nq, device=q.device) // rows
    keys_of = torch.arange(nk, device=q.device) // block
    return full & chosen[:, :, rows_of][:, :, :, keys_of]
