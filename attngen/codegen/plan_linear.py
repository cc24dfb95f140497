"""From a lowered linear-attention IR graph to the values its templates are rendered with.

Everything the linear templates print is decided here: kernel names, the feature map's constants
and formula, the scaling of the inputs, the header's notes.
"""
from __future__ import annotations

import math

from ..ir.graph import Graph
from ..version import __version__
from .signature import KernelSignature, constexprs, sizes, strides, tensors

FEATURE_FORMULAS = {
    "elu1": "phi(x) = elu(x) + 1 = x + 1 (x > 0), exp(x) (x <= 0)",
    "relu": "phi(x) = max(x, 0)",
    "favor": "phi(x) = exp(W x - |x|^2/2 - stab) / sqrt(m), W: m orthogonal Gaussian rows (seed {seed})",
}


def kernel_names(g: Graph) -> dict[str, str]:
    """The kernel functions of a lowered graph's source, by role; 'main' is GeneratedKernel's.

    Forward: ``states`` (the state pass) then ``main`` (the output pass). Backward: ``states``,
    ``dq``, ``reverse`` (the reverse state pass), then ``main`` (dk, dv), in launch order.
    """
    name = g.facts["spec_name"]
    if g.facts["kernel"] == "linear_fwd":
        return {"states": f"attngen_linear_states_{name}", "main": f"attngen_linear_fwd_{name}"}
    return {"states": f"attngen_linear_bwd_states_{name}", "dq": f"attngen_linear_dq_{name}",
            "reverse": f"attngen_linear_reverse_{name}", "main": f"attngen_linear_dkv_{name}"}


def linear_signatures(g: Graph) -> dict[str, KernelSignature]:
    """{role: signature} of a linear source's kernels, in launch order (see `kernel_names`)."""
    names = kernel_names(g)
    tiles = constexprs("CHUNK", "DOT_PRECISION")
    states = (tensors("k", "v") + tensors("features", "chunk_state", "chunk_norm", "chunk_max", dtype="fp32")
              + strides("k") + strides("v") + sizes("nk", "num_kv_heads", "num_chunks", "num_slots") + tiles)
    rows = sizes("nq", "nk", "q_offset", "num_query_heads", "zero_rows", "first_chunk", "num_chunks",
                 "tail_start", "num_slots")
    qkv = strides("q") + strides("k") + strides("v")
    if g.facts["kernel"] == "linear_fwd":
        return {
            "states": KernelSignature(names["states"], states),
            "main": KernelSignature(names["main"], (
                tensors("q", "k", "v", "out")
                + tensors("features", "chunk_state", "chunk_norm", "chunk_max", dtype="fp32")
                + qkv + strides("o") + rows + tiles)),
        }
    grads = tensors("grad_state", "grad_norm", "grad_max", dtype="fp32")
    return {
        "states": KernelSignature(names["states"], states),
        "dq": KernelSignature(names["dq"], (
            tensors("q", "k", "v", "out", "dout", "dq")
            + tensors("features", "chunk_state", "chunk_norm", "chunk_max", "row_rden", "row_dden", "row_max",
                      dtype="fp32")
            + qkv + strides("o") + strides("do") + strides("dq") + rows + tiles)),
        "reverse": KernelSignature(names["reverse"], (
            tensors("q", "dout")
            + tensors("features", "chunk_max", "row_rden", "row_dden", "row_max", dtype="fp32") + grads
            + strides("q") + strides("do")
            + sizes("nq", "q_offset", "num_kv_heads", "first_chunk", "num_chunks", "tail_start", "num_slots",
                    "grad_slots") + tiles)),
        "main": KernelSignature(names["main"], (
            tensors("q", "k", "v", "dout", "dk", "dv")
            + tensors("features", "chunk_max", "row_rden", "row_dden", dtype="fp32") + grads
            + qkv + strides("do") + strides("dk") + strides("dv")
            + sizes("nq", "nk", "q_offset", "num_kv_heads", "first_chunk", "num_chunks", "num_slots", "grad_slots")
            + tiles)),
    }


def _stabiliser_note(g: Graph) -> str:
    query, key = g.node("phi_q").attrs, g.node("phi_k").attrs
    if query["map"] != "favor":
        return "none (the feature map is bounded below by 0 without one)"
    return (f"query: {query['stabiliser']}; key: {key['stabiliser']} (detached constants; they "
            "cancel in the ratio except against eps)")


def _algorithm_note(g: Graph) -> str:
    if g.facts["kernel"] == "linear_bwd":
        if g.facts["algorithm"] == "chunked_scan":
            return ("chunked scans: state pass (chunk states recomputed), dq pass over query tiles "
                    "(leaves 1/den, dden per row), reverse state pass (G = sum phi(q) dnum^T, "
                    "g = sum phi(q) dden, after every chunk), dk/dv pass over key chunks")
        return ("state pass (final state recomputed), dq pass over query tiles (leaves 1/den, dden "
                "per row), reverse pass reducing G = sum phi(q) dnum^T, g = sum phi(q) dden over all "
                "rows, dk/dv pass over key chunks")
    if g.facts["algorithm"] == "chunked_scan":
        return ("chunked: a state pass per kv head stores the state before every chunk (favor's "
                "running maximum rescaling it); an output pass per query tile adds the chunk's "
                "masked quadratic form")
    return "pass 1 reduces S = phi(K)^T V and z = sum phi(K) per kv head; pass 2 applies them to phi(Q) tiles"


def _grouping(query: int, kv: int) -> str:
    return "MHA" if query == kv else ("MQA" if kv == 1 else "GQA")


def linear_values(g: Graph) -> dict:
    """Template values for templates/linear_fwd.py.jinja and linear_bwd.py.jinja."""
    spec = g.facts["spec"]
    phi = g.node("phi_q").attrs
    head_dim, m = g.facts["head_dim"], g.facts["num_features"]
    is_favor = phi["map"] == "favor"
    q_mult = phi["input_scale"] if phi["input_scale"] is not None else 1.0
    pre = head_dim ** -0.25 if is_favor else 1.0
    forward = g.facts["kernel"] == "linear_fwd"
    names = kernel_names(g)
    return dict(
        kernel_title="forward kernels" if forward else "backward kernels",
        template_name="linear_fwd.py.jinja" if forward else "linear_bwd.py.jinja",
        kernel_kind="fwd" if forward else "bwd",
        spec_name=g.facts["spec_name"], version=__version__,
        kernel_name=names["main"], states_kernel_name=names["states"],
        dq_kernel_name=names.get("dq", ""), reverse_kernel_name=names.get("reverse", ""),
        keys_note=("causal: key j is visible to query row r iff j <= r + q_offset"
                   if g.facts["causal"] else "every key (non-causal)"),
        feature_formula=FEATURE_FORMULAS[phi["map"]].format(seed=phi["seed"]),
        num_features=m, block_f=g.facts["block_f"],
        q_scale=repr(q_mult * pre), k_scale=repr(pre),
        q_scale_note=" times ".join([*(["favor's D^-1/4"] if is_favor else []),
                                     *(["the spec's scale"] if phi["input_scale"] is not None else [])])
        or "queries are not scaled",
        k_scale_note="favor's D^-1/4" if is_favor else "keys are not scaled",
        inv_sqrt_m=repr(1.0 / math.sqrt(m)), eps=repr(spec["eps"]),
        stabiliser_note=_stabiliser_note(g),
        query_heads=spec["heads"]["query"], kv_heads=spec["heads"]["kv"], group=g.facts["group"],
        grouping=_grouping(spec["heads"]["query"], spec["heads"]["kv"]),
        head_dim=head_dim, block_d=g.facts["block_d"],
        causal=g.facts["causal"], is_favor=is_favor, is_elu1=phi["map"] == "elu1",
        uses_feature_map_grad=not forward,          # the backward differentiates the feature map
        algorithm_note=_algorithm_note(g),
        chunk_configs=sorted(g.facts["chunk_configs"].items()), ir_hash=g.content_hash(),
        signatures=linear_signatures(g),
    )
