"""Host tables of a varlen call (SPEC.md "Variable-length batches"): the checked layout of the
packed batch, the work tables its kernels' grids walk, the per-sequence block-map lists joined into
one CSR, and the map between the forward's lse layout and the backward's.

Everything here is O(sequences + tiles) given the block maps of the distinct (len_q, len_k) pairs,
which are shared between sequences of equal lengths (and kept by `blockmap_cache`). The launchers
(varlen.py) keep the tables of recent layouts, so repeated calls with the same cu_seqlens build
nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ShapeError
from ..spec import Random, Spec
from .blockmap_cache import cached_block_map_lists
from .launcher import cdiv, check_kernel_dtypes


@dataclass(frozen=True)
class VarlenLayout:
    """The packed batch: sequence s has rows cu_q[s]..cu_q[s+1]-1 and keys cu_k[s]..cu_k[s+1]-1."""

    cu_q: tuple[int, ...]
    cu_k: tuple[int, ...]

    @property
    def batch(self) -> int:
        return len(self.cu_q) - 1

    @property
    def len_q(self) -> list[int]:
        return [b - a for a, b in zip(self.cu_q, self.cu_q[1:])]

    @property
    def len_k(self) -> list[int]:
        return [b - a for a, b in zip(self.cu_k, self.cu_k[1:])]

    @property
    def total_q(self) -> int:
        return self.cu_q[-1]


def check_cu_seqlens(name: str, cu, total: int, device) -> tuple[int, ...]:
    """cu_seqlens as host integers: int32, 1-D, on q's device, starting at 0, non-decreasing,
    ending at the packed length `total` (ShapeError naming the tensor otherwise)."""
    if not isinstance(cu, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor (int32, batch + 1), got {type(cu).__name__}")
    if cu.dtype != torch.int32:
        raise ShapeError(f"{name} has dtype {cu.dtype}, expected torch.int32 (FlashAttention's layout)")
    if cu.dim() != 1 or cu.shape[0] < 1:
        raise ShapeError(f"{name} has shape {tuple(cu.shape)}, expected (batch + 1,)")
    if cu.device != device:
        raise ShapeError(f"{name} is on {cu.device}, expected q's device {device}")
    values = tuple(cu.tolist())
    if values[0] != 0:
        raise ShapeError(f"{name} starts at {values[0]}, expected 0")
    for s, (a, b) in enumerate(zip(values, values[1:])):
        if b < a:
            raise ShapeError(f"{name} decreases at sequence {s} ({a} then {b}): it must be non-decreasing")
    if values[-1] != total:
        raise ShapeError(f"{name} ends at {values[-1]}, but the packed tensor has {total} rows")
    return values


def check_varlen(spec: Spec, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None,
                 max_seqlen_k=None) -> VarlenLayout:
    """Refuse a varlen call that does not fit the spec, naming the tensor; the layout otherwise."""
    check_varlen_shapes(spec, q, k, v)
    check_kernel_dtypes(q, k, v)
    cu_q = check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    cu_k = check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
    if len(cu_q) != len(cu_k):
        raise ShapeError(f"cu_seqlens_k has {len(cu_k)} entries, expected cu_seqlens_q's {len(cu_q)} "
                         "(one more than the number of sequences)")
    layout = VarlenLayout(cu_q, cu_k)
    for name, given, lengths in (("max_seqlen_q", max_seqlen_q, layout.len_q),
                                 ("max_seqlen_k", max_seqlen_k, layout.len_k)):
        longest = max(lengths, default=0)
        if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < longest):
            raise ShapeError(f"{name}={given!r}, but a sequence has {longest}: it must be an int >= "
                             "every sequence's length (or None)")
    return layout


def check_varlen_shapes(spec: Spec, q, k, v) -> None:
    """Ranks and sizes of the packed q (total_q, Hq, D), k (total_k, Hkv, D), v (total_k, Hkv, Dv)."""
    want = {"q": (spec.query_heads, spec.head_dim), "k": (spec.kv_heads, spec.head_dim),
            "v": (spec.kv_heads, spec.v_head_dim)}
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        axis = "total_q" if name == "q" else "total_k"
        if t.dim() != 3 or tuple(t.shape[1:]) != want[name]:
            raise ShapeError(f"{name} has shape {tuple(t.shape)}, expected ({axis}, {', '.join(map(str, want[name]))})"
                             f" (packed: {axis}, heads, head dim) for spec {spec.name!r}")
    if v.shape[0] != k.shape[0]:
        raise ShapeError(f"v has {v.shape[0]} rows, expected k's {k.shape[0]} (total_k)")


@dataclass(frozen=True)
class WorkTables:
    """One kernel's grid: `work` (W, 3) int32 rows (sequence, tile, first entry of the sequence's
    lists) and, for list masks, the joined CSR lists (partial_ptr, partial_idx, full_ptr, full_idx)."""

    work: torch.Tensor
    lists: tuple = ()

    @property
    def size(self) -> int:
        return self.work.shape[0]


def work_tables(spec: Spec, layout: VarlenLayout, block_m: int, block_n: int, *, key_major: bool,
                with_lists: bool, device) -> WorkTables:
    """The work table over the query tiles of every sequence (`key_major`: its key tiles, at
    block_n), heaviest first: sequences by the length of the other side, longest first, and within
    a sequence the last tiles first (under causal masks they see the most keys). With `with_lists`,
    each sequence's block map at (block_m, block_n) (transposed where `key_major`), one per
    distinct (len_q, len_k), joined into one CSR whose pointer rows of sequence s start at the
    work rows' third column."""
    own, other = (layout.len_k, layout.len_q) if key_major else (layout.len_q, layout.len_k)
    block = block_n if key_major else block_m
    tiles = [cdiv(n, block) for n in own]
    bases, lists = _joined_lists(spec, layout, block_m, block_n, tiles, key_major) if with_lists else (
        [0] * layout.batch, ())
    order = sorted(range(layout.batch), key=lambda s: -other[s])
    counts = torch.tensor([tiles[s] for s in order], dtype=torch.int64)
    seq = torch.repeat_interleave(torch.tensor(order, dtype=torch.int64), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    last_first = torch.repeat_interleave(counts - 1, counts) - (torch.arange(seq.shape[0]) - first)
    base = torch.tensor(bases, dtype=torch.int64)[seq] if seq.numel() else seq
    work = torch.stack([seq, last_first, base], dim=1).to(torch.int32).contiguous()
    return WorkTables(work.to(device), tuple(t.to(device) for t in lists))


def _joined_lists(spec: Spec, layout: VarlenLayout, block_m: int, block_n: int, tiles: list[int],
                  key_major: bool) -> tuple[list[int], tuple]:
    """(first pointer row of each sequence, the four joined lists): the pointer rows of sequence s
    are its own map's, shifted by the entries of the sequences before it."""
    maps: dict = {}
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    bases, rows, entries = [], 0, [0, 0]
    for s, (nq, nk) in enumerate(zip(layout.len_q, layout.len_k)):
        if (nq, nk) not in maps:
            maps[nq, nk] = _sequence_lists(spec, nq, nk, block_m, block_n, tiles[s], key_major)
        pp, pi, fp, fi = maps[nq, nk]
        bases.append(rows)
        rows += pp.shape[0]
        parts[0].append(pp + entries[0])
        parts[1].append(pi)
        parts[2].append(fp + entries[1])
        parts[3].append(fi)
        entries[0] += pi.shape[0]
        entries[1] += fi.shape[0]
    joined = tuple(torch.cat(p).to(torch.int32).contiguous() if p else torch.zeros(1, dtype=torch.int32)
                   for p in parts)
    # Empty index lists still need an address: the kernel never reads them.
    joined = tuple(t if t.numel() else torch.zeros(1, dtype=torch.int32) for t in joined)
    return bases, joined


def _sequence_lists(spec: Spec, nq: int, nk: int, block_m: int, block_n: int, rows: int,
                    key_major: bool) -> tuple:
    """One sequence's CSR lists; a sequence with no query or no key has `rows` empty rows."""
    if nq == 0 or nk == 0:
        ptr = torch.zeros(rows + 1, dtype=torch.int32)
        empty = torch.zeros(0, dtype=torch.int32)
        return ptr, empty, ptr, empty
    return cached_block_map_lists(spec, nq, nk, block_m, block_n, q_offset=nk - nq, transposed=key_major)


def blocked_lse_index(layout: VarlenLayout, heads: int, device) -> torch.Tensor:
    """int64 (heads, total_q): where element [h, t] of the forward's lse (Hq, total_q) goes in the
    backward kernels' layout, which holds sequence s's rows as `heads` runs of len_q[s] from
    heads * cu_q[s] (one run per query head, as the batched kernels' (B, Hq, Nq))."""
    len_q = torch.tensor(layout.len_q, dtype=torch.int64)
    starts = torch.tensor(layout.cu_q[:-1], dtype=torch.int64)
    seq = torch.repeat_interleave(torch.arange(layout.batch), len_q)
    start, n = starts[seq], len_q[seq]
    row = torch.arange(layout.total_q) - start
    head = torch.arange(heads)[:, None]
    return (heads * start[None, :] + head * n[None, :] + row[None, :]).to(device)


def random_tables_per_sequence(spec: Spec, tables, layout: VarlenLayout, device) -> dict:
    """Each random predicate's draws for every sequence (its own lengths, as a batched call of them
    draws; one draw per distinct (len_q, len_k)), by kernel argument name: the joined int32 table,
    and (offset in it, first query block, rows) per sequence. Sequences with no query or no key
    draw nothing (rows 0)."""
    out = {}
    for t in tables:
        table_name, _, _ = t.names
        parts, offsets, per_sequence, size = [], {}, [], 0
        for nq, nk in zip(layout.len_q, layout.len_k):
            if nq == 0 or nk == 0:
                per_sequence.append((0, 0, 0))
                continue
            if (nq, nk) not in offsets:
                first, table = spec.eval_context(nq, nk, nk - nq).random_table(Random(t.per_row, t.block, t.seed))
                offsets[nq, nk] = (size, first, table.shape[0])
                parts.append(table.to(torch.int32).reshape(-1))
                size += parts[-1].shape[0]
            per_sequence.append(offsets[nq, nk])
        joined = torch.cat(parts) if parts else torch.zeros(1, dtype=torch.int32)
        out[table_name] = (joined if joined.numel() else torch.zeros(1, dtype=torch.int32)).contiguous().to(device)
        out[f"random_{t.index}_per_sequence"] = torch.tensor(per_sequence or [(0, 0, 0)],
                                                             dtype=torch.int32).contiguous().to(device)
    return out
