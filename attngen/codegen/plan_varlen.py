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
from ..spec import Spec
from .plan import forward_signatures, forward_values, random_tables
from .plan_backward import backward_signatures, backward_values
from .plan_helpers import helper_flags
from .signature import KernelSignature, sizes, tensors

PER_SEQUENCE = ("nq", "nk", "q_offset", "k_offset")      # read in the kernel, per sequence


def varlen_random_names(g: Graph) -> list[tuple[str, str, str, str]]:
    """Per random table: (table, first, rows, per-sequence argument). The tables of all sequences
    are joined; `<per_sequence>` holds (offset in the joined table, first query block, rows) of
    each sequence, which the kernel reads into the batched kernel's `first` and `rows`."""
    return [(*t.names, f"random_{t.index}_per_sequence") for t in random_tables(g)]


def varlen_signature(sig: KernelSignature, name: str, g: Graph, *, total_q: bool = False) -> KernelSignature:
    """`sig` with the per-call sizes replaced by the varlen tables (after the last tensor) and,
    for the forward, total_q (before the first size); random tables' first/rows per sequence."""
    random = varlen_random_names(g)
    per_call = {*PER_SEQUENCE, *(n for _, first, rows, _ in random for n in (first, rows))}
    args = [a for a in sig.args if a.name not in per_call]
    if random and not any(a.name == random[0][0] for a in args):
        random = []             # a kernel without the mask's tables (the preprocess)
    last_tensor = max(n for n, a in enumerate(args) if a.role == "tensor")
    args[last_tensor + 1:last_tensor + 1] = tensors("cu_seqlens_q", "cu_seqlens_k", "work_table",
                                                    *(r[3] for r in random), dtype="i32")
    if total_q:
        first_size = min(n for n, a in enumerate(args) if a.role == "size")
        args[first_size:first_size] = sizes("total_q")
    return KernelSignature(name, tuple(args))


def _shared_lists(g: Graph) -> Graph:
    """Varlen kernels walk one set of list rows per sequence (`list_base`), built from the static
    map: a mask's scalar reads keep their sound input-free bound there (README, Decisions)."""
    return g.with_facts(list_sets=()) if g.facts.get("list_sets") else g


def varlen_forward_signatures(g: Graph, kernel_name: str) -> dict[str, KernelSignature]:
    g = _shared_lists(g)
    return {role: varlen_signature(sig, kernel_name, g, total_q=True)
            for role, sig in forward_signatures(g, kernel_name).items()}


def varlen_backward_signatures(g: Graph, kernel_name: str) -> dict[str, KernelSignature]:
    g = _shared_lists(g)
    return {role: varlen_signature(sig, sig.name, g) for role, sig in backward_signatures(g, kernel_name).items()}


def varlen_forward_values(g: Graph, *, kernel_name: str) -> dict:
    g = _shared_lists(g)
    return _as_varlen(forward_values(g, kernel_name=kernel_name), g, "varlen forward kernel", "varlen_fwd",
                      varlen_forward_signatures(g, kernel_name))


def varlen_backward_values(g: Graph, *, kernel_name: str) -> dict:
    g = _shared_lists(g)
    return _as_varlen(backward_values(g, kernel_name=kernel_name), g, "varlen backward kernels", "varlen_bwd",
                      varlen_backward_signatures(g, kernel_name))


def _as_varlen(values: dict, g: Graph, title: str, kind: str, signatures: dict) -> dict:
    """A batched kind's template values, rendered as its varlen flavour."""
    values.update(varlen=True, kernel_title=title, kernel_kind=kind, varlen_random=varlen_random_names(g),
                  signatures=signatures)
    values.update(helper_flags(values))
    return values


def varlen_unsupported(spec: Spec) -> list[str]:
    """What varlen refuses beyond what the batched kernels refuse (empty when it can run `spec`)."""
    if spec.kind != "softmax":
        return [f"kind: {spec.kind} (varlen is for softmax attention)"]
    reasons = []
    if spec.select is not None:
        reasons.append("select: (the selection's query blocks are the batched call's rows)")
    if spec.lsh is not None:
        reasons.append("lsh: (each sequence's rows would be sorted by bucket on their own)")
    if spec.uses_segments:
        reasons.append("a segments mask (a varlen batch is already split into its documents: pass "
                       "each document as a sequence)")
    for d in spec.inputs:
        if {"Nq", "Nk"} & set(map(str, d.shape)):
            reasons.append(f"the input {d.name!r} with a length axis (lengths differ per sequence)")
        elif d.grad:
            reasons.append(f"the gradient of the input {d.name!r} (grad: true; the sink's is supported)")
    return reasons


def refuse_varlen(spec: Spec) -> None:
    reasons = varlen_unsupported(spec)
    if reasons:
        raise CompileError(f"spec {spec.name!r}: attn.varlen does not support {'; '.join(reasons)}. "
                           "Call attn(q, k, v) per sequence instead.")
