"""Launching the generated backward kernels: `BackwardLauncher`, and the float64 reference path.

Three launches (templates/bwd.py.jinja): the delta preprocess over query tiles, the key-major dK/dV
kernel over (key tile, batch * kv head) — each program loops over the GROUP query heads of its kv
head and sums their dK, dV in registers, so nothing is atomic and the result is deterministic — and
the query-major dQ kernel over (query tile, batch * query head). Masks that are not intervals walk
block-map lists: the forward's map (rows = query tiles) for dQ, its `transposed()` map (rows = key
tiles) for dK/dV, each at its kernel's tile sizes.

float64 inputs (for `torch.autograd.gradcheck`) take a reference-precision path: the kernels take
float16, bfloat16 and float32 only, so the forward is `attngen.reference` and the gradients are
torch autograd through the same dense float64 computation (`reference._softmax_reference`, which
`attngen.reference` wraps after detaching its inputs), with no generated kernel involved.
"""
from __future__ import annotations

import torch

from ..analysis.configs import TileConfig
from ..analysis.lowering_backward import (ROLES, BackwardConfig, candidate_backward_configs,
                                          default_backward_config, preprocess_rows)
from ..codegen.aot import CompiledKernels, resource_usage
from ..codegen.emit import GeneratedKernel
from ..errors import ShapeError
from ..reference import _softmax_reference, reference
from ..spec import Spec, resolve_k_offset, resolve_q_offset
from .launch import (ShapeTables, SoftmaxLauncher, block_list_args, block_map_lists, check_inputs,
                     meta_inputs, out_shape, random_table_args, segment_args, stride_args)
from .inputs import call_inputs, formula_args, grad_inputs, sink_arg
from .launcher import AOT_LENGTH, architecture, cdiv, dot_precision, meta_tensor, poison


def reference_forward(spec: Spec, q, k, v, *, q_offset=None, seg_q=None, seg_k=None, inputs=None):
    """(out, lse) of the float64 reference: the forward of the reference-precision path."""
    return reference(spec, q, k, v, q_offset=q_offset, seg_q=seg_q, seg_k=seg_k, **(inputs or {}))


def reference_gradients(spec: Spec, q, k, v, dout, *, q_offset=None, seg_q=None, seg_k=None, inputs=None):
    """(dq, dk, dv, *d(each grad input)) by torch autograd through the float64 reference, each in
    its tensor's dtype. K and V are repeated per query head inside the graph, so autograd sums dK,
    dV over each group."""
    inputs = call_inputs(spec, inputs, batch=q.shape[0], nq=q.shape[2], nk=k.shape[2], device=q.device,
                         float64=True)
    with torch.enable_grad():
        leaves = [t.detach().to(torch.float64).requires_grad_(True) for t in (q, k, v)]
        leaves += [inputs[d.name].detach().to(torch.float64).requires_grad_(True) for d in grad_inputs(spec)]
        q64, k64, v64 = leaves[:3]
        given = {**inputs, **{d.name: t for d, t in zip(grad_inputs(spec), leaves[3:])}}
        out, _ = _softmax_reference(spec, q64, k64.repeat_interleave(spec.group, dim=1),
                                    v64.repeat_interleave(spec.group, dim=1), q_offset, seg_q, seg_k, given)
        grads = torch.autograd.grad(out, leaves, dout.to(torch.float64), allow_unused=True)
    like = (q, k, v, *(inputs[d.name] for d in grad_inputs(spec)))
    return tuple(torch.zeros_like(t) if g is None else g.to(t.dtype) for g, t in zip(grads, like))


class BackwardLauncher(SoftmaxLauncher):
    """Runs one generated backward source (three kernels); caches per-shape tables."""

    def __init__(self, generated: GeneratedKernel):
        super().__init__(generated)
        self._by_key_cache = ShapeTables()

    def config(self, head_dim: int, dtype: torch.dtype, device: torch.device) -> BackwardConfig:
        arch = architecture(device)
        if arch is None:
            return default_backward_config(head_dim, dtype, None, fit=self.fit)
        return self.spill_free_config(arch, dtype)

    def spill_free_config(self, target: str, dtype: torch.dtype, *, n: int = AOT_LENGTH,
                          nk: int | None = None) -> BackwardConfig:
        """Without a GPU: per tile-walking kernel, the first candidate whose kernel, compiled for
        `target` as a launch at Nq = `n`, Nk = `nk` (default n) compiles it, has no spills (where
        every candidate spills, the one that spills least); decided once per (kernel, target,
        dtype, n, nk), as the forward's (`SoftmaxLauncher.spill_free_config`)."""
        arguments, _ = self.aot_arguments(dtype, n, nk or n)
        return BackwardConfig(*(self.choose(
            (role, target, dtype, n, nk or n), candidate_backward_configs(self.spec.head_dim, dtype, target, role, fit=self.fit),
            lambda cfg, role=role: resource_usage(self.compile_launch(role, target, arguments(role), cfg)),
            f"{self.signatures[role].name} on {target}/{dtype}") for role in ROLES))

    def aot_arguments(self, dtype: torch.dtype, n: int, nk: int, batch: int = 1):
        """role → (tiles → the launch of a call at these sizes), on meta tensors; a segments spec
        gets one document."""
        spec = self.spec
        q = meta_tensor(batch, spec.query_heads, n, spec.head_dim, dtype=dtype)
        out, dout = (meta_tensor(batch, spec.query_heads, n, spec.v_head_dim, dtype=dtype) for _ in range(2))
        k = meta_tensor(batch, spec.kv_heads, nk, spec.head_dim, dtype=dtype)
        v = meta_tensor(batch, spec.kv_heads, nk, spec.v_head_dim, dtype=dtype)
        lse = meta_tensor(batch, spec.query_heads, n, dtype=torch.float32)
        segments = ((torch.zeros(n, dtype=torch.int32), torch.zeros(nk, dtype=torch.int32))
                    if spec.uses_segments else (None, None))
        return self._arguments_at(q, k, v, out, lse, dout, nk - n, *segments, interpret=False,
                                  inputs=meta_inputs(spec, batch, n, nk))

    def by_key_lists(self, nq, nk, q_offset, cfg, device, seg_q, seg_k, keys: tuple = (0, None)) -> tuple:
        """The transposed block map's CSR lists at the key-major tile sizes (non-interval masks);
        `keys`: (k_offset, total_nk) of a chunk pair."""
        if self.iteration != "lists" or self.reads is not None:      # scalar reads: `set_lists`
            return ()
        k_offset, total_nk = keys
        if self.spec.uses_segments:          # built from this call's ids, never kept
            return block_map_lists(self.spec, nq, nk, q_offset, cfg, device, seg_q, seg_k, transposed=True,
                                   k_offset=k_offset, total_nk=total_nk)
        key = (nq, nk, q_offset, keys, cfg.block_m, cfg.block_n, device)
        return self._by_key_cache.get_or_build(key, lambda: block_map_lists(
            self.spec, nq, nk, q_offset, cfg, device, transposed=True, k_offset=k_offset, total_nk=total_nk))

    def role_tiles(self, cfg: BackwardConfig) -> dict:
        """{role: TileConfig} of the three kernels (the preprocess streams `preprocess_rows` rows)."""
        return {"preprocess": self.preprocess_tiles(), "dkdv": cfg.key_major, "dq": cfg.query_major}

    def preprocess_tiles(self) -> TileConfig:
        """The delta preprocess's rows per program (its block_n is unused): it streams out and dO,
        of the value head dim."""
        return TileConfig(preprocess_rows(self.spec.v_head_dim), 16, 4, 1)

    @staticmethod
    def role_constexprs(role: str, tiles: TileConfig, dtype: torch.dtype, *, even_k: bool, even_m: bool,
                        interpreted: bool) -> dict:
        """The constexpr arguments of one kernel at its tiles; even_k / even_m: nk / nq a multiple
        of the tile's keys / query rows (no ragged last tile)."""
        if role == "preprocess":
            return dict(BLOCK_M=tiles.block_m)
        out = dict(BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, DOT_PRECISION=dot_precision(dtype),
                   UPCAST_DOT=interpreted and dtype == torch.bfloat16)
        return {**out, "EVEN_K": even_k} if role == "dq" else {**out, "EVEN_M": even_m}

    def compile_for(self, target: str, dtype: torch.dtype, config: BackwardConfig | None = None, *,
                    n: int = AOT_LENGTH, nk: int | None = None):
        """The three kernels compiled for a GPU `target` as a launch at Nq = `n`, Nk = `nk`
        (default n) compiles them; no GPU needed."""
        cfg = config or self.spill_free_config(target, dtype, n=n, nk=nk)
        arguments, _ = self.aot_arguments(dtype, n, nk or n)
        return CompiledKernels({role: self.compile_launch(role, target, arguments(role), tiles)
                                 for role, tiles in self.role_tiles(cfg).items()})

    def launch_config(self, head_dim: int, dtype: torch.dtype, device: torch.device, arguments) -> BackwardConfig:
        """Off a GPU: `config`. On a GPU, per tile-walking kernel, the first candidate with no
        spills when compiled for this call's arguments (`arguments(role)(tiles)`), decided once per
        (kernel, architecture, dtype); the launch then runs the kernels the search compiled."""
        arch = architecture(device)
        if arch is None:
            return self.config(head_dim, dtype, device)
        chosen = {role: self.launch_choice(
            (role, arch, dtype), role, candidate_backward_configs(head_dim, dtype, arch, role, fit=self.fit),
            arguments(role),
            f"{self.signatures[role].name} on {arch}/{dtype}") for role in ROLES}
        return BackwardConfig(chosen["dkdv"], chosen["dq"])

    def backward(self, q, k, v, out, lse, dout, *, q_offset=None, seg_q=None, seg_k=None,
                 inputs: dict | None = None, config: BackwardConfig | None = None, k_offset: int = 0,
                 total_nk: int | None = None, total_nq: int | None = None, lists=None):
        """(dq, dk, dv, *d(each grad input)): dq, dk, dv like their inputs (shape, dtype,
        strides); then the gradient of each input with `grad` (the sink's too), float32, in
        declared order (`inputs.grad_inputs`). k_offset / total_nk: a chunk pair
        (`SoftmaxLauncher.forward`); with the whole rows' out and lse, these are the chunk pair's
        exact shares of the whole sequence's gradients."""
        spec = self.spec
        check_inputs(spec, q, k, v)
        _check_saved(spec, q, out, lse, dout)
        batch, _, nq, head_dim = q.shape
        nk = k.shape[2]
        keys = resolve_k_offset(nk, k_offset, total_nk)
        q_offset = resolve_q_offset(nq, nk, q_offset, keys[0])
        inputs = call_inputs(spec, inputs, batch=batch, nq=nq if total_nq is None else total_nq,
                             nk=nk if total_nk is None else total_nk, device=q.device)
        interpret = architecture(q.device) is None
        if nq == 0 or nk == 0:     # no pair at all: every gradient is 0
            return tuple(torch.zeros_like(t) for t in (q, k, v, *(inputs[d.name] for d in grad_inputs(spec))))
        arguments, (dq, dk, dv, *extra) = self._arguments_at(q, k, v, out, lse.to(torch.float32).contiguous(),
                                                             dout.to(q.dtype), q_offset, seg_q, seg_k,
                                                             interpret=interpret, inputs=inputs, keys=keys,
                                                             lists=lists)
        cfg = config or self.launch_config(head_dim, q.dtype, q.device, arguments)
        poison(dq, dk, dv, interpreted=interpret)
        for role, tiles in self.role_tiles(cfg).items():        # preprocess (delta), dK/dV, dQ
            grid, args, num_warps, num_stages = arguments(role)(tiles)
            self.launch(role, grid, args, num_warps=num_warps, num_stages=num_stages, interpret=interpret)
        return (dq, dk, dv, *self.input_gradients(extra))

    def input_gradients(self, partials) -> tuple:
        """Each grad input's gradient from its per-program partial sums, summed in a fixed order
        (torch's reduction of a fixed shape: deterministic, no atomics); in declared order. A grad
        input the score does not read (or reads only through the mask) gets zeros."""
        *sink_partials, (buffers, given) = partials
        out = []
        for decl in grad_inputs(self.spec):
            if decl.name == "sink" and self.spec.sink:
                out.append(sink_partials[0].sum(dim=(0, 2)))         # (B, Hq, preprocess programs)
            elif decl.name in buffers:                               # (dQ programs, elements)
                out.append(buffers[decl.name].sum(dim=0).view(given[decl.name].shape))
            else:
                out.append(torch.zeros(given[decl.name].shape, dtype=torch.float32, device=given[decl.name].device))
        return tuple(out)

    def _arguments_at(self, q, k, v, out, lse, dout, q_offset, seg_q, seg_k, *, interpret: bool, inputs: dict,
                      keys: tuple = (0, None), lists=None):
        """(role → (tiles → (grid, keyword arguments, num_warps, num_stages)), (dq, dk, dv)) of
        this call: the gradients, delta and lse2 allocated once, each kernel's launch at any tiles. The
        configuration search compiles exactly these launches."""
        spec = self.spec
        batch, _, nq, _ = q.shape
        nk = k.shape[2]
        dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))         # each in its input's layout
        selection = lists if lists is not None else self.select(q, k, q_offset, seg_q, seg_k, keys)  # the forward's
        # Written by the preprocess, read by the loops: rowsum(dO * O), and the lse in log2 units
        # with +inf for rows that saw no key (the loops load it with no select).
        delta, lse2 = torch.empty((2, batch, spec.query_heads, nq), dtype=torch.float32, device=q.device)
        # The dQ kernel's per-program gradient buffers of the grad inputs its score reads.
        buffers = {name[len("d_in_"):]: None for name in self.signatures["dq"].names if name.startswith("d_in_")}
        sink = {}
        if spec.sink:      # one share of d(sink) per preprocess program, every one written
            programs = cdiv(nq, self.preprocess_tiles().block_m)
            partials = torch.empty((batch, spec.query_heads, programs), dtype=torch.float32, device=q.device)
            sink = dict(sink_partials=partials, **sink_arg(spec, inputs))

        def arguments(role: str):
            def at(tiles: TileConfig):
                constexprs = self.role_constexprs(role, tiles, q.dtype, even_k=nk % tiles.block_n == 0,
                                                  even_m=nq % tiles.block_m == 0,
                                                  interpreted=interpret)
                if role == "preprocess":
                    return ((cdiv(nq, tiles.block_m), batch * spec.query_heads), dict(
                        out=out, dout=dout, lse=lse, delta=delta, lse2=lse2, nq=nq,
                        num_query_heads=spec.query_heads, **sink,
                        **stride_args("o", out), **stride_args("do", dout), **constexprs),
                        tiles.num_warps, tiles.num_stages)
                # dK/dV walks the transposed map (`by_key_lists`), not the forward's lists
                tables = self.call_tables(nq, nk, q_offset, tiles if role == "dq" else None, q.device, seg_q, seg_k,
                                          batch=batch, keys=keys)
                common = dict(q=q, k=k, v=v, dout=dout, lse2=lse2, delta=delta, nq=nq, nk=nk, q_offset=q_offset,
                              k_offset=keys[0],
                              alibi_slopes=lse2 if tables.alibi is None else tables.alibi,
                              **random_table_args(self.tables, tables.random), **segment_args(tables.segments, q),
                              **formula_args(self.signatures["dq"], inputs),
                              **stride_args("q", q), **stride_args("k", k), **stride_args("v", v),
                              **stride_args("do", dout), **constexprs)
                if role == "dkdv":
                    by_key = (selection.lists(tiles.block_m, tiles.block_n, by_key=True) if selection is not None
                              else self.set_lists(nq, nk, q_offset, tiles, q.device, inputs, batch=batch, keys=keys,
                                                  transposed=True)
                              or self.by_key_lists(nq, nk, q_offset, tiles, q.device, seg_q, seg_k, keys))
                    return ((cdiv(nk, tiles.block_n), batch * spec.kv_heads), dict(
                        common, dk=dk, dv=dv, num_kv_heads=spec.kv_heads, **block_list_args(by_key, "by_key_"),
                        **stride_args("dk", dk), **stride_args("dv", dv)), tiles.num_warps, tiles.num_stages)
                grid = (cdiv(nq, tiles.block_m), batch * spec.query_heads)
                for name in buffers:     # zeroed: each dQ program adds its share to its own row
                    buffers[name] = torch.zeros((grid[0] * grid[1], inputs[name].numel()), dtype=torch.float32,
                                                device=q.device)
                lists = (selection.lists(tiles.block_m, tiles.block_n) if selection is not None else
                         self.set_lists(nq, nk, q_offset, tiles, q.device, inputs, batch=batch, keys=keys)
                         or tables.lists)
                return (grid, dict(
                    common, dq=dq, num_query_heads=spec.query_heads, **block_list_args(lists),
                    **stride_args("dq", dq), **{f"d_in_{name}": t for name, t in buffers.items()}),
                    tiles.num_warps, tiles.num_stages)
            return at
        return arguments, (dq, dk, dv, *([sink["sink_partials"]] if sink else []), (buffers, inputs))


def _check_saved(spec: Spec, q, out, lse, dout) -> None:
    """The forward's saved tensors and the incoming gradient must fit q: (B, Hq, Nq, Dv)."""
    want = out_shape(spec, q)
    for name, t in (("out", out), ("dout", dout)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
            raise ShapeError(f"{name} has shape {tuple(getattr(t, 'shape', ()))}, expected {want} "
                             "(q's (B, Hq, Nq) and the value head dim)")
    want = (q.shape[0], spec.query_heads, q.shape[2])
    if not isinstance(lse, torch.Tensor) or tuple(lse.shape) != want:
        raise ShapeError(f"lse has shape {tuple(getattr(lse, 'shape', ()))}, expected (B, Hq, Nq) = {want}")
    for name, t in (("out", out), ("lse", lse), ("dout", dout)):
        if t.device != q.device:
            raise ShapeError(f"{name} is on {t.device}, expected q's device {q.device}")
