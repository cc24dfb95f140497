"""The lowering of a softmax spec's decode kernel, its tile configurations and its split count.

    lower_decode(spec) = run_passes(build_decode(spec), IR_PASSES + DECODE_ANALYSIS_PASSES)

A decode program owns one row tile of one (sequence, kv head): the GROUP query heads of the kv head
times the Nq new tokens, padded to BLOCK_M >= 16 rows (tl.dot's minimum), and one split of the
sequence's key tiles. Key tiles come from
- "ranges" (interval masks: band, causal, blocks and all of them): the closed-form range
  [L(first_pos), R(last_pos)] clipped to the sequence's keys, cut into partial/full/partial runs
  exactly as the forward does; a sliding window reads only the window's tiles;
- "scan" (every other mask): the range from the interval parts of a top-level ``all`` (the whole
  sequence when there are none), each tile's mask evaluated before anything is loaded and the tile
  skipped when it allows no pair of the program's rows. No K/V byte of an empty tile is read; the
  cost of a skipped tile is the integer evaluation of the predicate.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import sympy
import torch

from ..ir.decode import build_decode
from ..ir.graph import Graph
from ..ir.passes import run_passes
from ..ir.softmax import IR_PASSES
from ..spec import All_, Spec
from .configs import ARCHS, TileConfig, arch_family, padded_head_dim
from .intervals import evaluate_bound, key_interval
from .lowering import choose_iteration

# Rows of one program: GROUP x Nq padded to a power of two, at most this many (more rows take
# several row tiles, each reading the group's K/V once).
MAX_ROWS = {64: 128, 128: 64, 256: 64}
# float32 tiles hold twice the bytes: at head dim 256, 64 packed rows (MQA's 48 heads) spill with
# every candidate on sm_80 and sm_90, and 32 rows still leave 32 bytes of stack (sm_90, Nq = 5);
# 16 rows have none.
MAX_ROWS_FP32 = {**MAX_ROWS, 256: 16}


def max_rows(head_dim: int, dtype: torch.dtype) -> int:
    """The most packed rows one decode program takes at this head dim and dtype."""
    return (MAX_ROWS_FP32 if dtype == torch.float32 else MAX_ROWS)[max(64, padded_head_dim(head_dim))]
# Key tiles per split at least (a split smaller than this costs more in merging than it gains).
MIN_TILES_PER_SPLIT = 4
MAX_SPLITS = 128
# Streaming multiprocessors assumed where no GPU is queried (the interpreter): an H100's, one
# CTA each (no compiled kernel tells how many fit).
DEFAULT_SMS = 132

# Candidates per dtype class and padded head dim as (block_n, num_warps, num_stages), preferred
# first; block_m is decided per call from GROUP x Nq. On a GPU the launcher keeps the first that
# compiles without spills for the row count (`DecodeLauncher.spill_free_config`).
_16BIT = {64: ((64, 4, 3), (64, 4, 2), (32, 4, 2)),
          128: ((64, 4, 2), (32, 4, 2), (32, 4, 1)),
          256: ((32, 8, 2), (32, 4, 1), (16, 4, 1))}
# float32 at head dim 256: two stages first (operands staged through shared memory); one stage
# keeps the 16 x 256 fp32 tiles in registers and spills (Gemma-2's 256-dim heads: 232-288 bytes of
# stack on sm_80 and sm_90 with a softcap, none with two stages).
_FP32 = {64: ((32, 4, 2), (16, 4, 1)),
         128: ((32, 4, 1), (16, 4, 1)),
         256: ((16, 8, 2), (16, 8, 1), (16, 4, 1))}
INTERPRETER_BLOCK_N = 32
# Keys of a contiguous cache (or of a tile inside one page) addressed from one 64-bit base. Each
# thread's offsets within a run are loop-invariant and stay in registers: runs of 16 share them,
# whole-tile runs hold one 64-bit offset per load (gqa, sm_90, 64-key tiles: 106 registers and
# 341 loop instructions against 179 and 310; 106 leaves room for 4 CTAs per SM, 179 for 2).
CONTIGUOUS_RUN = 16


def row_block(group: int, nq: int, head_dim: int, dtype: torch.dtype) -> int:
    """BLOCK_M for GROUP x Nq packed rows: a power of two >= 16, capped by `max_rows`."""
    rows = max(16, 1 << (max(group * nq, 1) - 1).bit_length())
    return min(rows, max_rows(head_dim, dtype))


def page_run(page_size: int | None, block_n: int, *, runs: bool = True) -> int:
    """Keys of a tile addressed from one 64-bit base (the kernel's PAGE_RUN), never crossing a
    page: whole pages where pages divide the tile (one page-table entry each); CONTIGUOUS_RUN
    keys where the tile lies inside one page or the cache is contiguous (`page_size` None: one
    entry per tile); else gcd(page_size, block_n) keys (one entry per run). Without `runs` (a
    Triton whose software pipeline does not take row pointers through tt.reshape: see
    `runtime.decode.RESHAPED_ROWS`) every key is its own run: one entry and base per key."""
    if not runs:
        return 1
    if page_size is None or page_size % block_n == 0:
        return min(CONTIGUOUS_RUN, block_n)
    return math.gcd(page_size, block_n)


def candidate_decode_configs(head_dim: int, dtype: torch.dtype, arch: str | None,
                             block_m: int) -> tuple[TileConfig, ...]:
    """Tile configurations to try for this shape class, preferred first; `arch` None is the CPU
    interpreter. A page size is not part of the class: keys are addressed page by page per key."""
    if arch is None:
        return (TileConfig(block_m, INTERPRETER_BLOCK_N, 4, 1),)
    arch_family(arch)                       # refuses a malformed target early
    padded = max(64, padded_head_dim(head_dim))
    if padded > 256:
        raise ValueError(f"head_dim {head_dim} is above the largest supported (256)")
    table = _FP32 if dtype == torch.float32 else _16BIT
    warps_for_rows = 8 if block_m >= 64 else 4
    return tuple(TileConfig(block_m, n, max(w, warps_for_rows), s) for n, w, s in table[padded])


def decode_config_table(head_dim: int) -> dict:
    """The candidates for the header, at 16 and at MAX_ROWS rows."""
    table = {"interpreter": [c.as_dict() for c in candidate_decode_configs(head_dim, None, None, 16)]}
    for arch in ARCHS:
        for label, dtype in (("16-bit", torch.float16), ("float32", torch.float32)):
            for rows in sorted({16, max_rows(head_dim, dtype)}):
                table[f"{arch}/{label}/{rows}r"] = [
                    c.as_dict() for c in candidate_decode_configs(head_dim, dtype, arch, rows)]
    return table


@dataclass(frozen=True)
class SmLimits:
    """What one streaming multiprocessor of a target holds (CUDA's occupancy limits) and the SM
    count of its reference part (A100, H100 SXM) for choices made without a GPU."""
    sms: int
    shared: int                 # bytes of shared memory for CTAs
    registers: int = 65536
    threads: int = 2048
    ctas: int = 32


SM_LIMITS = {"sm_80": SmLimits(sms=108, shared=164 * 1024), "sm_90": SmLimits(sms=132, shared=228 * 1024)}
RESERVED_SHARED = 1024      # bytes the driver keeps per CTA (sm_80 and later)
REGISTER_UNIT = 256         # registers are allocated per warp in units of 256
# Splits are chosen so that every wave of CTAs fills at least this share of the resident slots.
MIN_UTILISATION = 0.8


def sm_limits(target: str) -> SmLimits:
    """The limits of a target's family (`arch_family`: Hopper and later, or Ampere and Ada)."""
    return SM_LIMITS[arch_family(target)]


def resident_ctas(*, registers: int, shared: int, num_warps: int, limits: SmLimits) -> int:
    """CTAs of a kernel that one SM holds at once: the fewest its registers (per thread, allocated
    per warp in units of REGISTER_UNIT), its shared memory (plus RESERVED_SHARED per CTA), its
    threads and the CTA limit allow; at least 1."""
    per_warp = -(-registers * 32 // REGISTER_UNIT) * REGISTER_UNIT
    by_registers = (limits.registers // max(per_warp, 1)) // num_warps
    by_shared = limits.shared // (shared + RESERVED_SHARED)
    by_threads = limits.threads // (32 * num_warps)
    return max(1, min(by_registers, by_shared, by_threads, limits.ctas))


@functools.lru_cache(maxsize=4096)
def choose_num_splits(*, batch: int, kv_heads: int, row_tiles: int, key_span: int, block_n: int,
                      num_sms: int = DEFAULT_SMS, ctas_per_sm: int = 1) -> int:
    """Programs per (sequence, kv head, row tile) along the keys (flash-decoding).

    P = batch x kv_heads x row_tiles programs run s splits each on num_sms x ctas_per_sm resident
    slots (`resident_ctas` of the compiled kernel); s splits take ceil(P s / slots) waves, and
    P s / (slots x waves) of those waves' slots are busy. The count is the fewest splits that keep
    at least MIN_UTILISATION of the slots busy (else the best utilisation), among 1 .. the key
    tiles / MIN_TILES_PER_SPLIT (a split smaller than that costs more in merging than it gains)
    and at most MAX_SPLITS. The utilisation chosen, not the count, is continuous in the batch:
    16 x 8 kv heads at 8192 keys on 132 SMs x 3 CTAs split 3 ways (384 of 396 slots), 17 x 8 split
    5 ways (680 CTAs in 2 waves). `key_span` is the most keys one sequence's rows can see (the
    cache length, or a window's width): bucketed to a power of two so that the count, a runtime
    value, stays put as lengths grow token by token. Pure, and cached: a warm call looks it up.
    """
    programs = batch * kv_heads * row_tiles
    if programs <= 0 or key_span <= 0:
        return 1
    tiles = -(-(1 << (key_span - 1).bit_length()) // block_n)
    most = max(1, min(tiles // MIN_TILES_PER_SPLIT, MAX_SPLITS))
    slots = max(1, num_sms * ctas_per_sm)
    best, best_use = 1, 0.0
    for splits in range(1, most + 1):
        ctas = programs * splits
        use = ctas / (slots * -(-ctas // slots))
        if use >= MIN_UTILISATION:
            return splits
        if use > best_use:
            best, best_use = splits, use
    return best


def key_span(graph: Graph, nq: int, capacity: int) -> int:
    """The most keys the nq rows of one sequence can see: the capacity, or less under a window.
    Symbolic work: launchers call it once per (nq, capacity) and keep the answer."""
    lower, upper = graph.facts["bounds"]
    if lower == -sympy.oo or upper == sympy.oo:
        return capacity
    far = torch.tensor([1 << 40, (1 << 40) + max(nq, 1) - 1], dtype=torch.int64)
    span = int(evaluate_bound(upper, far)[1] - evaluate_bound(lower, far)[0]) + 1
    return max(1, min(capacity, span))


def choose_decode_iteration(g: Graph) -> Graph:
    """Interval masks take closed-form key ranges; others scan their range and skip empty tiles."""
    g = choose_iteration(g)
    if g.facts["iteration"] != "lists":
        return g
    bounds = outer_interval(g.node("mask").attrs["predicate"]) if "mask" in g else (-sympy.oo, sympy.oo)
    return g.with_facts(iteration="scan", bounds=bounds)          # (no mask: `select:` alone)


def outer_interval(pred) -> tuple[sympy.Expr, sympy.Expr]:
    """Bounds (L, R) that hold every allowed key of a non-interval mask: those of the interval
    parts of a top-level ``all`` (keys outside them are refused by that part), else unbounded."""
    low, high = -sympy.oo, sympy.oo
    if isinstance(pred, All_):
        parts = [b for b in (key_interval(p) for p in pred.parts) if b is not None]
        if parts:
            low = sympy.Max(*[b[0] for b in parts])
            high = sympy.Min(*[b[1] for b in parts])
    return low, high


def choose_decode_tiles(g: Graph) -> Graph:
    """Tile sizes by shape class (padded head dim, dtype, arch, row count): the table travels with
    the IR."""
    head_dim = g.facts["head_dim"]
    return g.with_facts(block_d=padded_head_dim(head_dim), tile_configs=decode_config_table(head_dim))


DECODE_ANALYSIS_PASSES = (choose_decode_iteration, choose_decode_tiles)
DECODE_PASSES = IR_PASSES + DECODE_ANALYSIS_PASSES


def lower_decode(spec: Spec, *, check: bool | None = None) -> Graph:
    return run_passes(build_decode(spec), DECODE_PASSES, check=check)
