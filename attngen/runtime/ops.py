"""Compiled specs as torch operators: ``torch.ops.attngen.<name>``, seen whole by torch.compile.

`attngen.compile(spec)` returns a `CompiledAttention`, whose call *is* the operator: the operators
are registered when the spec is compiled (eagerly, outside any trace), so a module calling
``attn(q, k, v)`` works under ``torch.compile(fullgraph=True)`` and ``torch.export`` from its very
first call, forward and backward. Each spec is registered with `torch.library.custom_op` as operators in the ``attngen``
namespace (softmax specs without a segments mask also get ``<name>_decode``):

    attngen::<name>(Tensor q, Tensor k, Tensor v, SymInt q_offset, Tensor? seg_q, Tensor? seg_k)
        -> (Tensor out, Tensor lse)
    attngen::<name>_backward(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout,
                             SymInt q_offset, Tensor? seg_q, Tensor? seg_k) -> (Tensor, Tensor, Tensor)
    attngen::<name>_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor? cache_seqlens,
                           Tensor? block_table) -> (Tensor out, Tensor lse)

A spec with call-time inputs (`inputs:`, `sink: true`) takes them as one more argument,
``Tensor[] inputs``, in the order of `Spec.all_inputs`, after ``seg_k`` (forward, backward) or
``block_table`` (decode); its backward returns ``Tensor[]`` after dq, dk, dv: the gradients of the
inputs with ``grad: true`` (the sink's among them), in that order. Specs without inputs keep the
schemas above.

All have fake (meta) implementations that only compute shapes, so torch.compile and torch.export
trace a model calling them without running a kernel and without a graph break; the forward's
autograd formula (`torch.library.register_autograd`) calls the backward operator, so AOTAutograd
traces the backward as one opaque call too. Real calls go to `AttentionKernels.forward_impl` /
`backward_impl` / `decode_impl` (dispatch.py), with the kernels taken from the disk cache. The decode
operator is inference only: it has no autograd formula (decode.py's kernels have no backward).

- ``q_offset`` is always an integer in the schema: `CompiledAttention.__call__` resolves None to
  ``Nk - Nq`` (SPEC.md's bottom-right default) before calling the operator, so under dynamic shapes
  it is a symbolic ``k.shape[2] - q.shape[2]`` and no sentinel value exists.
- ``out`` has q's shape and dtype, contiguous; ``lse`` is (B, Hq, Nq) float32. Linear kinds have no
  lse: the operator returns an empty float32 tensor in its place.
- ``lse`` is not differentiable (as in `CompiledAttention`): a gradient flowing into it is ignored.
- The operator's name is the spec's name. A second, different spec with a name already taken gets
  ``<name>_<first 8 hex digits of its content hash>`` (a warning is logged); registering the same
  spec again returns the operator already made. The suffixed operators (``_backward``,
  ``_decode``) count as taken names.
- Shapes may change from call to call: kernels are generated once per spec, tile configurations
  are chosen by shape class at call time, and per-shape tables are cached in memory.
"""
from __future__ import annotations

import logging
import threading
import time

import torch

from ..errors import ShapeError
from ..reference import check_qkv
from ..spec import Spec, load_spec
from .dispatch import AttentionKernels
from .inputs import by_name, ordered
from . import ops_varlen

NAMESPACE = "attngen"
FORWARD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, SymInt q_offset, Tensor? seg_q, Tensor? seg_k)"
                  " -> (Tensor, Tensor)")
BACKWARD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout, "
                   "SymInt q_offset, Tensor? seg_q, Tensor? seg_k) -> (Tensor, Tensor, Tensor)")
DECODE_SCHEMA = ("(Tensor q, Tensor k_cache, Tensor v_cache, Tensor? cache_seqlens, "
                 "Tensor? block_table) -> (Tensor, Tensor)")
INPUTS = "Tensor[] inputs"       # appended where a spec declares inputs
SUFFIXES = ("", "_backward", "_decode", *ops_varlen.SUFFIXES)          # the operator names one spec takes

log = logging.getLogger("attngen.runtime")
_LOCK = threading.Lock()
_BY_SPEC: dict[tuple[str, str], "CompiledAttention"] = {}     # (name, content hash) → its operator
_TAKEN: set[str] = set()                                 # operator names used in this process


def kernel_kinds(spec: Spec) -> tuple[str, ...]:
    """The kernel kinds `prepare` generates ahead of the first call: every kind codegen has for the
    spec, so that a module calling `attngen.load` finds all of them in the cache. Segment ids do
    not exist in a KV cache, so segments specs have no decode kernel (codegen refuses it); `select:`
    specs also have their selection kernels."""
    if spec.kind == "linear":
        return ("linear_fwd", "linear_bwd")
    if spec.lsh is not None:             # decode runs the forward kernels per sequence (runtime/lsh.py)
        return ("fwd", "bwd", "lsh")     # lsh: the bucket kernel
    kinds = ("fwd", "bwd") if spec.uses_segments else ("fwd", "bwd", "decode")
    return kinds + (("select",) if spec.select is not None else ())   # the selection kernels


def has_decode_op(spec: Spec) -> bool:
    """A decode operator: specs with a decode kernel, and lsh specs (whose decode runs the forward
    kernels per sequence, runtime/lsh.py)."""
    return "decode" in kernel_kinds(spec) or spec.lsh is not None


class _ReferencePrecision(torch.autograd.Function):
    """float64 inputs (torch.autograd.gradcheck): the reference, forward and backward, outside the
    operator. Its backward differentiates the reference with autograd, which a custom operator's
    implementation cannot (it runs below the autograd dispatch key)."""

    @staticmethod
    def forward(ctx, kernels, q, k, v, q_offset, seg_q, seg_k, *inputs):
        given = by_name(kernels.spec, inputs)
        out, lse = kernels.forward_impl(q, k, v, q_offset, seg_q, seg_k, given)
        ctx.kernels, ctx.q_offset, ctx.segments = kernels, q_offset, (seg_q, seg_k)
        ctx.save_for_backward(q, k, v, *inputs)
        lse = q.new_empty((0,), dtype=torch.float32) if lse is None else lse
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, *inputs = ctx.saved_tensors
        spec = ctx.kernels.spec
        dq, dk, dv, *dinputs = ctx.kernels.backward_impl(q, k, v, None, None, dout, ctx.q_offset, *ctx.segments,
                                                         by_name(spec, inputs))
        return None, dq, dk, dv, None, None, None, *_input_grads(spec, dinputs)


def _check_call(q, k, v, q_offset, seg_q, seg_k) -> None:
    """What the operator's schema would refuse with a bare RuntimeError, refused naming the
    argument (shapes and dtypes are the fake and real implementations' to check)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("seg_q", seg_q), ("seg_k", seg_k)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if q_offset is not None and (isinstance(q_offset, bool) or not isinstance(q_offset, (int, torch.SymInt))):
        raise ShapeError(f"q_offset must be an int, got {q_offset!r}")


def select_outputs(spec: Spec, out, lse, return_lse: bool):
    """`out`, or `(out, lse)` when asked for; linear kinds have no lse to give."""
    if not return_lse:
        return out
    if spec.kind == "linear":
        raise ValueError(f"spec {spec.name!r} is linear attention: it has no lse")
    return out, lse


class CompiledAttention:
    """A spec compiled to kernels and registered as torch operators. Call it like an attention op:

        attn(q, k, v, *, q_offset=None, seg_q=None, seg_k=None, return_lse=False)
        attn.decode(q, k_cache, v_cache, *, cache_seqlens=None, block_table=None, return_lse=False)

    ``attn.op`` is ``torch.ops.attngen.<name>.default`` (what a call runs), ``attn.kernels`` the
    `AttentionKernels` behind the operators (launchers, ahead-of-time compilation).
    """

    def __init__(self, spec: Spec, name: str):
        self.spec = spec
        self.name = name
        self.kernels = AttentionKernels(spec)
        _define(self)
        namespace = getattr(torch.ops, NAMESPACE)
        self.op = getattr(namespace, name).default
        self.backward_op = getattr(namespace, f"{name}_backward").default
        has_decode = has_decode_op(spec)
        self.decode_op = getattr(namespace, f"{name}_decode").default if has_decode else None
        has_varlen = ops_varlen.has_varlen(spec)
        self.varlen_op = getattr(namespace, f"{name}_varlen").default if has_varlen else None

    def prepare(self) -> None:
        """Generate and import every kernel kind codegen knows for this spec (through the disk
        cache), so that first calls find them (`attngen.load` calls this)."""
        for kind in kernel_kinds(self.spec):
            start = time.perf_counter()
            launcher = self.kernels.launcher(kind.removeprefix("linear_"))
            launcher.jit_function(next(iter(launcher.signatures)))          # imports the source
            log.debug("prepared %s %s in %.1f ms", self.spec.name, kind, (time.perf_counter() - start) * 1e3)

    def launcher(self, kind: str = "fwd"):
        return self.kernels.launcher(kind)

    def compile_for(self, target: str, dtype: torch.dtype, *, kernel: str = "fwd"):
        """Ahead-of-time compilation of one kernel kind for a GPU target (no GPU needed)."""
        return self.kernels.compile_for(target, dtype, kernel=kernel)

    def __call__(self, q, k, v, *, q_offset=None, seg_q=None, seg_k=None, return_lse=False, **inputs):
        """`inputs`: the spec's call-time inputs by name (`sink=t`, ...)."""
        _check_call(q, k, v, q_offset, seg_q, seg_k)
        if q_offset is None:
            q_offset = k.shape[-2] - q.shape[-2]
        extra = _inputs_argument(self.spec, inputs)
        if isinstance(q, torch.Tensor) and q.dtype == torch.float64:
            out, lse = _ReferencePrecision.apply(self.kernels, q, k, v, q_offset, seg_q, seg_k, *(extra[0] if extra else ()))
        else:
            out, lse = self.op(q, k, v, q_offset, seg_q, seg_k, *extra)
        return select_outputs(self.spec, out, lse, return_lse)

    def decode(self, q, k_cache, v_cache, *, cache_seqlens=None, block_table=None, return_lse=False,
               **inputs):
        """Attention of Nq new tokens against a KV cache (docs/decode.md), through
        ``torch.ops.attngen.<name>_decode``: q (B, Hq, Nq, D), a contiguous (B, Hkv, Nk_max, D)
        cache or pages (num_pages, page_size, Hkv, D) with `block_table` (B, max_pages) int32;
        token t of sequence b sits at cache_seqlens[b] - Nq + t."""
        if self.decode_op is None:       # the kernels say why (linear, segments)
            out, lse = self.kernels.decode_impl(q, k_cache, v_cache, cache_seqlens, block_table, inputs)
        else:
            out, lse = self.decode_op(q, k_cache, v_cache, cache_seqlens, block_table,
                                      *_inputs_argument(self.spec, inputs))
        return (out, lse) if return_lse else out

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
               return_lse=False, **inputs):
        """A packed batch of sequences (FlashAttention's varlen layout, docs/recipes.md), through
        ``torch.ops.attngen.<name>_varlen``: q (total_q, Hq, D), k/v (total_k, Hkv, D/Dv),
        cu_seqlens_q/k int32 (batch + 1). Each sequence is attended as a batch row of its own
        lengths (bottom-right aligned, `b` its index); out (total_q, Hq, Dv) [, lse (Hq, total_q)]."""
        return ops_varlen.varlen_call(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                      return_lse, inputs)

    def __repr__(self) -> str:
        return (f"CompiledAttention({self.spec.name!r}, {self.spec.kind}, {self.spec.grouping}, "
                f"torch.ops.{NAMESPACE}.{self.name})")


def register(spec) -> CompiledAttention:
    """The operator of `spec`, registered on first use (see the module's docstring for names)."""
    spec = load_spec(spec)
    identity = (spec.name, spec.content_hash())
    with _LOCK:
        if identity in _BY_SPEC:
            return _BY_SPEC[identity]
        name = _free_name(spec)
        op = CompiledAttention(spec, name)
        _BY_SPEC[identity] = op
        _TAKEN.update(name + suffix for suffix in SUFFIXES)
        return op


def _free_name(spec: Spec) -> str:
    digest = spec.content_hash()
    for name in (spec.name, f"{spec.name}_{digest[:8]}", f"{spec.name}_{digest[:16]}"):
        if not _TAKEN & {name + suffix for suffix in SUFFIXES}:
            if name != spec.name:
                log.warning("operator name %s.%s is taken by a different spec: registering spec "
                            "%r as %s.%s", NAMESPACE, spec.name, spec.name, NAMESPACE, name)
            return name
    raise ValueError(f"no free operator name for spec {spec.name!r} (content {digest[:16]})")


# -- the operators ---------------------------------------------------------------------------
def _inputs_argument(spec: Spec, given: dict) -> tuple:
    """The operator's trailing `Tensor[] inputs` argument, or nothing for a spec without inputs."""
    if not spec.all_inputs:
        ordered(spec, given)                 # refuses an unknown input, naming it
        return ()
    return (ordered(spec, given),)


def _schema(schema: str, spec: Spec, after: str) -> str:
    """`schema` with `Tensor[] inputs` after the argument `after` where the spec has inputs."""
    if not spec.all_inputs:
        return schema
    return schema.replace(after, f"{after}, {INPUTS}", 1)


def _input_grads(spec: Spec, grads) -> list:
    """Gradients of the grad inputs → one entry per input (None where it takes no gradient)."""
    grads = iter(grads)
    return [next(grads) if d.grad else None for d in spec.all_inputs]


def _contiguous(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # Real outputs must match the fake ones exactly: `like`'s dtype, contiguous.
    return t.to(like.dtype).contiguous()


def _define(op: CompiledAttention) -> None:
    attn, spec = op.kernels, op.spec
    linear = spec.kind == "linear"

    has_inputs = bool(spec.all_inputs)
    grads_of = [n for n, d in enumerate(spec.all_inputs) if d.grad]

    def forward(q, k, v, q_offset, seg_q, seg_k, inputs=()):
        out, lse = attn.forward_impl(q, k, v, q_offset, seg_q, seg_k, by_name(spec, inputs))
        lse = q.new_empty((0,), dtype=torch.float32) if lse is None else lse.contiguous()
        return out.to(q.dtype).contiguous(), lse

    def forward_fake(q, k, v, q_offset, seg_q, seg_k, inputs=()):
        check_qkv(spec, q, k, v)
        lse_shape = (0,) if linear else (q.shape[0], q.shape[1], q.shape[2])
        return q.new_empty((*q.shape[:3], v.shape[3])), q.new_empty(lse_shape, dtype=torch.float32)

    def backward(q, k, v, out, lse, dout, q_offset, seg_q, seg_k, inputs=()):
        dq, dk, dv, *dinputs = attn.backward_impl(q, k, v, out, None if linear else lse, dout, q_offset,
                                                  seg_q, seg_k, by_name(spec, inputs))
        grads = (_contiguous(dq, q), _contiguous(dk, k), _contiguous(dv, v))
        return (*grads, [g.contiguous() for g in dinputs]) if has_inputs else grads

    def backward_fake(q, k, v, out, lse, dout, q_offset, seg_q, seg_k, inputs=()):
        grads = (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape))
        return (*grads, [inputs[n].new_empty(inputs[n].shape) for n in grads_of]) if has_inputs else grads

    forward_op = torch.library.custom_op(f"{NAMESPACE}::{op.name}", forward, mutates_args=(),
                                         schema=_schema(FORWARD_SCHEMA, spec, "Tensor? seg_k"))
    forward_op.register_fake(forward_fake)
    backward_schema = _schema(BACKWARD_SCHEMA, spec, "Tensor? seg_k")
    if has_inputs:
        backward_schema = backward_schema.replace("Tensor, Tensor, Tensor)", "Tensor, Tensor, Tensor, Tensor[])")
    backward_op = torch.library.custom_op(f"{NAMESPACE}::{op.name}_backward", backward,
                                          mutates_args=(), schema=backward_schema)
    backward_op.register_fake(backward_fake)
    forward_op.register_autograd(_autograd_backward(backward_op, spec), setup_context=_setup_context)
    if has_decode_op(spec):
        _define_decode(op)
    if ops_varlen.has_varlen(spec):
        ops_varlen.define_varlen(op, NAMESPACE)


def _define_decode(op: CompiledAttention) -> None:
    attn, spec = op.kernels, op.spec

    def decode(q, k_cache, v_cache, cache_seqlens, block_table, inputs=()):
        out, lse = attn.decode_impl(q, k_cache, v_cache, cache_seqlens, block_table, by_name(spec, inputs))
        return out.to(q.dtype).contiguous(), lse.contiguous()

    def decode_fake(q, k_cache, v_cache, cache_seqlens, block_table, inputs=()):
        # Only what the outputs' shapes depend on; the real call checks the caches and lengths.
        if q.dim() != 4 or (q.shape[1], q.shape[3]) != (spec.query_heads, spec.head_dim):
            raise ShapeError(f"q has shape {tuple(q.shape)}, expected (B, {spec.query_heads}, Nq, "
                             f"{spec.head_dim}) for spec {spec.name!r}")
        return q.new_empty((*q.shape[:3], spec.v_head_dim)), q.new_empty(q.shape[:3], dtype=torch.float32)

    decode_op = torch.library.custom_op(f"{NAMESPACE}::{op.name}_decode", decode, mutates_args=(),
                                        schema=_schema(DECODE_SCHEMA, spec, "Tensor? block_table"))
    decode_op.register_fake(decode_fake)


def _setup_context(ctx, inputs, output):
    q, k, v, q_offset, seg_q, seg_k, *extra = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seg_q, seg_k, *(extra[0] if extra else ()))
    ctx.q_offset = q_offset
    ctx.has_inputs = bool(extra)
    ctx.mark_non_differentiable(lse)


def _autograd_backward(backward_op, spec: Spec):
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, seg_q, seg_k, *inputs = ctx.saved_tensors
        if not ctx.has_inputs:
            dq, dk, dv = backward_op(q, k, v, out, lse, dout, ctx.q_offset, seg_q, seg_k)
            return dq, dk, dv, None, None, None
        dq, dk, dv, dinputs = backward_op(q, k, v, out, lse, dout, ctx.q_offset, seg_q, seg_k, inputs)
        return dq, dk, dv, None, None, None, _input_grads(spec, dinputs)
    return backward
