"""Launching the generated decode kernels: contiguous and paged KV caches, per-sequence lengths,
split-KV and the merge of the splits.

    out, lse = DecodeLauncher(generate(spec, "decode")).decode(q, k_cache, v_cache,
                                                               cache_seqlens=..., block_table=...)

Positions are per sequence: token t of sequence b sits at cache_seqlens[b] - Nq + t. The split count
is chosen from the shapes alone (`lowering_decode.choose_num_splits`) and is a runtime value: lengths
changing token by token neither recompile nor re-plan. The only call-time data besides the tensors
are random masks' tables, which depend on each sequence's length (the draw is a function of the
number of key blocks): building them reads cache_seqlens on the host, a synchronisation on GPUs
that only random masks pay.
"""
from __future__ import annotations

import logging

import torch
import triton

from ..analysis.configs import TileConfig
from ..analysis.lowering_decode import (DEFAULT_SMS, SmLimits, candidate_decode_configs, choose_num_splits,
                                        key_span, page_run, resident_ctas, row_block, sm_limits)
from ..codegen.aot import CompiledKernels, resource_usage
from ..codegen.emit import GeneratedKernel
from ..codegen.plan import random_tables
from ..errors import ShapeError, SpecError
from ..spec import alibi_slopes, random_draw
from .inputs import call_inputs, formula_args, sink_arg
from .launch import meta_inputs, out_shape, stride_args
from .select import Selector, decode_selection
from .launcher import AOT_LENGTH, DTYPES, KernelLauncher, architecture, dot_precision, meta_tensor, poison

log = logging.getLogger("attngen")
MAX_NQ = 16
# Runs of keys share a 64-bit base through tt.reshape (`lowering_decode.page_run`). Triton 3.6 then
# loses the software pipeline of the K/V loads (gqa, sm_90, 16-token pages: 254 registers and a
# 1,522-instruction loop against 105 and 364 under 3.9); older Tritons address key by key, as
# every version did before. 3.7 and 3.8 are not measured: they keep the per-key form.
RESHAPED_ROWS = tuple(int(part) for part in triton.__version__.split(".")[:2]) >= (3, 9)


class DecodeLauncher(KernelLauncher):
    """Runs one spec's generated decode kernel and its merge kernel.

    Kept per launcher, so that a warm call does no symbolic or driver work: the key span per
    (Nq, capacity) (`key_span` evaluates the mask's sympy bounds), the SMs and resident CTAs per
    (target, shape class), ALiBi's slopes per device, and a placeholder for the tile counts."""

    def __init__(self, generated: GeneratedKernel):
        super().__init__(generated)
        self.tables = random_tables(generated.graph)
        self._spans: dict = {}
        self._slots: dict = {}
        self._device_tensors: dict = {}
        self._interpreter_configs: dict = {}
        # select: key tiles inside one block of R (BLOCK_N <= R), blocks chosen per call
        block = self.spec.select.block if self.spec.select is not None else None
        self.selector = Selector(self.spec) if block else None
        self._fit = (lambda configs: configs) if block is None else (lambda configs: tuple(dict.fromkeys(
            TileConfig(c.block_m, min(c.block_n, block), c.num_warps, c.num_stages) for c in configs)))

    # -- per-call constants, computed once ---------------------------------------------------
    def span(self, nq: int, capacity: int) -> int:
        key = (nq, capacity)
        if key not in self._spans:
            self._spans[key] = key_span(self.graph, nq, capacity)
        return self._spans[key]

    def slots(self, target: str | None, device: torch.device, key: tuple, launch, cfg: TileConfig) -> tuple:
        """(SMs, resident CTAs per SM) the split count is chosen for: the interpreter's DEFAULT_SMS
        x 1; else the decode kernel at `cfg` compiled as `launch(cfg)` launches its split variant
        (on this GPU, or ahead of time for `target`), held against the SM's limits (this GPU's, or
        the target's SM_LIMITS). Decided once per (target, device, dtype, cfg, paged, page size)."""
        if target is None:
            return DEFAULT_SMS, 1
        key = (target, device, *key)
        if key not in self._slots:
            if device.type == "cuda":
                usage = self.launch_usage("decode", launch, cfg)
                limits = device_limits(device, target)
            else:
                usage = resource_usage(self.compile_launch("decode", target, launch, cfg))
                limits = sm_limits(target)
            ctas = resident_ctas(registers=usage.registers, shared=usage.shared + usage.dynamic_shared,
                                 num_warps=cfg.num_warps, limits=limits)
            self._slots[key] = (limits.sms, ctas)
        return self._slots[key]

    def device_tensors(self, device: torch.device) -> tuple:
        """(ALiBi slopes or None, a 1-element int32 placeholder for tile_counts) on `device`."""
        if device not in self._device_tensors:
            slopes = (alibi_slopes(self.spec.query_heads).to(device=device, dtype=torch.float32)
                      if self.spec.alibi else None)
            self._device_tensors[device] = (slopes, torch.zeros(1, dtype=torch.int32, device=device))
        return self._device_tensors[device]

    # -- configurations ----------------------------------------------------------------------

    def config(self, nq: int, dtype: torch.dtype, device: torch.device) -> TileConfig:
        """The interpreter's configuration off a GPU; on a GPU the first spill-free candidate
        judged ahead of time (`spill_free_config`; a launch judges its own: `launch_config`)."""
        arch = architecture(device)
        if arch is None:
            key = (nq, dtype)
            if key not in self._interpreter_configs:
                block_m = row_block(self.spec.group, nq, self.spec.head_dim, dtype)
                self._interpreter_configs[key] = self._fit(candidate_decode_configs(self.spec.head_dim, dtype, None, block_m))[0]
            return self._interpreter_configs[key]
        return self.spill_free_config(arch, dtype, nq=nq)

    def spill_free_config(self, target: str, dtype: torch.dtype, *, nq: int = 1, **shape) -> TileConfig:
        """Without a GPU: the first candidate whose kernel, compiled for `target` as a launch of
        `nq` new tokens against a cache of the given shape (`aot_arguments`; default: paged,
        split, AOT_LENGTH keys) compiles it, has no spills; decided once per (target, dtype, rows,
        shape)."""
        block_m = row_block(self.spec.group, nq, self.spec.head_dim, dtype)
        arguments = self.aot_arguments(dtype, nq=nq, target=target, **shape)
        return self.choose((target, dtype, block_m, nq, tuple(sorted(shape.items()))),
                           self._fit(candidate_decode_configs(self.spec.head_dim, dtype, target, block_m)),
                           lambda cfg: resource_usage(self.compile_launch("decode", target, arguments, cfg)),
                           f"{self.generated.kernel_name} on {target}/{dtype} at {block_m} rows")

    def aot_arguments(self, dtype: torch.dtype, *, nq: int = 1, n: int = AOT_LENGTH, batch: int = 1,
                      paged: bool = True, page_size: int = 16, split: bool | None = True,
                      target: str = "sm_90"):
        """cfg → the decode launch of `batch` sequences of `n` cached keys (paged: in pages of
        `page_size`), on meta tensors; `split` True forces two key splits (the variant with the
        merge), False one, None the launcher's own choice for this shape on `target`."""
        spec = self.spec
        q = meta_tensor(batch, spec.query_heads, nq, spec.head_dim, dtype=dtype)
        if paged:
            pages = -(-n // page_size)
            k_cache, v_cache = (meta_tensor(batch * pages, page_size, spec.kv_heads, dim, dtype=dtype)
                                for dim in (spec.head_dim, spec.v_head_dim))
            block_table = meta_tensor(batch, pages, dtype=torch.int32)
            capacity = pages * page_size
        else:
            k_cache, v_cache = (meta_tensor(batch, spec.kv_heads, n, dim, dtype=dtype)
                                for dim in (spec.head_dim, spec.v_head_dim))
            block_table, capacity = None, n
        seqlens = torch.full((batch,), n, dtype=torch.int32)        # host: random tables read them
        return self._arguments_at(q, k_cache, v_cache, seqlens, block_table, paged=paged, page_size=page_size,
                                  capacity=capacity, num_splits=None if split is None else 2 if split else 1,
                                  interpret=False, count_tiles=False, inputs=meta_inputs(spec, batch, nq, capacity),
                                  target=target)

    @staticmethod
    def constexprs(cfg: TileConfig, dtype: torch.dtype, *, paged: bool, page_size: int, split: bool,
                   interpreted: bool, kv_aligned: bool = True, count_tiles: bool = False) -> dict:
        return dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PAGED=paged,
                    PAGE_SIZE=page_size if paged else 1,
                    PAGE_RUN=page_run(page_size if paged else None, cfg.block_n, runs=RESHAPED_ROWS), KV_ALIGNED=kv_aligned,
                    K_ROWS=dtype != torch.float32, SPLIT=split,
                    COUNT_TILES=count_tiles,
                    DOT_PRECISION=dot_precision(dtype),
                    UPCAST_DOT=interpreted and dtype == torch.bfloat16)

    def compile_for(self, target: str, dtype: torch.dtype, config: TileConfig | None = None, *,
                    kernel: str = "decode", nq: int = 1, **shape):
        """The decode (or merge) kernel compiled for `target` as a launch of `nq` new tokens
        against a cache of the given shape (`aot_arguments`) compiles it; no GPU needed."""
        arguments = self.aot_arguments(dtype, nq=nq, target=target, **shape)
        cfg = config or self.spill_free_config(target, dtype, nq=nq, **shape)
        if kernel == "merge":
            return self.compile_launch("merge", target, lambda cfg: self.merge_launch(*arguments(cfg)[:2]), cfg)
        return self.compile_launch("decode", target, arguments, cfg)

    def compile_launches(self, target: str, dtype: torch.dtype, config: TileConfig | None = None, *,
                         nq: int = 1, **shape) -> CompiledKernels:
        """Every kernel a call of this shape launches (the decode kernel, and the merge where the
        keys are split), compiled for `target` as launched; no GPU needed."""
        arguments = self.aot_arguments(dtype, nq=nq, target=target, **shape)
        cfg = config or self.spill_free_config(target, dtype, nq=nq, **shape)
        kernels = {"decode": self.compile_launch("decode", target, arguments, cfg)}
        grid, args, _, _ = arguments(cfg)
        if grid[1] > 1:
            kernels["merge"] = self.compile_launch("merge", target, lambda _: self.merge_launch(grid, args), cfg)
        return CompiledKernels(kernels)

    def merge_launch(self, grid, args: dict):
        """(grid, keyword arguments, num_warps, num_stages) of the merge of a split decode launch."""
        q, splits = args["q"], grid[1]
        rows = q.shape[0] * self.spec.query_heads * q.shape[2]
        return (rows,), dict(split_out=args["split_out"], split_lse=args["split_lse"], out=args["out"],
                             lse=args["lse"], **stride_args("o", args["out"]), nq=q.shape[2],
                             num_query_heads=self.spec.query_heads, num_splits=splits,
                             **({"sink": args["sink"]} if "sink" in args else {})), 1, 1

    # -- inputs -------------------------------------------------------------------------------
    def check(self, q, k_cache, v_cache, cache_seqlens, block_table, k_offset: int = 0,
              max_total: int | None = None):
        """(batch, nq, capacity, paged, page_size, seqlens int32) after checking every input."""
        return check_decode_call(self.spec, q, k_cache, v_cache, cache_seqlens, block_table, k_offset, max_total)

    def _random(self, seqlens: torch.Tensor, nq: int, device) -> dict:
        """Per table, by argument name: (B, rows, per_row) int32 draws, each sequence's from its
        own length, and rows."""
        if not self.tables:
            return {}
        out = {}
        lengths = seqlens.tolist()
        for t in self.tables:
            spans = [random_draw.query_block_span(nq, n - nq, t.block) for n in lengths]
            rows = max((count for _, count in spans), default=1)
            table = torch.full((len(lengths), rows, t.per_row), -1, dtype=torch.int32)
            for b, (n, (first, count)) in enumerate(zip(lengths, spans)):
                if n == 0:                       # no key: nothing to draw, nothing to attend
                    continue
                try:
                    drawn = random_draw.draw_key_blocks(seed=t.seed, per_row=t.per_row, block=t.block,
                                                        nk=n, first_query_block=first, num_query_blocks=count)
                except SpecError as exc:
                    raise ShapeError(f"sequence {b} holds {n} keys: {exc}") from exc
                table[b, :count] = drawn.to(torch.int32)
            out.update({t.names[0]: table.to(device), t.names[2]: rows})
        return out

    # -- the call -----------------------------------------------------------------------------
    def decode(self, q, k_cache, v_cache, *, cache_seqlens=None, block_table=None, inputs: dict | None = None,
               num_splits: int | None = None, config: TileConfig | None = None,
               count_tiles: bool = False, k_offset: int = 0, max_total: int | None = None):
        """(out, lse[, tile_counts]): out (B, Hq, Nq, D) in q's dtype, lse (B, Hq, Nq) float32.

        tile_counts (with `count_tiles`): int32 (B * Hkv, splits, row tiles, 2) holding, per
        program, the key tiles it loaded and the keys (cache rows) in them. `inputs`: the spec's
        call-time inputs by name, sized with Nq the new tokens and Nk the cache's capacity.
        k_offset / max_total: this cache holds positions k_offset .. of each sequence, whose length
        cache_seqlens[b] may reach max_total (a shard of a sequence's cache: attngen.distributed).
        """
        spec = self.spec
        batch, nq, capacity, paged, page_size, seqlens = self.check(q, k_cache, v_cache, cache_seqlens,
                                                                    block_table, k_offset, max_total)
        if isinstance(num_splits, bool) or not (num_splits is None or isinstance(num_splits, int) and num_splits >= 1):
            raise ShapeError(f"num_splits={num_splits!r} must be an integer >= 1")
        interpret = architecture(q.device) is None
        inputs = call_inputs(spec, inputs, batch=batch, nq=nq, nk=capacity, device=q.device)
        arguments = self._arguments_at(q, k_cache, v_cache, seqlens, block_table, paged=paged, page_size=page_size,
                                       capacity=capacity, num_splits=num_splits, interpret=interpret,
                                       count_tiles=count_tiles, inputs=inputs, target=architecture(q.device),
                                       keys=(k_offset, capacity + k_offset if max_total is None else max_total))
        cfg = config or self.launch_config(nq, q.dtype, q.device, arguments)
        grid, args, num_warps, num_stages = arguments(cfg)
        out, lse, counts, splits = args["out"], args["lse"], args["tile_counts"], grid[1]
        if batch == 0:
            return (out, lse, counts) if count_tiles else (out, lse)
        self.launch("decode", grid, args, num_warps=num_warps, num_stages=num_stages, interpret=interpret)
        if splits > 1:
            grid, args, num_warps, num_stages = self.merge_launch(grid, args)
            self.launch("merge", grid, args, num_warps=num_warps, num_stages=num_stages, interpret=interpret)
        return (out, lse, counts) if count_tiles else (out, lse)

    def _arguments_at(self, q, k_cache, v_cache, seqlens, block_table, *, paged: bool, page_size: int,
                      capacity: int, num_splits: int | None, interpret: bool, count_tiles: bool,
                      inputs: dict, target: str | None, keys: tuple | None = None):
        """cfg → (grid, keyword arguments, num_warps, num_stages) of this call's decode launch at
        `cfg`; the configuration search compiles exactly these launches. Without `num_splits` the
        split count is chosen for the GPU `target` (None: the interpreter) from the kernel's
        resident CTAs per SM (`slots`)."""
        spec = self.spec
        batch, _, nq, _ = q.shape
        random_tables = self._random(seqlens, nq, q.device)
        k_offset, max_total = keys or (0, capacity)       # (first key's position, longest sequence)
        selected = {} if self.selector is None else dict(
            selected=decode_selection(self.selector, q, k_cache, seqlens, block_table if paged else None,
                                      page_size=page_size, capacity=capacity))
        if selected:
            selected["num_key_blocks"] = selected["selected"].shape[-1]

        def arguments(cfg: TileConfig):
            if num_splits:
                return launch_at(cfg, num_splits)
            sms, ctas = self.slots(target, q.device, (q.dtype, cfg, paged, page_size),
                                   lambda c: launch_at(c, 2), cfg)
            return launch_at(cfg, choose_num_splits(
                batch=batch, kv_heads=spec.kv_heads, row_tiles=-(-spec.group * nq // cfg.block_m),
                key_span=self.span(nq, capacity), block_n=cfg.block_n, num_sms=sms, ctas_per_sm=ctas))

        def launch_at(cfg: TileConfig, splits: int):
            row_tiles = -(-spec.group * nq // cfg.block_m)
            out = torch.empty(out_shape(spec, q), dtype=q.dtype, device=q.device)
            lse = torch.empty((batch, spec.query_heads, nq), dtype=torch.float32, device=q.device)
            rows, dv = batch * spec.query_heads * nq, spec.v_head_dim
            if splits > 1:                   # one allocation: partial outputs, then their lse
                partial = torch.empty((rows * splits * (dv + 1),), dtype=torch.float32, device=q.device)
                split_out, split_lse = partial[:rows * splits * dv], partial[rows * splits * dv:]
                poison(out, lse, partial, interpreted=interpret)
            else:                            # not read: the kernel writes out and lse directly
                split_out = split_lse = lse
                poison(out, lse, interpreted=interpret)
            grid = (batch * spec.kv_heads, splits, row_tiles)
            slopes, no_counts = self.device_tensors(q.device)
            counts = torch.zeros((*grid, 2), dtype=torch.int32, device=q.device) if count_tiles else no_counts
            kb, kh, kn, kd = _cache_strides(k_cache, paged)
            vb, vh, vn, vd = _cache_strides(v_cache, paged)
            args = dict(
                q=q, k_cache=k_cache, v_cache=v_cache, out=out, lse=lse, split_out=split_out, split_lse=split_lse,
                cache_seqlens=seqlens, block_table=block_table if paged else seqlens,
                alibi_slopes=lse if slopes is None else slopes, **sink_arg(spec, inputs), tile_counts=counts,
                **random_tables, **formula_args(self.signatures["decode"], inputs),
                **stride_args("q", q), **stride_args("o", out),
                stride_kb=kb, stride_kh=kh, stride_kn=kn, stride_kd=kd,
                stride_vb=vb, stride_vh=vh, stride_vn=vn, stride_vd=vd,
                stride_table_b=block_table.stride(0) if paged else 0, nq=nq, nk_max=capacity,
                k_offset=k_offset, max_total=max_total,
                num_kv_heads=spec.kv_heads, **selected,
                **self.constexprs(cfg, q.dtype, paged=paged, page_size=page_size, split=splits > 1,
                                  interpreted=interpret, count_tiles=count_tiles,
                                  kv_aligned=all(s % 8 == 0 for s in (kb, kh, kn, vb, vh, vn))))
            return grid, args, cfg.num_warps, cfg.num_stages
        return arguments

    def launch_config(self, nq: int, dtype: torch.dtype, device: torch.device, arguments) -> TileConfig:
        """The interpreter's configuration off a GPU; on a GPU the first candidate with no spills
        when compiled for this call's arguments, decided once per (architecture, dtype, rows)."""
        arch = architecture(device)
        if arch is None:
            return self.config(nq, dtype, device)
        block_m = row_block(self.spec.group, nq, self.spec.head_dim, dtype)
        return self.launch_choice((arch, dtype, block_m), "decode",
                                  self._fit(candidate_decode_configs(self.spec.head_dim, dtype, arch, block_m)), arguments,
                                  f"{self.generated.kernel_name} on {arch}/{dtype} at {block_m} rows")


def device_limits(device: torch.device, target: str) -> SmLimits:
    """This GPU's SM count and per-SM limits (the target's table where torch does not report one)."""
    props = torch.cuda.get_device_properties(device)
    table = sm_limits(target)
    return SmLimits(sms=props.multi_processor_count,
                    shared=getattr(props, "shared_memory_per_multiprocessor", table.shared),
                    registers=getattr(props, "regs_per_multiprocessor", table.registers),
                    threads=getattr(props, "max_threads_per_multi_processor", table.threads), ctas=table.ctas)


def _cache_strides(cache: torch.Tensor, paged: bool) -> tuple[int, int, int, int]:
    """(per sequence or page, per kv head, per key, per dim) strides of a cache."""
    s = cache.stride()
    return (s[0], s[2], s[1], s[3]) if paged else (s[0], s[1], s[2], s[3])


def check_decode_call(spec, q, k_cache, v_cache, cache_seqlens, block_table, k_offset: int = 0,
                      max_total: int | None = None):
    """(batch, nq, capacity, paged, page_size, seqlens int32) after checking every input of a
    decode call of `spec` (the decode kernels' and lsh decode's, runtime/lsh.py)."""
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ShapeError(f"{name} must be a 4-dim torch.Tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.dtype not in DTYPES:
            raise ShapeError(f"{name} has dtype {t.dtype}; decode takes float16, bfloat16 or float32")
        if t.dtype != q.dtype or t.device != q.device:
            raise ShapeError(f"{name} is {t.dtype} on {t.device}, expected q's {q.dtype} on {q.device}")
    batch, hq, nq, d = q.shape
    if (hq, d) != (spec.query_heads, spec.head_dim) or not 1 <= nq <= MAX_NQ:
        raise ShapeError(f"q has shape {tuple(q.shape)}, expected (B, {spec.query_heads}, Nq, "
                         f"{spec.head_dim}) with 1 <= Nq <= {MAX_NQ} for spec {spec.name!r}")
    paged = block_table is not None
    if paged:
        num_pages, page_size = k_cache.shape[:2]
        want = (num_pages, page_size, spec.kv_heads)
        layout = "(num_pages, page_size, Hkv, D)"
        if page_size % 16 or page_size == 0:
            raise ShapeError(f"k_cache has page_size {page_size} (dim 1); it must be a positive "
                             "multiple of 16")
        if (not isinstance(block_table, torch.Tensor) or block_table.dim() != 2
                or block_table.shape[0] != batch or block_table.dtype != torch.int32
                or block_table.device != q.device):
            raise ShapeError(f"block_table must be an int32 (B, max_pages) tensor on {q.device} with "
                             f"B = {batch}, got {getattr(block_table, 'dtype', type(block_table))} "
                             f"{tuple(getattr(block_table, 'shape', ()))}")
        capacity = block_table.shape[1] * page_size
    else:
        page_size = 0
        want = (batch, spec.kv_heads, k_cache.shape[2])
        layout = "(B, Hkv, Nk_max, D)"
        capacity = k_cache.shape[2]
    for name, t, dim in (("k_cache", k_cache, spec.head_dim), ("v_cache", v_cache, spec.v_head_dim)):
        if tuple(t.shape) != (*want, dim):
            raise ShapeError(f"{name} has shape {tuple(t.shape)}, expected {(*want, dim)} "
                             f"{layout if name == 'k_cache' else layout.replace('D)', 'Dv)')} for spec {spec.name!r}")
    # Keys within a page (a tile of a contiguous cache: at most 256) are 32-bit offsets.
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        key_stride, dim_stride = t.stride(1 if paged else 2), t.stride(3)
        if (page_size if paged else 256) * abs(key_stride) + t.shape[3] * abs(dim_stride) >= 1 << 31:
            raise ShapeError(f"{name} has strides {t.stride()}: the keys of one "
                             f"{'page' if paged else 'tile'} must lie within 2**31 elements")
    seqlens = _seqlens(cache_seqlens, batch, capacity, q.device, k_offset, max_total)
    if paged and q.device.type == "cpu":
        used = -(-seqlens.to(torch.int64) // page_size)                 # pages each sequence uses
        cols = torch.arange(block_table.shape[1])
        pages = block_table[cols[None, :] < used[:, None]]
        if pages.numel() and (pages.min() < 0 or pages.max() >= k_cache.shape[0]):
            raise ShapeError(f"block_table names pages outside 0..{k_cache.shape[0] - 1} for the "
                             "sequences' valid keys")
    return batch, nq, capacity, paged, page_size, seqlens

def _seqlens(cache_seqlens, batch, capacity, device, k_offset: int = 0, max_total: int | None = None):
    if isinstance(k_offset, bool) or not isinstance(k_offset, int) or k_offset < 0:
        raise ShapeError(f"k_offset must be an int >= 0, got {k_offset!r}")
    top = capacity + k_offset if max_total is None else max_total
    if cache_seqlens is None:
        return torch.full((batch,), min(top, capacity + k_offset), dtype=torch.int32, device=device)
    if (not isinstance(cache_seqlens, torch.Tensor) or tuple(cache_seqlens.shape) != (batch,)
            or cache_seqlens.dtype.is_floating_point or cache_seqlens.dtype == torch.bool):
        raise ShapeError(f"cache_seqlens must be an integer (B,) tensor with B = {batch}, got "
                         f"{getattr(cache_seqlens, 'dtype', type(cache_seqlens))} "
                         f"{tuple(getattr(cache_seqlens, 'shape', ()))}")
    if cache_seqlens.device != device:
        raise ShapeError(f"cache_seqlens is on {cache_seqlens.device}, expected q's device {device}")
    # Checked on the host only where that costs no synchronisation; on GPUs the kernel clamps
    # each length to the capacity.
    if device.type == "cpu":
        lengths = cache_seqlens.tolist()     # one host copy: cheaper than two reductions
        if lengths and (min(lengths) < 0 or max(lengths) > top):
            where = "the cache's capacity" if top == capacity else f"the sequence's capacity, {capacity} here from {k_offset}"
            raise ShapeError(f"cache_seqlens {lengths} must lie in 0..{top} ({where})")
    return cache_seqlens.to(torch.int32).contiguous()
