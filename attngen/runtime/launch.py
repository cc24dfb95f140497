"""Launching generated softmax kernels: argument checks, call-time tables, grids.

CPU tensors run the generated source under Triton's interpreter; CUDA tensors run it compiled.
Per-shape call-time data (block-map lists, random tables) is cached per shape and tile size (the
64 most recent shapes in memory, large block maps also on disk); segment block maps are rebuilt on
every call from the ids passed.

Tile configuration on a GPU: the first candidate of the shape class whose kernel, compiled for
the call's own arguments exactly as the launch compiles it (`KernelLauncher.launch_choice`), has
no spills, decided once per (kernel, dtype, architecture); the launch then runs that compiled
kernel. With ATTNGEN_AUTOTUNE=1, every spill-free candidate is timed on the first call of a shape
class (head dim, dtype, architecture, nq and nk rounded up to powers of two) and the fastest is
kept for that class (`SoftmaxLauncher.tuned_config`). Ahead of time, without a GPU
(`spill_free_config`, `compile_for`: `attngen emit --stage`, the compile tests), the same
candidates are judged on Triton's ahead-of-time compilation.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .. import env
from ..analysis.configs import TileConfig, candidate_configs
from ..codegen.aot import first_without_spills, resource_usage
from ..codegen.emit import GeneratedKernel
from ..codegen.plan import random_tables
from ..errors import ShapeError
from ..reference import check_qkv
from ..spec import Random, Spec, alibi_slopes, resolve_k_offset, resolve_q_offset
from ..spec.inputs import DTYPES as DTYPES_OF_INPUTS
from ..spec.spec import segment_grids
from ..analysis.blockmap import block_map
from ..analysis.tiles_params import scalar_reads, set_lists as build_set_lists
from .blockmap_cache import cached_block_map_lists
from .inputs import call_inputs, formula_args, sink_arg
from .select import EveryTile, Selector
from .tma import ensure_allocator, tma_refusal, with_tma
from .launcher import (AOT_LENGTH, KernelLauncher, architecture, cdiv, check_kernel_dtypes, dot_precision, ids_int32,
                       meta_tensor, poison)

log = logging.getLogger("attngen")


def check_inputs(spec: Spec, q, k, v) -> None:
    check_qkv(spec, q, k, v)
    check_kernel_dtypes(q, k, v)


def length_bucket(n: int) -> int:
    """n rounded up to a power of two: tuning keys on this, so varying lengths do not retune."""
    return 1 << max(n - 1, 0).bit_length()


def fastest_without_spills(candidates, usage_of, time_of):
    """The spill-free candidate with the least `time_of(config)` (ms; ties: the earlier one).
    Candidates that spill are never timed; where every one spills, the one that spills least
    (`first_without_spills`). `usage_of` is called once per candidate."""
    usage = {cfg: usage_of(cfg) for cfg in candidates}
    free = [cfg for cfg in candidates if usage[cfg].spills == 0]
    if not free:
        return first_without_spills(candidates, usage.__getitem__)[0]
    times = {cfg: time_of(cfg) for cfg in free}
    return min(free, key=times.__getitem__)


def bench_ms(run) -> float:
    """Milliseconds per call of `run` on the GPU (Triton's do_bench: warm-up, then the median)."""
    from triton.testing import do_bench
    return do_bench(run, warmup=5, rep=20, return_mode="median")


class ShapeTables(OrderedDict):
    """Per-shape call-time tables, least recently used dropped past `capacity`: a server that sees
    every length must not keep every length's block map."""

    def __init__(self, capacity: int = 64):
        super().__init__()
        self.capacity = capacity

    def get_or_build(self, key, build):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = build()
        if len(self) > self.capacity:
            self.popitem(last=False)
        return value


def block_map_lists(spec: Spec, nq, nk, q_offset, cfg: TileConfig, device, seg_q=None, seg_k=None,
                    *, transposed: bool = False, k_offset: int = 0, total_nk: int | None = None) -> tuple:
    """The block map's CSR lists (`BlockMap.lists`, by key tile where `transposed`) on `device`.
    Segment maps come from this call's ids; static ones through `blockmap_cache` (large ones are
    kept on disk). k_offset / total_nk: a chunk pair of a longer sequence (`block_map`)."""
    if seg_q is None:
        lists = cached_block_map_lists(spec, nq, nk, cfg.block_m, cfg.block_n, q_offset=q_offset,
                                       transposed=transposed, k_offset=k_offset, total_nk=total_nk)
    else:
        bm = block_map(spec, nq, nk, cfg.block_m, cfg.block_n, q_offset=q_offset, seg_q=seg_q,
                       seg_k=seg_k, k_offset=k_offset, total_nk=total_nk)
        lists = (bm.transposed() if transposed else bm).lists
    return tuple(t.to(device=device) for t in lists)


@dataclass(frozen=True)
class CallTables:
    """Tensors a kernel reads besides q, k, v: block-map lists, random tables, segments, slopes."""

    lists: tuple = ()
    random: tuple = ()
    segments: tuple = ()
    alibi: torch.Tensor | None = None


def _segments(seg_q, seg_k, device):
    """Segment ids as int32 on `device` with batch strides (0 for 1-D ids shared by the batch)."""
    out = []
    for name, seg in (("seg_q", seg_q), ("seg_k", seg_k)):
        seg = ids_int32(seg, name, device)
        if seg.dim() == 1:
            out += [seg, 0, seg.stride(0)]
        else:
            out += [seg, seg.stride(0), seg.stride(1)]
    return tuple(out)




class SoftmaxLauncher(KernelLauncher):
    """Runs one generated softmax forward kernel; caches per-shape tables."""

    # How autotuning times one configuration: run (a no-argument launch) → ms. Tests inject a fake.
    timer = staticmethod(bench_ms)

    def __init__(self, generated: GeneratedKernel):
        super().__init__(generated)
        self.tables = random_tables(generated.graph)
        self.iteration = generated.graph.facts["iteration"]
        # select: {block: R}: tiles of at most R rows and keys (configs.fit_tiles), lists per call
        self.fit = self.spec.select.block if self.spec.select is not None else None
        self.selector = Selector(self.spec) if self.fit else None
        # lsh: (the kernel spec's) lists come with each call (runtime/lsh.py passes them)
        self.call_lists = self.selector is not None or self.spec.lsh is not None
        self._shape_cache = ShapeTables()
        # A mask whose data reads are per-(b, h) scalars: exact lists per call from their values
        # (analysis/tiles_params.py), one set of rows per value of `list_sets`; prepared here, once.
        self.reads = (scalar_reads(self.spec.effective_mask)
                      if self.iteration == "lists" and self.selector is None else None)
        self._set_cache = ShapeTables()
        self._tuned: dict = {}
        self._alibi: dict = {}

    def config(self, head_dim: int, dtype: torch.dtype, device: torch.device) -> TileConfig:
        arch = architecture(device)
        if arch is None:
            return candidate_configs(head_dim, dtype, None, fit=self.fit)[0]
        return self.spill_free_config(arch, dtype)

    def spill_free_config(self, target: str, dtype: torch.dtype, *, n: int = AOT_LENGTH,
                          nk: int | None = None) -> TileConfig:
        """Without a GPU: the first candidate configuration whose kernel, compiled for `target` as
        a launch at Nq = `n`, Nk = `nk` (default n) compiles it, has no spills; decided once per
        (target, dtype, n, nk). Register allocation depends on the whole kernel and on the launch's
        specialisation, so no fixed table can promise this for every spec."""
        arguments = self.aot_arguments(dtype, n, nk or n)
        def key_values():
            launch = arguments(candidate_configs(self.spec.head_dim, dtype, target, fit=self.fit)[0])[1]
            return launch["k"], launch["v"]
        candidates = self.candidates(self.spec.head_dim, dtype, target, key_values, autotune=False)
        return self.choose((target, dtype, n, nk or n, env.tma()), candidates,
                           lambda cfg: resource_usage(self.compile_launch("fwd", target, arguments, cfg)),
                           f"{self.generated.kernel_name} on {target}/{dtype}")

    def aot_arguments(self, dtype: torch.dtype, n: int, nk: int, batch: int = 1):
        """cfg → the launch of a call at these sizes, on meta tensors (no data, no GPU); a
        segments spec gets one document."""
        spec = self.spec
        q = meta_tensor(batch, spec.query_heads, n, spec.head_dim, dtype=dtype)
        k = meta_tensor(batch, spec.kv_heads, nk, spec.head_dim, dtype=dtype)
        v = meta_tensor(batch, spec.kv_heads, nk, spec.v_head_dim, dtype=dtype)
        segments = ((torch.zeros(n, dtype=torch.int32), torch.zeros(nk, dtype=torch.int32))
                    if spec.uses_segments else (None, None))
        return self._arguments_at(q, k, v, nk - n, *segments, interpret=False, count_tiles=False,
                                  inputs=meta_inputs(spec, batch, n, nk))

    def tuned_config(self, q, k, v, *, q_offset, seg_q, seg_k, arguments=None, inputs=None, lists=None) -> TileConfig:
        """The configuration for this call. Off a GPU: `config`. On a GPU, by default the first
        candidate with no spills when compiled for this call's arguments (`launch_choice`, once per
        dtype and architecture); with ATTNGEN_AUTOTUNE=1, on the first call of a shape class every
        spill-free candidate runs on these very inputs, timed by `timer`, and the fastest is kept
        for the class. `arguments(cfg)` builds the launch at `cfg` (`forward` passes its own)."""
        head_dim, arch = q.shape[-1], architecture(q.device)
        if arch is None:
            return candidate_configs(head_dim, q.dtype, None, fit=self.fit)[0]
        if arguments is None:
            q_offset = resolve_q_offset(q.shape[2], k.shape[2], q_offset)
            arguments = self._arguments_at(q, k, v, q_offset, seg_q, seg_k, interpret=False, count_tiles=False,
                                           lists=lists,
                                           inputs=call_inputs(self.spec, inputs, batch=q.shape[0], nq=q.shape[2],
                                                              nk=k.shape[2], device=q.device))
        candidates = self.candidates(head_dim, q.dtype, arch, lambda: (k, v), autotune=env.autotune())
        if not env.autotune():
            return self.launch_choice((arch, q.dtype, env.tma(), any(c.tma for c in candidates)), "fwd", candidates,
                                      arguments,
                                      f"{self.generated.kernel_name} on {arch}/{q.dtype}")
        key = (head_dim, q.dtype, arch, length_bucket(q.shape[2]), length_bucket(k.shape[2]))
        if key not in self._tuned:
            def time_of(cfg):
                return self.timer(lambda: self.forward(q, k, v, q_offset=q_offset, seg_q=seg_q,
                                                       seg_k=seg_k, config=cfg, inputs=inputs, lists=lists))
            self._tuned[key] = fastest_without_spills(
                candidates, lambda cfg: self.launch_usage("fwd", arguments, cfg), time_of)
            log.info("%s: autotuned %s for %s", self.generated.kernel_name, self._tuned[key], key)
        return self._tuned[key]

    def candidates(self, head_dim: int, dtype: torch.dtype, arch: str, key_values, *, autotune: bool) -> list:
        """The forward's tile configurations on `arch`, with the TMA variants where the launch's K
        and V (`key_values()`, asked for only when TMA is in play) may take them (runtime/tma.py).
        Varlen kernels (packed (N, H, D) tensors) take pointers only."""
        candidates = candidate_configs(head_dim, dtype, arch, fit=self.fit)
        if self.generated.kind.startswith("varlen") or not (env.tma() or autotune):
            return candidates
        k, v = key_values()
        return with_tma(candidates, tma_refusal(arch, ("k", k), ("v", v)), autotune=autotune)

    def call_tables(self, nq, nk, q_offset, cfg: TileConfig | None, device, seg_q, seg_k, *,
                    batch: int, keys: tuple = (0, None)) -> CallTables:
        """The tables of one call; `cfg` None: without the block map's lists (a kernel that walks
        its own, as the backward's dK/dV kernel does). `batch`: q's, which 2-D segment ids match.
        `keys`: (k_offset, total_nk) of a chunk pair (`Spec.eval_context`)."""
        spec = self.spec
        if spec.uses_segments:
            if seg_q is None or seg_k is None:
                raise ShapeError(f"spec {spec.name!r} has a segments mask: pass seg_q and seg_k")
            segment_grids(seg_q, seg_k, nq, nk, None, batch)        # validates shapes, dtypes
            lists = () if cfg is None else self._lists(nq, nk, q_offset, cfg, device, seg_q, seg_k, keys)
            return CallTables(lists=lists, segments=_segments(seg_q, seg_k, device), alibi=self.alibi(device))
        if seg_q is not None or seg_k is not None:
            raise ShapeError(f"spec {spec.name!r} has no segments mask, but seg_q/seg_k were given")
        key = (nq, nk, q_offset, keys, cfg and (cfg.block_m, cfg.block_n), device)
        return self._shape_cache.get_or_build(key, lambda: CallTables(
            lists=() if cfg is None else self._lists(nq, nk, q_offset, cfg, device, None, None, keys),
            random=self._random(nq, nk, q_offset, device, keys), alibi=self.alibi(device)))

    def select(self, q, k, q_offset, seg_q, seg_k, keys=(0, None)):
        """This call's content-based selection (runtime/select.py), or None without `select:`.
        An lsh kernel spec's lists come with the call (runtime/lsh.py); ahead of time (meta
        tensors), lists of every tile stand in for them."""
        if self.spec.lsh is not None:
            if q.device.type != "meta":
                raise ShapeError(f"spec {self.spec.name!r} is an lsh kernel spec: call the lsh spec itself "
                                 "(runtime/lsh.py passes these kernels their lists)")
            return EveryTile(q.shape[0], q.shape[2], k.shape[2])
        if self.selector is None:
            return None
        return self.selector.choose(q, k, q_offset, seg_q, seg_k, k_offset=keys[0])

    def alibi(self, device) -> torch.Tensor | None:
        """ALiBi's slopes on `device` (float32), made once per device."""
        if not self.spec.alibi:
            return None
        if device not in self._alibi:
            self._alibi[device] = alibi_slopes(self.spec.query_heads).to(device=device, dtype=torch.float32)
        return self._alibi[device]

    def set_lists(self, nq, nk, q_offset, cfg: TileConfig, device, inputs: dict, *, batch: int,
                  keys: tuple = (0, None), transposed: bool = False) -> tuple | None:
        """This call's exact lists of a mask with scalar reads (`reads`), or None for other masks:
        (partial_ptr, partial_idx, full_ptr, full_idx[, list_rows]), one set of rows per value of
        the graph's `list_sets`. Kept per (shape, tiles, values of the reads); O(sets x reads) to
        look up, O(distinct values x tiles) to build, no symbolic work. Meta inputs (ahead of time:
        no values) get the static map's lists, which have the same types."""
        if self.reads is None:
            return None
        spec, axes = self.spec, self.graph.facts.get("list_sets", ())
        if any(t.device.type == "meta" for t in inputs.values()):
            lists = block_map_lists(spec, nq, nk, q_offset, cfg, device, transposed=transposed, k_offset=keys[0],
                                    total_nk=keys[1])
            rows = len(lists[0]) - 1
        else:
            values = self.reads.values(inputs, batch=batch, query_heads=spec.query_heads, kv_heads=spec.kv_heads,
                                       device=device)
            key = (nq, nk, q_offset, keys, cfg.block_m, cfg.block_n, transposed, device, tuple(values.shape),
                   values.cpu().numpy().tobytes())
            *lists, rows = self._set_cache.get_or_build(key, lambda: build_set_lists(
                self.reads, values, nq, nk, q_offset, cfg.block_m, cfg.block_n, k_offset=keys[0],
                transposed=transposed))
        return (*lists, rows) if axes else tuple(lists)

    def _lists(self, nq, nk, q_offset, cfg, device, seg_q, seg_k, keys):
        if self.iteration != "lists" or self.call_lists or self.reads is not None:
            return ()                         # select:, lsh:, scalar reads: each call's own
        return block_map_lists(self.spec, nq, nk, q_offset, cfg, device, seg_q, seg_k, k_offset=keys[0],
                               total_nk=keys[1])

    def _random(self, nq, nk, q_offset, device, keys):
        if not self.tables:
            return ()
        ctx = self.spec.eval_context(nq, nk, q_offset, k_offset=keys[0], total_nk=keys[1])
        out = []
        for t in self.tables:
            first, table = ctx.random_table(Random(t.per_row, t.block, t.seed))
            out += [table.to(device=device, dtype=torch.int32).contiguous(), first, table.shape[0]]
        return tuple(out)

    @staticmethod
    def constexprs(cfg: TileConfig, dtype: torch.dtype, *, even_k: bool, interpreted: bool,
                   count_tiles: bool = False) -> dict:
        return dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, EVEN_K=even_k, COUNT_TILES=count_tiles,
                    DOT_PRECISION=dot_precision(dtype), USE_TMA=cfg.tma,
                    UPCAST_DOT=interpreted and dtype == torch.bfloat16)

    def compile_for(self, target: str, dtype: torch.dtype, config: TileConfig | None = None, *,
                    n: int = AOT_LENGTH, nk: int | None = None):
        """The kernel compiled for a GPU `target` ('sm_80', 'sm_90') as a launch at Nq = `n`,
        Nk = `nk` (default n) compiles it; no GPU needed."""
        cfg = config or self.spill_free_config(target, dtype, n=n, nk=nk)
        return self.compile_launch("fwd", target, self.aot_arguments(dtype, n, nk or n), cfg)

    def forward(self, q, k, v, *, q_offset=None, seg_q=None, seg_k=None, inputs: dict | None = None,
                config: TileConfig | None = None, count_tiles: bool = False, k_offset: int = 0,
                total_nk: int | None = None, total_nq: int | None = None, lists=None):
        """(out, lse[, tile_counts]): out like q's layout (B, Hq, Nq, Dv), lse float32 (B, Hq, Nq).
        `inputs`: the spec's call-time inputs by name (`sink`, ...). k_offset / total_nk: the keys
        are positions k_offset .. k_offset + Nk - 1 of a sequence of total_nk keys (a chunk pair of
        context parallelism; random draws are the whole sequence's). An input's Nk axis then holds
        total_nk positions and its Nq axis total_nq (default Nq): formulas read it at absolute
        positions. `lists`: this call's tile lists (an object with `lists(block_m, block_n,
        by_key=False)`, as runtime/lsh.py makes), for a spec whose lists come with the call."""
        spec = self.spec
        check_inputs(spec, q, k, v)
        batch, _, nq, _ = q.shape
        nk = k.shape[2]
        keys = resolve_k_offset(nk, k_offset, total_nk)
        q_offset = resolve_q_offset(nq, nk, q_offset, keys[0])
        inputs = call_inputs(spec, inputs, batch=batch, nq=nq if total_nq is None else total_nq,
                             nk=nk if total_nk is None else total_nk, device=q.device)
        interpret = architecture(q.device) is None
        if nq == 0 or nk == 0:           # no pair at all: nothing to launch
            out = q.new_zeros(out_shape(spec, q))
            lse = torch.full((batch, spec.query_heads, nq), float("-inf"), device=q.device)
            if spec.sink:                # a row with no key: lse = sink[h]
                lse = lse.copy_(inputs["sink"].to(lse)[None, :, None].expand_as(lse))
            counts = torch.zeros(0, dtype=torch.int32, device=q.device)        # no program ran
            return (out, lse, counts) if count_tiles else (out, lse)
        arguments = self._arguments_at(q, k, v, q_offset, seg_q, seg_k, interpret=interpret,
                                       count_tiles=count_tiles, inputs=inputs, keys=keys, lists=lists)
        cfg = config or self.tuned_config(q, k, v, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k, arguments=arguments,
                                          inputs=inputs, lists=lists)
        if cfg.tma:
            refusal = tma_refusal(architecture(q.device), ("k", k), ("v", v))
            if refusal is not None:
                log.warning("%s: TMA configuration %s on the pointer path: %s", self.generated.kernel_name, cfg,
                            refusal)
                cfg = dataclasses.replace(cfg, tma=False)
            elif not interpret:
                ensure_allocator()
        grid, args, num_warps, num_stages = arguments(cfg)
        poison(args["out"], args["lse"], interpreted=interpret)
        self.launch("fwd", grid, args, num_warps=num_warps, num_stages=num_stages, interpret=interpret)
        out, lse, counts = args["out"], args["lse"], args["tile_counts"]
        return (out, lse, counts) if count_tiles else (out, lse)

    def _arguments_at(self, q, k, v, q_offset, seg_q, seg_k, *, interpret: bool, count_tiles: bool,
                      inputs: dict, keys: tuple = (0, None), lists=None):
        """cfg → (grid, keyword arguments, num_warps, num_stages) of this call's launch at `cfg`:
        outputs allocated, the shape's tables picked. The configuration search compiles with
        exactly these arguments, so it judges the kernel the launch runs."""
        spec = self.spec
        batch, _, nq, _ = q.shape
        nk = k.shape[2]
        selection = lists if lists is not None else self.select(q, k, q_offset, seg_q, seg_k, keys)

        def arguments(cfg: TileConfig):
            tables = self.call_tables(nq, nk, q_offset, cfg, q.device, seg_q, seg_k, batch=batch, keys=keys)
            lists = (selection.lists(cfg.block_m, cfg.block_n) if selection is not None else
                     self.set_lists(nq, nk, q_offset, cfg, q.device, inputs, batch=batch, keys=keys) or tables.lists)
            out = torch.empty(out_shape(spec, q), dtype=q.dtype, device=q.device)
            lse = torch.empty((batch, spec.query_heads, nq), dtype=torch.float32, device=q.device)
            grid = (batch * spec.query_heads, cdiv(nq, cfg.block_m))     # heads fastest; see the kernel
            counts = torch.zeros(grid[1] * grid[0], dtype=torch.int32, device=q.device) if count_tiles else out
            args = dict(q=q, k=k, v=v, out=out, lse=lse,
                        alibi_slopes=out if tables.alibi is None else tables.alibi, **sink_arg(spec, inputs),
                        tile_counts=counts, nq=nq, nk=nk, q_offset=q_offset, k_offset=keys[0],
                        num_query_heads=spec.query_heads,
                        **block_list_args(lists), **random_table_args(self.tables, tables.random),
                        **formula_args(self.signatures["fwd"], inputs), **segment_args(tables.segments, out), **stride_args("q", q), **stride_args("k", k),
                        **stride_args("v", v), **stride_args("o", out),
                        **self.constexprs(cfg, q.dtype, even_k=nk % cfg.block_n == 0, interpreted=interpret,
                                          count_tiles=count_tiles))
            return grid, args, cfg.num_warps, cfg.num_stages
        return arguments


def out_shape(spec: Spec, q: torch.Tensor) -> tuple:
    """(B, Hq, Nq, Dv): the output's shape for q (B, Hq, Nq, Dqk)."""
    return (*q.shape[:3], spec.v_head_dim)


def meta_inputs(spec: Spec, batch: int, nq: int, nk: int) -> dict:
    """The spec's inputs as meta tensors (no data) at these sizes: ahead-of-time launches."""
    sizes = {"B": batch, "Hq": spec.query_heads, "Hkv": spec.kv_heads, "Nq": nq, "Nk": nk}
    return {d.name: meta_tensor(*d.sizes(sizes), dtype=DTYPES_OF_INPUTS[d.dtype]) for d in spec.all_inputs}


def stride_args(prefix: str, t: torch.Tensor) -> dict:
    """stride_<prefix>b, h, n, d of a 4-dim tensor."""
    sb, sh, sn, sd = t.stride()
    return {f"stride_{prefix}b": sb, f"stride_{prefix}h": sh, f"stride_{prefix}n": sn, f"stride_{prefix}d": sd}


def block_list_args(lists: tuple, prefix: str = "") -> dict:
    """The block map's CSR lists by argument name (none for interval masks); a selection's lists
    (`select:`) carry a fifth value, the rows of each (batch, kv head)'s set, `list_rows`."""
    if not lists:
        return {}
    return dict(zip((f"{prefix}partial_ptr", f"{prefix}partial_idx", f"{prefix}full_ptr", f"{prefix}full_idx",
                     "list_rows"), lists))


def random_table_args(tables, values: tuple) -> dict:
    """Each random table's (table, first query block, rows) by argument name."""
    out = {}
    for n, t in enumerate(tables):
        table, first, rows = t.names
        out.update({table: values[3 * n], first: values[3 * n + 1], rows: values[3 * n + 2]})
    return out


def segment_args(segments: tuple, placeholder: torch.Tensor) -> dict:
    """Segment ids and their strides; a placeholder pointer and zero strides without segments."""
    seg = segments or (placeholder, 0, 0, placeholder, 0, 0)
    return dict(seg_q=seg[0], stride_seg_qb=seg[1], stride_seg_qn=seg[2],
                seg_k=seg[3], stride_seg_kb=seg[4], stride_seg_kn=seg[5])
