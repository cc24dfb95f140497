"""Content-based selection at call time (`select: {top, block}`, SPEC.md "Content-based sparsity").

Per call, inside the torch operator (so torch.compile traces one opaque call):
1. the generated selection kernels (templates/select.py.jinja): block means of q (over the kv
   group's heads and the block's rows) and of k, then the gate scores mean(q) . mean(k) per
   (batch, kv head, query block, key block), float32, -inf off the candidates. Candidates are
   the mask's own block map at tiles of R x R (exact: every unproven tile is settled);
2. here, on the device: the top-k per (batch, kv head, query block) by a stable sort (equal scores
   keep key-block order: ties go to the lower block), plus the key blocks holding the query
   block's own positions;
3. the selection as the CSR lists the attention kernels walk, one set of rows per (batch, kv head):
   every kernel tile lies inside one block of R (tiles are at most R, powers of two), so a tile
   pair is visited iff its key block is selected for its query block and the mask's own tile map
   calls it PARTIAL or FULL; the kernels' FULL / PARTIAL treatment is unchanged.
Work: the gate is O(Nq/R * Nk/R * D) per kv head; the lists are O(selected tiles), built from the
selection's nonzero entries (no pass over every tile pair of a row). The selection is not
differentiated: the backward recomputes it from the same q and k (the same kernels, deterministic).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..analysis.blockmap import block_map
from ..codegen.aot import CompiledKernels
from ..errors import ShapeError
from ..spec import Spec
from .launcher import KernelLauncher, cdiv, is_interpreted, meta_tensor

# Settling every tile of the candidate map: candidates must be exact, not a superset.
EXACT_BUDGET = 1 << 62
GATE_BLOCK_Q, GATE_BLOCK_K = 16, 32


class SelectLauncher(KernelLauncher):
    """Runs the generated `pool` and `gate` kernels of one spec."""

    def gate(self, q, k, candidates: torch.Tensor, *, rows: int) -> torch.Tensor:
        """float32 (B, Hkv, ceil(Nq / rows), ceil(Nk / R)): mean(q) . mean(k), -inf off
        `candidates` (int32 (Bc, QB, KB), Bc 1 or B)."""
        spec = self.spec
        interpret = is_interpreted(q.device)
        q_means = self._pool(q, rows, spec.group, interpret)
        k_means = self._pool(k, spec.select.block, 1, interpret)
        batch, heads, qb, _ = q_means.shape
        kb = k_means.shape[2]
        gate = torch.empty((batch, heads, qb, kb), dtype=torch.float32, device=q.device)
        grid, args = self.gate_launch(q_means, k_means, candidates, gate)
        self.launch("gate", grid, args, num_warps=4, num_stages=1, interpret=interpret)
        return gate

    def _pool(self, x, rows: int, heads: int, interpret: bool) -> torch.Tensor:
        grid, args, means = self.pool_launch(x, rows, heads)
        self.launch("pool", grid, args, num_warps=4, num_stages=1, interpret=interpret)
        return means[..., :self.spec.head_dim]

    def pool_launch(self, x, rows: int, heads: int):
        """(grid, keyword arguments, means): the means of x over blocks of `rows` rows and runs of
        `heads` heads, float32 (B, H / heads, blocks, BLOCK_D)."""
        batch, h, n, _ = x.shape
        blocks = cdiv(n, rows)
        means = torch.empty((batch, h // heads, blocks, self.graph.facts["block_d"]), dtype=torch.float32,
                            device=x.device)
        sb, sh, sn, sd = x.stride()
        args = dict(x=x, means=means, stride_xb=sb, stride_xh=sh, stride_xn=sn, stride_xd=sd, n=n, rows=rows,
                    num_out_heads=h // heads, num_blocks=blocks, HEADS=heads, CHUNK=32 if rows >= 32 else 16)
        return (batch * (h // heads), blocks), args, means

    def gate_launch(self, q_means, k_means, candidates, gate):
        batch, heads, qb, _ = gate.shape
        args = dict(q_means=q_means, k_means=k_means, gate=gate, candidates=candidates,
                    stride_cb=candidates.stride(0) if candidates.shape[0] > 1 else 0,
                    num_q_blocks=qb, num_k_blocks=k_means.shape[2], num_kv_heads=heads,
                    BLOCK_Q=GATE_BLOCK_Q, BLOCK_K=GATE_BLOCK_K)
        return (batch * heads, cdiv(qb, GATE_BLOCK_Q)), args

    def compile_for(self, target: str, dtype: torch.dtype, *, n: int = 4096, nk: int | None = None):
        """pool (of q, as a launch at Nq = n) and gate compiled for `target`; no GPU needed."""
        spec, nk = self.spec, nk or n
        q = meta_tensor(1, spec.query_heads, n, spec.head_dim, dtype=dtype)
        _, pool_args, q_means = self.pool_launch(q, spec.select.block, spec.group)
        kb = cdiv(nk, spec.select.block)
        k_means = meta_tensor(1, spec.kv_heads, kb, q_means.shape[-1], dtype=torch.float32)
        gate = meta_tensor(1, spec.kv_heads, q_means.shape[2], kb, dtype=torch.float32)
        candidates = meta_tensor(1, q_means.shape[2], kb, dtype=torch.int32)
        _, gate_args = self.gate_launch(q_means, k_means, candidates, gate)
        return CompiledKernels({role: self.compile_launch(role, target, lambda _cfg, a=args: (None, a, 4, 1), None)
                                for role, args in (("pool", pool_args), ("gate", gate_args))})


@dataclass
class Selection:
    """The selected key blocks of one call, bool (B, Hkv, QB, KB), with the mask's tile classes
    (int8 (Bc, T, U) per tile size: 0 empty, 1 partial, 2 full) to turn them into kernel lists."""

    chosen: torch.Tensor
    block: int
    rows: int
    classes_of: object                   # (block_m, block_n) → int8 (Bc, T, U)
    device: torch.device | None = None   # where the lists go (meta: ahead of time), else chosen's
    _lists: dict = field(default_factory=dict)

    def lists(self, block_m: int, block_n: int, *, by_key: bool = False) -> tuple:
        """(partial_ptr, partial_idx, full_ptr, full_idx, list_rows): CSR over rows (b * Hkv + hk)
        * list_rows + tile, query tiles (key tiles where `by_key`), entries ascending."""
        key = (block_m, block_n, by_key)
        if key not in self._lists:
            lists = tile_lists(self.chosen, self.classes_of(block_m, block_n), self.rows, self.block,
                               block_m, block_n, by_key=by_key)
            device = self.device or self.chosen.device
            self._lists[key] = (*(t.to(device) for t in lists[:4]), lists[4])
        return self._lists[key]


def tile_lists(chosen, classes, rows: int, block: int, block_m: int, block_n: int, *, by_key: bool) -> tuple:
    """The kernel lists of a selection (see `Selection.lists`), from its nonzero blocks only."""
    if rows % block_m or block % block_n:
        raise ValueError(f"tiles {block_m}x{block_n} must divide the query block ({rows}) and the key "
                         f"block ({block})")
    batch, heads, _, _ = chosen.shape
    shared, tiles_q, tiles_k = classes.shape
    device = chosen.device
    bh, qb, kb = chosen.reshape(batch * heads, *chosen.shape[2:]).nonzero().unbind(1)
    per_q, per_k = rows // block_m, block // block_n
    t = (qb[:, None] * per_q + torch.arange(per_q, device=device))[:, :, None].expand(-1, per_q, per_k)
    u = (kb[:, None] * per_k + torch.arange(per_k, device=device))[:, None, :].expand(-1, per_q, per_k)
    bh = bh[:, None, None].expand(-1, per_q, per_k)
    t, u, bh = t.reshape(-1), u.reshape(-1), bh.reshape(-1)
    exists = (t < tiles_q) & (u < tiles_k)
    t, u, bh = t[exists], u[exists], bh[exists]
    cls = classes[(bh // heads) if shared > 1 else torch.zeros_like(bh), t, u]
    return tile_csr(bh, t, u, cls, batch * heads, tiles_q, tiles_k, by_key=by_key)


def tile_csr(bh, t, u, cls, num_sets: int, tiles_q: int, tiles_k: int, *, by_key: bool) -> tuple:
    """(partial_ptr, partial_idx, full_ptr, full_idx, list_rows) of tiles (set bh, query tile t, key
    tile u, class cls: 1 partial, 2 full), listed in ascending order of (bh, t, u): CSR over rows
    bh * list_rows + tile (query tiles, key tiles where `by_key`), entries ascending in each row."""
    num_rows = tiles_k if by_key else tiles_q
    row = bh * num_rows + (u if by_key else t)
    col = t if by_key else u
    out = []
    for value in (1, 2):                                     # partial, then full
        keep = cls == value
        r, c = row[keep], col[keep]
        order = torch.sort(r, stable=True).indices         # entries stay ascending within a row
        counts = torch.bincount(r, minlength=num_sets * num_rows)
        ptr = torch.zeros(len(counts) + 1, dtype=torch.int64, device=bh.device)
        ptr[1:] = torch.cumsum(counts, 0)
        out += [ptr.to(torch.int32), c[order].to(torch.int32)]
    return (*out, num_rows)


def top_k_blocks(gate: torch.Tensor, top: int) -> torch.Tensor:
    """bool like `gate`: per row the `top` finite-or-not largest scores that are not -inf (the
    candidates), ties to the lower index: a stable descending sort keeps equal scores in order."""
    order = torch.sort(gate, dim=-1, descending=True, stable=True).indices[..., :top]
    chosen = torch.zeros_like(gate, dtype=torch.bool)
    chosen.scatter_(-1, order, True)
    return chosen & (gate != float("-inf"))


def own_blocks(nq: int, nk: int, q_offset: int, rows: int, block: int, device) -> torch.Tensor:
    """bool (QB, KB): key block kb holds a position i = row + q_offset of query block qb."""
    first = torch.arange(0, nq, rows, device=device) + q_offset
    last = torch.clamp(first - q_offset + rows, max=nq) - 1 + q_offset
    kb = torch.arange(cdiv(nk, block), device=device)
    return (kb[None, :] * block <= last[:, None]) & (kb[None, :] * block + block - 1 >= first[:, None])


class Selector:
    """The selection of one spec's calls; tables that depend only on the shape are kept."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self._kernels: SelectLauncher | None = None
        self._tables: dict = {}

    def kernels(self) -> SelectLauncher:
        """The spec's selection kernels, through the disk cache, made on first use."""
        if self._kernels is None:
            from . import cache
            self._kernels = SelectLauncher(cache.generated(self.spec, "select"))
        return self._kernels

    def classes(self, nq, nk, q_offset, block_q, block_k, seg_q, seg_k, device, *, exact=False) -> torch.Tensor:
        """int8 (Bc, T, U): the mask's tile classes at these tiles; per batch row for 2-D segment
        ids (Bc = B), else shared (Bc = 1). `exact`: every unproven tile settled."""
        budget = {"refine_budget": EXACT_BUDGET} if exact else {}
        if seg_q is None:
            key = (nq, nk, q_offset, block_q, block_k, exact, device)
            if key not in self._tables:
                if len(self._tables) > 256:
                    self._tables.clear()
                bm = block_map(self.spec, nq, nk, block_q, block_k, q_offset=q_offset, **budget)
                self._tables[key] = bm.dense_classes().to(device)[None]
            return self._tables[key]
        rows = [(seg_q, seg_k)] if seg_q.dim() == 1 and seg_k.dim() == 1 else [
            (seg_q[b] if seg_q.dim() == 2 else seg_q, seg_k[b] if seg_k.dim() == 2 else seg_k)
            for b in range(max(seg_q.shape[0] if seg_q.dim() == 2 else 1, seg_k.shape[0] if seg_k.dim() == 2 else 1))]
        return torch.stack([block_map(self.spec, nq, nk, block_q, block_k, q_offset=q_offset, seg_q=sq, seg_k=sk,
                                      **budget).dense_classes().to(device) for sq, sk in rows])

    def choose(self, q, k, q_offset: int, seg_q=None, seg_k=None, *, k_offset: int = 0) -> Selection:
        """The selection of a call (SPEC.md), on q's device."""
        spec, block = self.spec, self.spec.select.block
        if k_offset:
            raise ShapeError(f"spec {spec.name!r} selects key blocks by content (select:); a chunk of "
                             f"a longer sequence (k_offset={k_offset}) is not supported")
        if spec.mask_needs_heads:            # its block map is a bound there: candidates must be exact
            raise ShapeError(f"spec {spec.name!r}: select: with a mask that reads the batch, the head or "
                             "an input is not supported by the kernels yet (the reference runs it)")
        nq, nk, device = q.shape[2], k.shape[2], q.device

        def classes_of(block_m, block_n):
            return self.classes(nq, nk, q_offset, block_m, block_n, seg_q, seg_k, device)

        if device.type == "meta":            # ahead of time: the shapes and dtypes of a launch
            qb, kb = cdiv(nq, block), cdiv(nk, block)
            chosen = torch.ones((q.shape[0], spec.kv_heads, qb, kb), dtype=torch.bool)
            return Selection(chosen, block, block, lambda bm, bn: torch.full(
                (1, cdiv(nq, bm), cdiv(nk, bn)), 2, dtype=torch.int8), device=device)
        candidates = self.classes(nq, nk, q_offset, block, block, seg_q, seg_k, device, exact=True)
        gate = self.kernels().gate(q, k, (candidates != 0).to(torch.int32), rows=block)
        chosen = top_k_blocks(gate, spec.select.top) | own_blocks(nq, nk, q_offset, block, block, device)
        return Selection(chosen, block, block, classes_of)


def decode_selection(selector: Selector, q, k_cache, seqlens, block_table, *, page_size: int,
                     capacity: int) -> torch.Tensor:
    """int32 (B, Hkv, ceil(capacity / R)): per sequence and kv head, the key blocks selected for
    its Nq new tokens, one query block (SPEC.md). Each sequence's keys are its cache rows
    0..seqlen-1 (a paged cache's pages gathered first); the gate runs per sequence (its partial
    last block and its candidates depend on its length), reading the lengths on the host."""
    spec, block = selector.spec, selector.spec.select.block
    batch, _, nq, _ = q.shape
    selected = torch.zeros((batch, spec.kv_heads, cdiv(capacity, block)), dtype=torch.int32, device=q.device)
    if q.device.type == "meta":
        return selected
    launcher = selector.kernels()
    for b, seqlen in enumerate(seqlens.tolist()):
        n = min(seqlen, capacity)
        if n <= 0:
            continue
        k_seq = sequence_rows(k_cache, b, n, block_table, page_size)
        candidates = selector.classes(nq, n, n - nq, nq, block, None, None, q.device, exact=True)
        gate = launcher.gate(q[b:b + 1], k_seq, (candidates != 0).to(torch.int32), rows=nq)
        chosen = top_k_blocks(gate, spec.select.top) | own_blocks(nq, n, n - nq, nq, block, q.device)
        selected[b, :, :chosen.shape[-1]] = chosen[0, :, 0].to(torch.int32)
    return selected


def sequence_rows(cache: torch.Tensor, b: int, n: int, block_table, page_size: int) -> torch.Tensor:
    """Sequence b's cache rows 0..n-1 as (1, Hkv, n, D): a view of a contiguous cache, a paged
    cache's pages gathered."""
    if block_table is None:
        return cache[b:b + 1, :, :n]
    pages = cache[block_table[b, :cdiv(n, page_size)].long()]                 # (pages, page, Hkv, D)
    return pages.reshape(1, -1, *pages.shape[2:]).transpose(1, 2)[:, :, :n]


class EveryTile:
    """Lists naming every tile as FULL, on meta tensors: what ahead-of-time compilation launches
    with (the shapes and dtypes of a call's lists, no data)."""

    def __init__(self, rows: int, nq: int, nk: int):
        self.rows, self.nq, self.nk = rows, nq, nk

    def lists(self, block_m: int, block_n: int, *, by_key: bool = False) -> tuple:
        tiles_q, tiles_k = cdiv(self.nq, block_m), cdiv(self.nk, block_n)
        num_rows = tiles_k if by_key else tiles_q
        ptr = torch.empty(self.rows * num_rows + 1, dtype=torch.int32, device="meta")
        idx = torch.empty(self.rows * tiles_q * tiles_k, dtype=torch.int32, device="meta")
        return ptr, idx[:0], ptr, idx, num_rows
