"""Launching the generated linear-attention kernels: `LinearLauncher` and the float64 reference path.

The chunked algorithm of flash-linear-attention, split into passes (templates/linear_*.py.jinja):

forward   states  per (batch, kv head), sequential over key chunks: S, z (and favor's running
                  maximum) before every chunk and after the last, into float32 buffers;
                  non-causal: only the final state
          main    per (query tile, batch * query head), in parallel: the stored state before the
                  tile's chunk plus the chunk's masked quadratic form (tail rows: the final state)
backward  states  as above (recomputed: autograd saves only q, k, v, out)
          dq      per (query tile, batch * query head): dq, and per row 1/den, dden, favor's M_r
          reverse per (batch, kv head), sequential from the last chunk: G = sum phi(q) dnum^T,
                  g = sum phi(q) dden over the rows after every chunk (all GROUP heads)
          main    per (key chunk, batch * kv head): dk, dv from G, g and the chunk's own rows

Every program writing a kv head's values owns that kv head, so GQA sums need no atomics and the
results are deterministic. Memory besides q, k, v and the outputs: per (batch, kv head) the
chunk states, (Nk / chunk + 1) · m · D float32 for causal specs and m · D for non-causal ones,
plus per query row a few float32 values; never Nq × Nk.

CPU tensors run under Triton's interpreter (outputs poisoned with NaN first, so an element a
kernel forgets fails the tests); CUDA tensors run compiled. float64 inputs take the reference
path (torch autograd through `attngen.reference_linear`), for `torch.autograd.gradcheck`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..analysis.lowering_linear import ChunkConfig, chunk_config
from ..codegen.aot import CompiledKernels
from ..codegen.emit import GeneratedKernel
from ..errors import ShapeError
from ..reference import check_qkv
from ..reference_linear import linear_reference
from ..spec import Spec, resolve_q_offset
from ..spec.feature_maps import favor_features
from .launch import check_inputs, stride_args
from .launcher import AOT_LENGTH, KernelLauncher, architecture, cdiv, dot_precision, meta_tensor, poison


@dataclass(frozen=True)
class ChunkSpan:
    """How the rows and keys of one call split into chunks of `chunk` positions (causal specs).

    Rows ``0 .. zero_rows - 1`` sit before key 0 and see nothing (output 0). Chunk c holds keys
    ``c*chunk ..`` and the rows at those positions (row = position - q_offset); the chunks
    ``0 .. num_chunks - 1`` hold every key some row can see, and ``first_chunk ..`` are those
    holding rows. Rows ``tail_start ..`` come after the last chunk and see every key. Non-causal
    specs: every row is a tail row, and only the final state is kept (one slot).
    """

    chunk: int
    zero_rows: int
    first_chunk: int
    num_chunks: int
    tail_start: int
    num_slots: int

    def row_tiles(self, nq: int) -> int:
        """Programs of a row pass: zero tiles, chunk tiles, tail tiles."""
        tail = max(nq - self.tail_start, 0)
        return (cdiv(self.zero_rows, self.chunk) + self.num_chunks - self.first_chunk
                + cdiv(tail, self.chunk))

    @property
    def row_args(self) -> tuple[int, int, int, int]:
        return self.zero_rows, self.first_chunk, self.num_chunks, self.tail_start


def stages_of(role: str, num_stages: int) -> int:
    """Pipeline stages of one kernel: the state pass is one sequential reduction whose loop carries
    the state, and prefetching its next chunk only adds registers; the others follow the config."""
    return 1 if role == "states" else num_stages


def chunk_span(causal: bool, nq: int, nk: int, q_offset: int, chunk: int) -> ChunkSpan:
    if not causal:
        num_chunks = cdiv(nk, chunk)
        return ChunkSpan(chunk, 0, num_chunks, num_chunks, 0, 1)
    zero_rows = min(max(-q_offset, 0), nq)
    num_chunks = cdiv(max(min(nk, q_offset + nq), 0), chunk)
    first_chunk = min(max(q_offset, 0) // chunk, num_chunks)
    tail_start = max(num_chunks * chunk - q_offset, zero_rows)
    return ChunkSpan(chunk, zero_rows, first_chunk, num_chunks, tail_start, num_chunks + 1)


class LinearLauncher(KernelLauncher):
    """The generated forward (`kind` linear_fwd) or backward (linear_bwd) kernels of a linear spec."""

    def __init__(self, generated: GeneratedKernel):
        if generated.spec.kind != "linear":
            raise ValueError(f"spec {generated.spec.name!r} is {generated.spec.kind} attention, not linear")
        super().__init__(generated)
        self.kernel_kind = "fwd" if generated.kind == "linear_fwd" else "bwd"
        self.block_d, self.block_f = self.graph.facts["block_d"], self.graph.facts["block_f"]
        self._features: dict = {}
        self._recorder = None

    def features(self, device: torch.device) -> torch.Tensor:
        """favor's W as float32 (m, D) on `device`; a 1-element placeholder for other maps."""
        if device not in self._features:
            if self.spec.feature_map.name == "favor":
                w = favor_features(self.spec).to(torch.float32).contiguous()
            else:
                w = torch.zeros(1, dtype=torch.float32)
            self._features[device] = w.to(device)
        return self._features[device]

    def config(self, device: torch.device, dtype: torch.dtype = torch.float16) -> ChunkConfig:
        return chunk_config(self.block_d, self.block_f, architecture(device), self.kernel_kind, dtype)

    @staticmethod
    def constexprs(cfg: ChunkConfig, dtype: torch.dtype) -> dict:
        # Tiles are float32 in registers whatever the input dtype (loads widen them): products
        # run as tf32 on tensor cores for 16-bit inputs, exactly for float32 inputs. No bfloat16
        # operand ever reaches tl.dot, so the interpreter's bfloat16 dot problem does not arise.
        return dict(CHUNK=cfg.chunk, DOT_PRECISION=dot_precision(dtype))

    def span(self, nq: int, nk: int, q_offset: int, chunk: int) -> ChunkSpan:
        return chunk_span(self.spec.causal, nq, nk, q_offset, chunk)

    def _run(self, role: str, grid, args: dict, cfg: ChunkConfig, dtype, interpret: bool) -> None:
        launch = (grid, {**args, **self.constexprs(cfg, dtype)}, cfg.num_warps, stages_of(role, cfg.num_stages))
        if self._recorder is not None:          # compile_for: the launch, compiled instead of run
            self._recorder(role, launch)
            return
        grid, args, num_warps, num_stages = launch
        self.launch(role, grid, args, num_warps=num_warps, num_stages=num_stages, interpret=interpret)

    def _states(self, k, v, span: ChunkSpan, cfg: ChunkConfig, interpret: bool):
        """The state pass: per (batch, kv head), the state before every chunk and after the last
        (causal), or only the final state (non-causal), in float32 buffers."""
        programs = k.shape[0] * self.spec.kv_heads
        slots = span.num_slots
        chunk_state = torch.empty((programs, slots, self.block_f, self.block_d), dtype=torch.float32,
                                  device=k.device)
        chunk_norm = torch.empty((programs, slots, self.block_f), dtype=torch.float32, device=k.device)
        chunk_max = torch.empty((programs, slots), dtype=torch.float32, device=k.device)
        self._run("states", (programs,), dict(
            k=k, v=v, features=self.features(k.device), chunk_state=chunk_state, chunk_norm=chunk_norm,
            chunk_max=chunk_max, **stride_args("k", k), **stride_args("v", v), nk=k.shape[2],
            num_kv_heads=self.spec.kv_heads, num_chunks=span.num_chunks, num_slots=slots),
            cfg, k.dtype, interpret)
        return chunk_state, chunk_norm, chunk_max

    # -- forward --------------------------------------------------------------------------------
    def forward(self, q, k, v, *, q_offset=None, config: ChunkConfig | None = None) -> torch.Tensor:
        spec = self.spec
        check_inputs(spec, q, k, v)
        batch, _, nq, _ = q.shape
        nk = k.shape[2]
        q_offset = resolve_q_offset(nq, nk, q_offset)
        interpret = architecture(q.device) is None
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        poison(out, interpreted=interpret)
        if nq == 0:
            return out
        if nk == 0:                                    # no key at all: every row is empty
            return out.zero_()
        cfg = config or self.config(q.device, q.dtype)
        span = self.span(nq, nk, q_offset, cfg.chunk)
        chunk_state, chunk_norm, chunk_max = self._states(k, v, span, cfg, interpret)
        self._run("main", (span.row_tiles(nq), batch * spec.query_heads), dict(
            q=q, k=k, v=v, out=out, features=self.features(q.device), chunk_state=chunk_state,
            chunk_norm=chunk_norm, chunk_max=chunk_max, **stride_args("q", q), **stride_args("k", k),
            **stride_args("v", v), **stride_args("o", out), nq=nq, nk=nk, q_offset=q_offset,
            num_query_heads=spec.query_heads, **self.row_args(span)), cfg, q.dtype, interpret)
        return out

    @staticmethod
    def row_args(span: ChunkSpan) -> dict:
        return dict(zero_rows=span.zero_rows, first_chunk=span.first_chunk, num_chunks=span.num_chunks,
                    tail_start=span.tail_start, num_slots=span.num_slots)

    # -- backward -------------------------------------------------------------------------------
    def backward(self, q, k, v, out, dout, *, q_offset=None, config: ChunkConfig | None = None):
        spec = self.spec
        check_inputs(spec, q, k, v)
        for name, t in (("out", out), ("dout", dout)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(q.shape):
                raise ShapeError(f"{name} has shape {tuple(getattr(t, 'shape', ()))}, expected q's "
                                 f"shape {tuple(q.shape)}")
            if t.device != q.device:
                raise ShapeError(f"{name} is on {t.device}, expected q's device {q.device}")
        dout = dout.to(q.dtype)
        out = out.to(q.dtype)
        batch, _, nq, _ = q.shape
        nk = k.shape[2]
        q_offset = resolve_q_offset(nq, nk, q_offset)
        interpret = architecture(q.device) is None
        grads = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v)]
        poison(*grads, interpreted=interpret)
        if nq == 0 or nk == 0:
            return tuple(g.zero_() for g in grads)
        dq, dk, dv = grads
        cfg = config or self.config(q.device, q.dtype)
        span = self.span(nq, nk, q_offset, cfg.chunk)
        features = self.features(q.device)
        chunk_state, chunk_norm, chunk_max = self._states(k, v, span, cfg, interpret)
        row_rden = torch.empty((batch, spec.query_heads, nq), dtype=torch.float32, device=q.device)
        row_dden = torch.empty_like(row_rden)
        row_max = torch.empty_like(row_rden) if spec.feature_map.name == "favor" else row_rden[:0]
        rows = dict(features=features, chunk_max=chunk_max, row_rden=row_rden, row_dden=row_dden)
        self._run("dq", (span.row_tiles(nq), batch * spec.query_heads), dict(
            rows, q=q, k=k, v=v, out=out, dout=dout, dq=dq, chunk_state=chunk_state, chunk_norm=chunk_norm,
            row_max=row_max, **stride_args("q", q), **stride_args("k", k), **stride_args("v", v),
            **stride_args("o", out), **stride_args("do", dout), **stride_args("dq", dq), nq=nq, nk=nk,
            q_offset=q_offset, num_query_heads=spec.query_heads, **self.row_args(span)), cfg, q.dtype, interpret)
        del chunk_state, chunk_norm
        programs = batch * spec.kv_heads
        grad_slots = span.num_chunks if spec.causal else 1
        grads = dict(
            grad_state=torch.empty((programs, grad_slots, self.block_f, self.block_d), dtype=torch.float32,
                                   device=q.device),
            grad_norm=torch.empty((programs, grad_slots, self.block_f), dtype=torch.float32, device=q.device),
            grad_max=torch.empty((programs, grad_slots), dtype=torch.float32, device=q.device))
        chunks = dict(first_chunk=span.first_chunk, num_chunks=span.num_chunks, num_slots=span.num_slots,
                      grad_slots=grad_slots, nq=nq, q_offset=q_offset, num_kv_heads=spec.kv_heads)
        self._run("reverse", (programs,), dict(
            rows, **grads, **chunks, q=q, dout=dout, row_max=row_max, tail_start=span.tail_start,
            **stride_args("q", q), **stride_args("do", dout)), cfg, q.dtype, interpret)
        self._run("main", (cdiv(nk, cfg.chunk), programs), dict(
            rows, **grads, **chunks, q=q, k=k, v=v, dout=dout, dk=dk, dv=dv, nk=nk,
            **stride_args("q", q), **stride_args("k", k), **stride_args("v", v), **stride_args("do", dout),
            **stride_args("dk", dk), **stride_args("dv", dv)), cfg, q.dtype, interpret)
        return dq, dk, dv

    # -- ahead of time ----------------------------------------------------------------------------
    def compile_for(self, target: str, dtype: torch.dtype, config: ChunkConfig | None = None, *,
                    n: int = AOT_LENGTH, nk: int | None = None) -> CompiledKernels:
        """Every kernel of the source compiled for `target` ('sm_80', 'sm_90') as the launches of
        a call at Nq = `n`, Nk = `nk` (default n) compile them: the call itself runs on meta
        tensors with each launch compiled instead of run (`aot.compile_as_launched`)."""
        cfg = config or chunk_config(self.block_d, self.block_f, target, self.kernel_kind, dtype)
        spec, nk = self.spec, nk or n
        q, dout = (meta_tensor(1, spec.query_heads, n, spec.head_dim, dtype=dtype) for _ in range(2))
        k, v = (meta_tensor(1, spec.kv_heads, nk, spec.head_dim, dtype=dtype) for _ in range(2))
        compiled = {}

        def record(role, launch):
            compiled[role] = self.compile_launch(role, target, lambda _: launch, cfg)
        self._recorder = record
        try:
            if self.kernel_kind == "fwd":
                self.forward(q, k, v, config=cfg)
            else:
                self.backward(q, k, v, q, dout, config=cfg)
        finally:
            self._recorder = None
        return CompiledKernels({role: compiled[role] for role in self.signatures})


def reference_forward(spec: Spec, q, k, v, q_offset):
    """out of the float64 reference (the reference-precision path of float64 inputs)."""
    with torch.no_grad():
        return _reference_path(spec, q, k, v, q_offset)


def reference_gradients(spec: Spec, q, k, v, dout, q_offset):
    """(dq, dk, dv) by torch autograd through the float64 reference."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        result = _reference_path(spec, *leaves, q_offset)
        return torch.autograd.grad(result, leaves, dout.to(torch.float64))


def _reference_path(spec: Spec, q, k, v, q_offset):
    check_qkv(spec, q, k, v)
    return linear_reference(spec, q, k.repeat_interleave(spec.group, dim=1),
                            v.repeat_interleave(spec.group, dim=1), q_offset=q_offset)
