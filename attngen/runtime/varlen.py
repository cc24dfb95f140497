"""Launching the varlen kernels (SPEC.md "Variable-length batches"): one launch per kernel for a
whole packed batch, FlashAttention's layout.

q is (total_q, Hq, D), k and v (total_k, Hkv, D/Dv), cu_seqlens_q/k int32 (batch + 1). The kernels
are the batched ones rendered with `varlen` (codegen/plan_varlen.py): each program reads its
(sequence, tile) from a work table (varlen_tables.py) and the sequence's extent from cu_seqlens, so
a sequence is attended exactly as a batch row of its own lengths, aligned bottom-right, `b` its
index. Grids: forward (Hq, query-tile entries), preprocess and dQ (query-tile entries, Hq), dK/dV
(key-tile entries, Hkv). Outputs: out (total_q, Hq, Dv), lse (Hq, total_q) float32; the backward
kernels read lse and delta per sequence as (Hq, len_q) runs (`blocked_lse_index`).

Tile configuration: off a GPU the shape class's first candidate; on a GPU the first spill-free
candidate compiled for the call's own arguments, once per (architecture, dtype), as the batched
launchers do (ATTNGEN_AUTOTUNE does not time varlen launches). Tables are kept per layout (the
64 most recent cu_seqlens pairs and tile sizes).
"""
from __future__ import annotations

import torch

from ..analysis.configs import TileConfig, candidate_configs
from ..analysis.lowering_backward import BackwardConfig
from ..errors import ShapeError
from ..spec import Spec
from .inputs import call_inputs, formula_args, sink_arg
from .launch import ShapeTables, SoftmaxLauncher, block_list_args, segment_args
from .launch_backward import BackwardLauncher
from .launcher import architecture, meta_tensor, poison
from .varlen_tables import VarlenLayout, blocked_lse_index, check_varlen, random_tables_per_sequence, work_tables


def varlen_inputs(spec: Spec, inputs: dict | None, layout: VarlenLayout, device) -> dict:
    """The call's inputs, checked: B is the number of sequences (Nq/Nk axes are refused when the
    kernel is generated: lengths differ per sequence)."""
    return call_inputs(spec, inputs, batch=layout.batch, nq=0, nk=0, device=device)


def packed_strides(prefix: str, t: torch.Tensor) -> dict:
    """stride_<prefix>b, h, n, d of a packed (total, H, D) tensor: b is 0 (the kernels move their
    pointers to each sequence's first row)."""
    sn, sh, sd = t.stride()
    return {f"stride_{prefix}b": 0, f"stride_{prefix}h": sh, f"stride_{prefix}n": sn, f"stride_{prefix}d": sd}


def _layout_key(layout: VarlenLayout) -> tuple:
    return (layout.cu_q, layout.cu_k)


class VarlenLauncher(SoftmaxLauncher):
    """Runs the varlen forward kernel of one spec."""

    def __init__(self, generated):
        super().__init__(generated)
        self._work = ShapeTables()

    def work(self, layout: VarlenLayout, block_m: int, block_n: int, *, key_major: bool, device):
        key = (_layout_key(layout), block_m, block_n, key_major, device)
        return self._work.get_or_build(key, lambda: work_tables(
            self.spec, layout, block_m, block_n, key_major=key_major,
            with_lists=self.iteration == "lists", device=device))

    def random_arguments(self, layout: VarlenLayout, device) -> dict:
        """The random predicates' joined tables and per-sequence rows (none without random masks)."""
        if not self.tables:
            return {}
        return self._work.get_or_build((_layout_key(layout), "random", device), lambda: random_tables_per_sequence(
            self.spec, self.tables, layout, device))

    def aot_arguments(self, dtype: torch.dtype, n: int, nk: int, batch: int = 1):
        """cfg → the launch of a packed batch of `batch` sequences of n queries and nk keys each,
        on meta tensors (no data, no GPU)."""
        spec = self.spec
        q = meta_tensor(batch * n, spec.query_heads, spec.head_dim, dtype=dtype)
        k = meta_tensor(batch * nk, spec.kv_heads, spec.head_dim, dtype=dtype)
        v = meta_tensor(batch * nk, spec.kv_heads, spec.v_head_dim, dtype=dtype)
        layout = VarlenLayout(tuple(range(0, batch * n + 1, n)), tuple(range(0, batch * nk + 1, nk)))
        inputs = {d.name: meta_tensor(*d.sizes({"B": batch, "Hq": spec.query_heads, "Hkv": spec.kv_heads}),
                                      dtype=torch.float32) for d in spec.all_inputs}
        return self._varlen_arguments(q, k, v, layout, inputs, interpret=False, cu_device="cpu")

    def forward(self, q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None, max_seqlen_k=None,
                inputs: dict | None = None, config: TileConfig | None = None):
        """(out (total_q, Hq, Dv), lse (Hq, total_q) float32)."""
        spec = self.spec
        layout = check_varlen(spec, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        inputs = varlen_inputs(spec, inputs, layout, q.device)
        interpret = architecture(q.device) is None
        arguments = self._varlen_arguments(q, k, v, layout, inputs, interpret=interpret,
                                           cu=(cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()))
        cfg = config or self._varlen_config(q, arguments)
        grid, args, num_warps, num_stages = arguments(cfg)
        poison(args["out"], args["lse"], interpreted=interpret)
        if grid[1]:
            self.launch("fwd", grid, args, num_warps=num_warps, num_stages=num_stages, interpret=interpret)
        return args["out"], args["lse"]

    def _varlen_config(self, q, arguments) -> TileConfig:
        arch = architecture(q.device)
        candidates = candidate_configs(self.spec.head_dim, q.dtype, arch)
        if arch is None:
            return candidates[0]
        return self.launch_choice((arch, q.dtype), "fwd", candidates, arguments,
                                  f"{self.generated.kernel_name} on {arch}/{q.dtype}")

    def _varlen_arguments(self, q, k, v, layout: VarlenLayout, inputs: dict, *, interpret: bool,
                          cu=None, cu_device=None):
        """cfg → (grid, keyword arguments, num_warps, num_stages) of this call's launch."""
        spec = self.spec
        cu_q, cu_k = cu or (torch.tensor(layout.cu_q, dtype=torch.int32, device=cu_device),
                            torch.tensor(layout.cu_k, dtype=torch.int32, device=cu_device))
        table_device = q.device if cu is not None else cu_device

        def arguments(cfg: TileConfig):
            tables = self.work(layout, cfg.block_m, cfg.block_n, key_major=False, device=table_device)
            out = torch.empty((q.shape[0], spec.query_heads, spec.v_head_dim), dtype=q.dtype, device=q.device)
            lse = torch.empty((spec.query_heads, q.shape[0]), dtype=torch.float32, device=q.device)
            alibi = self.alibi(q.device)
            args = dict(q=q, k=k, v=v, out=out, lse=lse, alibi_slopes=out if alibi is None else alibi,
                        **sink_arg(spec, inputs), **formula_args(self.signatures["fwd"], inputs),
                        tile_counts=out, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                        work_table=tables.work, total_q=q.shape[0], num_query_heads=spec.query_heads,
                        **self.random_arguments(layout, table_device),
                        **block_list_args(tables.lists), **segment_args((), out),
                        **packed_strides("q", q), **packed_strides("k", k), **packed_strides("v", v),
                        **packed_strides("o", out),
                        **self.constexprs(cfg, q.dtype, even_k=False, interpreted=interpret))
            return (spec.query_heads, tables.size), args, cfg.num_warps, cfg.num_stages
        return arguments


class VarlenBackwardLauncher(BackwardLauncher):
    """Runs the three varlen backward kernels of one spec."""

    def __init__(self, generated):
        super().__init__(generated)
        self._work = ShapeTables()
        self._lse_index = ShapeTables()

    work = VarlenLauncher.work
    random_arguments = VarlenLauncher.random_arguments

    def aot_arguments(self, dtype: torch.dtype, n: int, nk: int, batch: int = 1):
        spec = self.spec
        q = meta_tensor(batch * n, spec.query_heads, spec.head_dim, dtype=dtype)
        out, dout = (meta_tensor(batch * n, spec.query_heads, spec.v_head_dim, dtype=dtype) for _ in range(2))
        k = meta_tensor(batch * nk, spec.kv_heads, spec.head_dim, dtype=dtype)
        v = meta_tensor(batch * nk, spec.kv_heads, spec.v_head_dim, dtype=dtype)
        lse = meta_tensor(spec.query_heads * batch * n, dtype=torch.float32)
        layout = VarlenLayout(tuple(range(0, batch * n + 1, n)), tuple(range(0, batch * nk + 1, nk)))
        inputs = {d.name: meta_tensor(*d.sizes({"B": batch, "Hq": spec.query_heads, "Hkv": spec.kv_heads}),
                                      dtype=torch.float32) for d in spec.all_inputs}
        return self._varlen_arguments(q, k, v, out, lse, dout, layout, inputs, interpret=False, cu_device="cpu")

    def backward(self, q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None,
                 max_seqlen_k=None, inputs: dict | None = None, config: BackwardConfig | None = None):
        """(dq, dk, dv, *d(each grad input)), dq, dk, dv like their inputs."""
        spec = self.spec
        layout = check_varlen(spec, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        _check_varlen_saved(spec, q, out, lse, dout)
        inputs = varlen_inputs(spec, inputs, layout, q.device)
        interpret = architecture(q.device) is None
        blocked = self.blocked_lse(lse, layout)
        arguments, (dq, dk, dv, *extra) = self._varlen_arguments(
            q, k, v, out, blocked, dout.to(q.dtype), layout, inputs, interpret=interpret,
            cu=(cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()))
        cfg = config or self.launch_config(spec.head_dim, q.dtype, q.device, arguments)
        poison(dq, dk, dv, interpreted=interpret)
        for role, tiles in self.role_tiles(cfg).items():        # preprocess (delta), dK/dV, dQ
            grid, args, num_warps, num_stages = arguments(role)(tiles)
            if grid[0]:
                self.launch(role, grid, args, num_warps=num_warps, num_stages=num_stages, interpret=interpret)
        return (dq, dk, dv, *self.input_gradients(extra))

    def blocked_lse(self, lse: torch.Tensor, layout: VarlenLayout) -> torch.Tensor:
        """The forward's lse (Hq, total_q) in the backward kernels' per-sequence layout."""
        heads = self.spec.query_heads
        index = self._lse_index.get_or_build((_layout_key(layout), lse.device),
                                             lambda: blocked_lse_index(layout, heads, lse.device))
        blocked = torch.empty(heads * layout.total_q, dtype=torch.float32, device=lse.device)
        blocked[index.reshape(-1)] = lse.to(torch.float32).reshape(-1)
        return blocked

    def input_gradients(self, partials) -> tuple:
        if not self.spec.sink:
            return ()
        (sink_partials,) = partials                                  # (Hq, preprocess programs)
        return (sink_partials.sum(dim=1),)

    def _varlen_arguments(self, q, k, v, out, lse, dout, layout: VarlenLayout, inputs: dict, *,
                          interpret: bool, cu=None, cu_device=None):
        """(role → (tiles → (grid, keyword arguments, num_warps, num_stages)), (dq, dk, dv[, sink
        partials])) of this call."""
        spec = self.spec
        cu_q, cu_k = cu or (torch.tensor(layout.cu_q, dtype=torch.int32, device=cu_device),
                            torch.tensor(layout.cu_k, dtype=torch.int32, device=cu_device))
        table_device = q.device if cu is not None else cu_device
        dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
        delta, lse2 = torch.empty((2, spec.query_heads * layout.total_q), dtype=torch.float32, device=q.device)
        pre = self.preprocess_tiles()
        pre_work = self.work(layout, pre.block_m, pre.block_n, key_major=False, device=table_device)
        sink = {}
        if spec.sink:       # one share of d(sink) per preprocess program, every one written
            partials = torch.empty((spec.query_heads, pre_work.size), dtype=torch.float32, device=q.device)
            sink = dict(sink_partials=partials, **sink_arg(spec, inputs))
        varlen = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)

        def arguments(role: str):
            def at(tiles: TileConfig):
                constexprs = self.role_constexprs(role, tiles, q.dtype, even_k=False, even_m=False,
                                                  interpreted=interpret)
                if role == "preprocess":
                    return ((pre_work.size, spec.query_heads), dict(
                        out=out, dout=dout, lse=lse, delta=delta, lse2=lse2, num_query_heads=spec.query_heads,
                        **sink, **varlen,
                        work_table=pre_work.work, **packed_strides("o", out), **packed_strides("do", dout),
                        **constexprs), tiles.num_warps, tiles.num_stages)
                alibi = self.alibi(q.device)
                common = dict(q=q, k=k, v=v, dout=dout, lse2=lse2, delta=delta, **varlen,
                              alibi_slopes=lse2 if alibi is None else alibi, **segment_args((), q),
                              **formula_args(self.signatures["dq"], inputs),
                              **self.random_arguments(layout, table_device),
                              **packed_strides("q", q), **packed_strides("k", k), **packed_strides("v", v),
                              **packed_strides("do", dout), **constexprs)
                key_major = role == "dkdv"
                tables = self.work(layout, tiles.block_m, tiles.block_n, key_major=key_major, device=table_device)
                if key_major:
                    return ((tables.size, spec.kv_heads), dict(
                        common, dk=dk, dv=dv, num_kv_heads=spec.kv_heads, work_table=tables.work,
                        **block_list_args(tables.lists, "by_key_"), **packed_strides("dk", dk),
                        **packed_strides("dv", dv)), tiles.num_warps, tiles.num_stages)
                return ((tables.size, spec.query_heads), dict(
                    common, dq=dq, num_query_heads=spec.query_heads, work_table=tables.work,
                    **block_list_args(tables.lists), **packed_strides("dq", dq)), tiles.num_warps, tiles.num_stages)
            return at
        return arguments, (dq, dk, dv, *([sink["sink_partials"]] if sink else []))


def _check_varlen_saved(spec: Spec, q, out, lse, dout) -> None:
    want = (q.shape[0], spec.query_heads, spec.v_head_dim)
    for name, t in (("out", out), ("dout", dout)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
            raise ShapeError(f"{name} has shape {tuple(getattr(t, 'shape', ()))}, expected {want} "
                             "(total_q, Hq, Dv)")
    want = (spec.query_heads, q.shape[0])
    if not isinstance(lse, torch.Tensor) or tuple(lse.shape) != want:
        raise ShapeError(f"lse has shape {tuple(getattr(lse, 'shape', ()))}, expected (Hq, total_q) = {want}")
    for name, t in (("out", out), ("lse", lse), ("dout", dout)):
        if t.device != q.device:
            raise ShapeError(f"{name} is on {t.device}, expected q's device {q.device}")
