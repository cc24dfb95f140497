"""Launching the generated linear-attention kernels: `linear_forward`, `linear_backward`.

Forward (templates/linear_fwd.py.jinja): causal specs run one chunked scan per (batch, kv head),
serving the GROUP query heads that read it; non-causal specs run a state reduction per (batch, kv
head) into float32 buffers S (m × D), z (m), then an apply kernel over (query tile, batch * query
head). Backward (templates/linear_bwd.py.jinja): a forward scan per (batch, kv head) for dq, which
leaves per-row 1/den and dden and per-chunk running maxima, then a reverse scan for dk and dv.
Every program of a scan owns one kv head, so GQA sums need no atomics and results are
deterministic. Memory besides q, k, v and the outputs: O(B·Hq·Nq + B·Hkv·(m·D + Nk/chunk)).

CPU tensors run under Triton's interpreter (outputs poisoned with NaN first, so an element a
kernel forgets fails the tests); CUDA tensors run compiled. float64 inputs take the reference
path (torch autograd through `attngen.reference_linear`), for `torch.autograd.gradcheck`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton

from ..analysis.lowering_linear import ChunkConfig, chunk_config
from ..codegen.aot import compile_for_gpu
from ..codegen.emit import generate
from ..codegen.plan_linear import kernel_names
from ..errors import ShapeError
from ..reference import check_qkv
from ..reference_linear import linear_reference
from ..spec import Spec, resolve_q_offset
from ..spec.feature_maps import favor_features
from .launch import architecture, check_inputs, dot_precision
from .loader import interpreted, load_source

if TYPE_CHECKING:
    from .autograd import CompiledAttention


class LinearLauncher:
    """The generated forward and backward kernels of one linear spec, loaded on first use."""

    def __init__(self, spec: Spec):
        if spec.kind != "linear":
            raise ValueError(f"spec {spec.name!r} is {spec.kind} attention, not linear")
        self.spec = spec
        self._generated: dict = {}
        self._features: dict = {}

    def generated(self, kernel: str):
        if kernel not in self._generated:
            self._generated[kernel] = generate(self.spec, kernel)
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

    def config(self, device: torch.device) -> ChunkConfig:
        facts = self.generated("fwd").graph.facts
        return chunk_config(facts["block_d"], facts["block_f"], architecture(device))

    @staticmethod
    def constexprs(cfg: ChunkConfig, dtype: torch.dtype) -> dict:
        return dict(CHUNK=cfg.chunk, DOT_PRECISION=dot_precision(dtype))

    # -- forward --------------------------------------------------------------------------------
    def forward(self, q, k, v, *, q_offset=None, config: ChunkConfig | None = None) -> torch.Tensor:
        spec = self.spec
        check_inputs(spec, q, k, v)
        batch, _, nq, _ = q.shape
        nk = k.shape[2]
        q_offset = resolve_q_offset(nq, nk, q_offset)
        interpret = architecture(q.device) is None
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if interpret:
            out.fill_(float("nan"))
        if nq == 0:
            return out
        if nk == 0:                                    # no key at all: every row is empty
            return out.zero_()
        cfg = config or self.config(q.device)
        launch = dict(**self.constexprs(cfg, q.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        features = self.features(q.device)
        programs = batch * spec.kv_heads
        if spec.causal:
            self.kernel("fwd", "main", q.device)[(programs,)](
                q, k, v, out, features, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                nq, nk, q_offset, spec.kv_heads, **launch)
            return out
        facts = self.generated("fwd").graph.facts
        state = torch.empty((programs, facts["block_f"], facts["block_d"]), dtype=torch.float32, device=q.device)
        state_z = torch.empty((programs, facts["block_f"]), dtype=torch.float32, device=q.device)
        state_max = torch.empty((programs,), dtype=torch.float32, device=q.device)
        self.kernel("fwd", "state", q.device)[(programs,)](
            k, v, features, state, state_z, state_max, *k.stride(), *v.stride(), nk, spec.kv_heads,
            **launch)
        self.kernel("fwd", "main", q.device)[(triton.cdiv(nq, cfg.chunk), batch * spec.query_heads)](
            q, out, features, state, state_z, *q.stride(), *out.stride(), nq, spec.query_heads, **launch)
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
        if interpret:
            for g in grads:
                g.fill_(float("nan"))
        if nq == 0 or nk == 0:
            return tuple(g.zero_() for g in grads)
        dq, dk, dv = grads
        cfg = config or self.config(q.device)
        launch = dict(**self.constexprs(cfg, q.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        programs = batch * spec.kv_heads
        num_key_chunks = triton.cdiv(nk, cfg.chunk)
        row_rden = torch.empty((batch, spec.query_heads, nq), dtype=torch.float32, device=q.device)
        row_dden = torch.empty_like(row_rden)
        chunk_max = torch.empty((programs, num_key_chunks), dtype=torch.float32, device=q.device)
        common = (self.features(q.device), row_rden, row_dden, chunk_max)
        sizes = (nq, nk, q_offset if spec.causal else 0, spec.kv_heads, num_key_chunks)
        self.kernel("bwd", "dq", q.device)[(programs,)](
            q, k, v, out, dout, dq, *common,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *dout.stride(), *dq.stride(),
            *sizes, **launch)
        self.kernel("bwd", "main", q.device)[(programs,)](
            q, k, v, dout, dk, dv, *common,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
            *sizes, **launch)
        return dq, dk, dv

    # -- ahead of time ----------------------------------------------------------------------------
    def compile_for(self, target: str, dtype: torch.dtype, kernel: str = "fwd",
                    config: ChunkConfig | None = None) -> dict:
        """Every kernel of the fwd or bwd source compiled for `target` ('sm_80', 'sm_90'), by role."""
        gen = self.generated(kernel)
        facts = gen.graph.facts
        cfg = config or chunk_config(facts["block_d"], facts["block_f"], target)
        module = load_source(gen.source)
        return {role: compile_for_gpu(getattr(module, name), dtype=dtype, target=target,
                                      num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                      constexprs=self.constexprs(cfg, dtype))
                for role, name in kernel_names(gen.graph).items()}


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
