"""The varlen kernels: the forward and backward templates rendered for one launch over a packed
batch of sequences (`attn.varlen`, SPEC.md "Variable-length batches").

Same graph, same templates, same mask and key-range code as the batched kernels; the templates'
`varlen` value swaps each kernel's first lines: the program reads its (sequence, tile) from a
host-built work table and the sequence's extent from cu_seqlens, and moves its pointers there
(templates/varlen.py.jinja). The per-call sizes nq, nk, q_offset and k_offset become per-sequence
values read in the kernel; the arguments cu_seqlens_q, cu_seqlens_k and work_table come in (and
total_q, lse's row length, for the forward).
"""
from __future__ import annotations

from ..errors import CompileError
from ..ir.graph import Graph
from ..spec import Random, Spec
from .plan import forward_signatures, forward_values
from .plan_backward import backward_signatures, backward_values
from .plan_helpers import helper_flags
from .signature import KernelSignature, sizes, tensors

PER_SEQUENCE = ("nq", "nk", "q_offset", "k_offset")      # read in the kernel, per sequence


def varlen_signature(sig: KernelSignature, name: str, *, total_q: bool = False) -> KernelSignature:
    """`sig` with the per-call sizes replaced by the varlen tables (after the last tensor) and,
    for the forward, total_q (before the first size)."""
    args = [a for a in sig.args if a.name not in PER_SEQUENCE]
    last_tensor = max(n for n, a in enumerate(args) if a.role == "tensor")
    args[last_tensor + 1:last_tensor + 1] = tensors("cu_seqlens_q", "cu_seqlens_k", "work_table", dtype="i32")
    if total_q:
        first_size = min(n for n, a in enumerate(args) if a.role == "size")
        args[first_size:first_size] = sizes("total_q")
    return KernelSignature(name, tuple(args))


def varlen_forward_signatures(g: Graph, kernel_name: str) -> dict[str, KernelSignature]:
    return {role: varlen_signature(sig, kernel_name, total_q=True)
            for role, sig in forward_signatures(g, kernel_name).items()}


def varlen_backward_signatures(g: Graph, kernel_name: str) -> dict[str, KernelSignature]:
    return {role: varlen_signature(sig, sig.name) for role, sig in backward_signatures(g, kernel_name).items()}


def varlen_forward_values(g: Graph, *, kernel_name: str) -> dict:
    values = forward_values(g, kernel_name=kernel_name)
    values.update(varlen=True, kernel_title="varlen forward kernel",
                  signatures=varlen_forward_signatures(g, kernel_name))
    values.update(helper_flags(values))
    return values


def varlen_backward_values(g: Graph, *, kernel_name: str) -> dict:
    values = backward_values(g, kernel_name=kernel_name)
    values.update(varlen=True, kernel_title="varlen backward kernels",
                  signatures=varlen_backward_signatures(g, kernel_name))
    values.update(helper_flags(values))
    return values


def varlen_unsupported(spec: Spec) -> list[str]:
    """What varlen refuses beyond what the batched kernels refuse (empty when it can run `spec`)."""
    if spec.kind != "softmax":
        return [f"kind: {spec.kind} (varlen is for softmax attention)"]
    reasons = []
    if spec.uses_segments:
        reasons.append("a segments mask (a varlen batch is already split into its documents: pass "
                       "each document as a sequence)")
    if any(isinstance(p, Random) for p in spec.effective_mask.walk()):
        reasons.append("a random mask (its draws depend on each sequence's lengths; not yet in the "
                       "varlen kernels)")
    for d in spec.inputs:
        if {"Nq", "Nk"} & set(map(str, d.shape)):
            reasons.append(f"the input {d.name!r} with a length axis (lengths differ per sequence)")
    return reasons


def refuse_varlen(spec: Spec) -> None:
    reasons = varlen_unsupported(spec)
    if reasons:
        raise CompileError(f"spec {spec.name!r}: attn.varlen does not support {'; '.join(reasons)}. "
                           "Call attn(q, k, v) per sequence instead.")
