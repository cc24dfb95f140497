"""`attn.varlen` as torch operators (SPEC.md "Variable-length batches"), traced whole by torch.compile.

Softmax specs that varlen can run (codegen/plan_varlen.py) get two more operators when compiled:

    attngen::<name>_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k,
                           SymInt? max_seqlen_q, SymInt? max_seqlen_k) -> (Tensor out, Tensor lse)
    attngen::<name>_varlen_backward(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout,
                                    Tensor cu_seqlens_q, Tensor cu_seqlens_k, SymInt? max_seqlen_q,
                                    SymInt? max_seqlen_k) -> (Tensor, Tensor, Tensor)

(with ``Tensor[] inputs`` after ``max_seqlen_k`` and a ``Tensor[]`` of input gradients for specs
with inputs, as ops.py's). out is (total_q, Hq, Dv) in q's dtype, lse (Hq, total_q) float32 and
not differentiable. The fake implementations compute shapes only, so the data-dependent checks of
cu_seqlens (monotone, last entry = total) run in the real call. The varlen kernels are generated
on the first varlen call, not by `CompiledAttention.prepare`.
"""
from __future__ import annotations

import torch

from ..codegen.plan_varlen import varlen_unsupported
from ..errors import ShapeError
from .inputs import by_name, ordered
from .varlen_tables import check_varlen_shapes

SUFFIXES = ("_varlen", "_varlen_backward")
FORWARD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
                  "SymInt? max_seqlen_q, SymInt? max_seqlen_k) -> (Tensor, Tensor)")
BACKWARD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout, Tensor cu_seqlens_q, "
                   "Tensor cu_seqlens_k, SymInt? max_seqlen_q, SymInt? max_seqlen_k) -> (Tensor, Tensor, Tensor)")


def has_varlen(spec) -> bool:
    """Whether `spec` gets varlen operators (others are refused, with the reason, when called)."""
    return spec.kind == "softmax" and not varlen_unsupported(spec)


def define_varlen(op, namespace: str) -> None:
    """Register `op`'s varlen operators (`op` is a `CompiledAttention`)."""
    attn, spec = op.kernels, op.spec
    has_inputs = bool(spec.all_inputs)
    grads_of = [n for n, d in enumerate(spec.all_inputs) if d.grad]
    inputs_arg = ", Tensor[] inputs" if has_inputs else ""

    def forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, inputs=()):
        out, lse = attn.varlen_forward_impl(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                            by_name(spec, inputs))
        return out.contiguous(), lse.contiguous()

    def forward_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, inputs=()):
        check_varlen_shapes(spec, q, k, v)
        return (q.new_empty((q.shape[0], spec.query_heads, spec.v_head_dim)),
                q.new_empty((spec.query_heads, q.shape[0]), dtype=torch.float32))

    def backward(q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, inputs=()):
        dq, dk, dv, *dinputs = attn.varlen_backward_impl(q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k,
                                                         max_seqlen_q, max_seqlen_k, by_name(spec, inputs))
        grads = tuple(g.to(t.dtype).contiguous() for g, t in ((dq, q), (dk, k), (dv, v)))
        return (*grads, [g.contiguous() for g in dinputs]) if has_inputs else grads

    def backward_fake(q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, inputs=()):
        grads = (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape))
        return (*grads, [inputs[n].new_empty(inputs[n].shape) for n in grads_of]) if has_inputs else grads

    forward_op = torch.library.custom_op(
        f"{namespace}::{op.name}_varlen", forward, mutates_args=(),
        schema=FORWARD_SCHEMA.replace("max_seqlen_k)", f"max_seqlen_k{inputs_arg})"))
    forward_op.register_fake(forward_fake)
    backward_schema = BACKWARD_SCHEMA.replace("max_seqlen_k)", f"max_seqlen_k{inputs_arg})")
    if has_inputs:
        backward_schema = backward_schema.replace("Tensor, Tensor, Tensor)", "Tensor, Tensor, Tensor, Tensor[])")
    backward_op = torch.library.custom_op(f"{namespace}::{op.name}_varlen_backward", backward,
                                          mutates_args=(), schema=backward_schema)
    backward_op.register_fake(backward_fake)

    def setup_context(ctx, inputs, output):
        q, k, v, cu_q, cu_k, max_q, max_k, *extra = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, *(extra[0] if extra else ()))
        ctx.max_seqlens = (max_q, max_k)
        ctx.mark_non_differentiable(lse)

    def autograd_backward(ctx, dout, _dlse):
        q, k, v, out, lse, cu_q, cu_k, *given = ctx.saved_tensors
        none = (None,) * 4
        if not has_inputs:
            return (*backward_op(q, k, v, out, lse, dout, cu_q, cu_k, *ctx.max_seqlens), *none)
        dq, dk, dv, dinputs = backward_op(q, k, v, out, lse, dout, cu_q, cu_k, *ctx.max_seqlens, given)
        grads = iter(dinputs)
        return dq, dk, dv, *none, [next(grads) if d.grad else None for d in spec.all_inputs]

    forward_op.register_autograd(autograd_backward, setup_context=setup_context)


def varlen_call(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, return_lse: bool,
                inputs: dict):
    """`CompiledAttention.varlen`: out, or (out, lse)."""
    for name, t in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor (int32, batch + 1), got {type(t).__name__}")
    if op.varlen_op is None:        # the kernels say why (generation refuses the spec)
        out, lse = op.kernels.varlen_forward_impl(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                  max_seqlen_k, inputs)
    else:
        extra = (ordered(op.spec, inputs),) if op.spec.all_inputs else ()
        if not op.spec.all_inputs:
            ordered(op.spec, inputs)        # refuses an unknown input, naming it
        out, lse = op.varlen_op(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *extra)
    return (out, lse) if return_lse else out
