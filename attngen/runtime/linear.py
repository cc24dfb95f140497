"""Launching the generated linear-attention kernels: `linear_forward`, `linear_backward`.

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
from typing import TYPE_CHECKING

import torch
import triton

from ..analysis.lowering_linear import ChunkConfig, chunk_config
from ..codegen.aot import CompiledKernels, compile_for_gpu
from ..codegen.plan_linear import kernel_names
from ..errors import ShapeError
from ..reference import check_qkv
from ..reference_linear import linear_reference
from ..spec import Spec, resolve_q_offset
from ..spec.feature_maps import favor_features
from . import cache
from .launch import architecture, check_inputs, dot_precision, poison
from .loader import interpreted, load_source

if TYPE_CHECKING:
    from .autograd import CompiledAttention


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
        return (triton.cdiv(self.zero_rows, self.chunk) + self.num_chunks - self.first_chunk
                + triton.cdiv(tail, self.chunk))

    @property
    def row_args(self) -> tuple[int, int, int, int]:
        return self.zero_rows, self.first_chunk, self.num_chunks, self.tail_start


def stages_of(role: str, num_stages: int) -> int:
    """Pipeline stages of one kernel: the state pass is one sequential reduction whose loop carries
    the state, and prefetching its next chunk only adds registers; the others follow the config."""
    return 1 if role == "states" else num_stages


def chunk_span(causal: bool, nq: int, nk: int, q_offset: int, chunk: int) -> ChunkSpan:
    if not causal:
        num_chunks = triton.cdiv(nk, chunk)
        return ChunkSpan(chunk, 0, num_chunks, num_chunks, 0, 1)
    zero_rows = min(max(-q_offset, 0), nq)
    num_chunks = triton.cdiv(max(min(nk, q_offset + nq), 0), chunk)
    first_chunk = min(max(q_offset, 0) // chunk, num_chunks)
    tail_start = max(num_chunks * chunk - q_offset, zero_rows)
    return ChunkSpan(chunk, zero_rows, first_chunk, num_chunks, tail_start, num_chunks + 1)


class LinearLauncher:
    """The generated forward and backward kernels of one linear spec, loaded on first use."""

    def __init__(self, spec: Spec):
        if spec.kind != "linear":
            raise ValueError(f"spec {spec.name!r} is {spec.kind} attention, not linear")
        self.spec = spec
        self._generated: dict = {}
        self._features: dict = {}

    def generated(self, kernel: str):
        """The fwd or bwd source, through the disk cache (`runtime.cache`)."""
        if kernel not in self._generated:
            self._generated[kernel] = cache.generated(self.spec, kernel)
        return self._generated[kernel]

    def kernel(self, kernel: str, role: str, device: torch.device):
        """A kernel function of the fwd/bwd source by role (main, state, dq), for this device."""
        gen = self.generated(kernel)
        fn = getattr(load_source(gen.source), kernel_names(gen.graph)[role])
        return interpreted(fn) if architecture(device) is None else fn

    def features(self, device: torch.device) -> torch.Tensor:
        """favor's W as float32 (m, D) on `device`; a 1-element placeholder for other maps."""
        key = str(device)
        if key not in self._features:
            if self.spec.feature_map.name == "favor":
                w = favor_features(self.spec).to(torch.float32).contiguous()
            else:
                w = torch.zeros(1, dtype=torch.float32)
            self._features[key] = w.to(device)
        return self._features[key]

    def config(self, device: torch.device, kernel: str = "fwd",
               dtype: torch.dtype = torch.float16) -> ChunkConfig:
        facts = self.generated(kernel).graph.facts
        return chunk_config(facts["block_d"], facts["block_f"], architecture(device), kernel, dtype)

    @staticmethod
    def constexprs(cfg: ChunkConfig, dtype: torch.dtype) -> dict:
        # Tiles are float32 in registers whatever the input dtype (loads widen them): products
        # run as tf32 on tensor cores for 16-bit inputs, exactly for float32 inputs. No bfloat16
        # operand ever reaches tl.dot, so the interpreter's bfloat16 dot problem does not arise.
        return dict(CHUNK=cfg.chunk, DOT_PRECISION=dot_precision(dtype))

    def span(self, nq: int, nk: int, q_offset: int, chunk: int) -> ChunkSpan:
        return chunk_span(self.spec.causal, nq, nk, q_offset, chunk)

    def _states(self, kernel: str, k, v, span: ChunkSpan, launch: dict):
        """The state pass: per (batch, kv head), the state before every chunk and after the last
        (causal), or only the final state (non-causal), in float32 buffers."""
        programs = k.shape[0] * self.spec.kv_heads
        facts = self.generated(kernel).graph.facts
        slots = span.num_slots
        chunk_state = torch.empty((programs, slots, facts["block_f"], facts["block_d"]),
                                  dtype=torch.float32, device=k.device)
        chunk_norm = torch.empty((programs, slots, facts["block_f"]), dtype=torch.float32, device=k.device)
        chunk_max = torch.empty((programs, slots), dtype=torch.float32, device=k.device)
        self.kernel(kernel, "states", k.device)[(programs,)](
            k, v, self.features(k.device), chunk_state, chunk_norm, chunk_max,
            *k.stride(), *v.stride(), k.shape[2], self.spec.kv_heads, span.num_chunks, slots,
            **{**launch, "num_stages": stages_of("states", launch["num_stages"])})
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
        cfg = config or self.config(q.device, "fwd", q.dtype)
        launch = dict(**self.constexprs(cfg, q.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        span = self.span(nq, nk, q_offset, cfg.chunk)
        states = self._states("fwd", k, v, span, launch)
        self.kernel("fwd", "main", q.device)[(span.row_tiles(nq), batch * spec.query_heads)](
            q, k, v, out, self.features(q.device), *states,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            nq, nk, q_offset, spec.query_heads, *span.row_args, span.num_slots, **launch)
        return out

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
        cfg = config or self.config(q.device, "bwd", q.dtype)
        launch = dict(**self.constexprs(cfg, q.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        span = self.span(nq, nk, q_offset, cfg.chunk)
        features = self.features(q.device)
        chunk_state, chunk_norm, chunk_max = self._states("bwd", k, v, span, launch)
        row_rden = torch.empty((batch, spec.query_heads, nq), dtype=torch.float32, device=q.device)
        row_dden = torch.empty_like(row_rden)
        row_max = torch.empty_like(row_rden) if spec.feature_map.name == "favor" else row_rden[:0]
        self.kernel("bwd", "dq", q.device)[(span.row_tiles(nq), batch * spec.query_heads)](
            q, k, v, out, dout, dq, features, chunk_state, chunk_norm, chunk_max, row_rden, row_dden,
            row_max, *q.stride(), *k.stride(), *v.stride(), *out.stride(), *dout.stride(), *dq.stride(),
            nq, nk, q_offset, spec.query_heads, *span.row_args, span.num_slots, **launch)
        del chunk_state, chunk_norm
        programs = batch * spec.kv_heads
        facts = self.generated("bwd").graph.facts
        grad_slots = span.num_chunks if spec.causal else 1
        grad_state = torch.empty((programs, grad_slots, facts["block_f"], facts["block_d"]),
                                 dtype=torch.float32, device=q.device)
        grad_norm = torch.empty((programs, grad_slots, facts["block_f"]), dtype=torch.float32, device=q.device)
        grad_max = torch.empty((programs, grad_slots), dtype=torch.float32, device=q.device)
        grad = (grad_state, grad_norm, grad_max)
        self.kernel("bwd", "reverse", q.device)[(programs,)](
            q, dout, features, chunk_max, row_rden, row_dden, row_max, *grad,
            *q.stride(), *dout.stride(),
            nq, q_offset, spec.kv_heads, span.first_chunk, span.num_chunks, span.tail_start,
            span.num_slots, grad_slots, **launch)
        self.kernel("bwd", "main", q.device)[(triton.cdiv(nk, cfg.chunk), programs)](
            q, k, v, dout, dk, dv, features, chunk_max, row_rden, row_dden, *grad,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
            nq, nk, q_offset, spec.kv_heads, span.first_chunk, span.num_chunks, span.num_slots,
            grad_slots, **launch)
        return dq, dk, dv

    # -- ahead of time ----------------------------------------------------------------------------
    def compile_for(self, target: str, dtype: torch.dtype, kernel: str = "fwd",
                    config: ChunkConfig | None = None) -> "CompiledKernels":
        """Every kernel of the fwd or bwd source compiled for `target` ('sm_80', 'sm_90')."""
        gen = self.generated(kernel)
        facts = gen.graph.facts
        cfg = config or chunk_config(facts["block_d"], facts["block_f"], target, kernel, dtype)
        module = load_source(gen.source)
        return CompiledKernels({
            role: compile_for_gpu(getattr(module, name), dtype=dtype, target=target,
                                  num_warps=cfg.num_warps, num_stages=stages_of(role, cfg.num_stages),
                                  constexprs=self.constexprs(cfg, dtype))
            for role, name in kernel_names(gen.graph).items()})


def launcher_of(attn: "CompiledAttention") -> LinearLauncher:
    """The linear launcher cached on a CompiledAttention."""
    if "linear" not in attn._launchers:
        attn._launchers["linear"] = LinearLauncher(attn.spec)
    return attn._launchers["linear"]


def _reference_path(spec: Spec, q, k, v, q_offset):
    check_qkv(spec, q, k, v)
    return linear_reference(spec, q, k.repeat_interleave(spec.group, dim=1),
                            v.repeat_interleave(spec.group, dim=1), q_offset=q_offset)


def linear_forward(attn: "CompiledAttention", q, k, v, *, q_offset=None) -> torch.Tensor:
    """out (B, Hq, Nq, D) of a linear spec's attention, in q's dtype."""
    if isinstance(q, torch.Tensor) and q.dtype == torch.float64:
        with torch.no_grad():
            return _reference_path(attn.spec, q, k, v, q_offset)
    return launcher_of(attn).forward(q, k, v, q_offset=q_offset)


def linear_backward(attn: "CompiledAttention", q, k, v, out, dout, *, q_offset=None):
    """(dq, dk, dv) of a linear spec's attention given `out` and its gradient `dout`."""
    if q.dtype == torch.float64:
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
            result = _reference_path(attn.spec, *leaves, q_offset)
            return torch.autograd.grad(result, leaves, dout.to(torch.float64))
    return launcher_of(attn).backward(q, k, v, out, dout, q_offset=q_offset)
