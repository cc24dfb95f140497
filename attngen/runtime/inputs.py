"""A call's `inputs:` tensors (SPEC.md, "Expressions" and "Attention sinks"): checked against the
spec's declarations, then passed to the kernels by argument name.

Inputs travel by name from the call (`attn(q, k, v, sink=t)`) to the launchers as a dict; the torch
operators carry them as one `Tensor[]` in the order of `Spec.all_inputs` (`ordered`, `by_name`).
"""
from __future__ import annotations

import torch

from ..errors import ShapeError
from ..spec import Spec
from ..spec.inputs import InputDecl, check_inputs


def call_inputs(spec: Spec, given: dict | None, *, batch: int, nq: int, nk: int, device,
                float64: bool = False) -> dict:
    """name → tensor, every declared input present with its declared dtype, shape and device
    (`ShapeError` naming the input otherwise); {} for a spec that declares none and got none.
    `float64`: a float64 call, whose float32 inputs may be float64 too (gradcheck)."""
    if not spec.all_inputs and not given:
        return {}
    sizes = {"B": batch, "Hq": spec.query_heads, "Hkv": spec.kv_heads, "Nq": nq, "Nk": nk}
    return check_inputs(spec.all_inputs, dict(given or {}), sizes, device, float64_ok=float64)


def sink_arg(spec: Spec, checked: dict) -> dict:
    """The kernels' `sink` argument: the sinks' logits as a contiguous float32 (Hq,) tensor."""
    if not spec.sink:
        return {}
    return {"sink": checked["sink"].detach().contiguous()}


def grad_inputs(spec: Spec) -> tuple[InputDecl, ...]:
    """The inputs that receive a gradient (`grad: true`, and the sink), in declared order: the
    backward returns one gradient for each, after dq, dk, dv."""
    return tuple(d for d in spec.all_inputs if d.grad)


def ordered(spec: Spec, given: dict) -> list[torch.Tensor]:
    """The operator's `Tensor[] inputs`: the given inputs in the order of `spec.all_inputs`
    (a missing or unknown one is a `ShapeError` naming it)."""
    declared = [d.name for d in spec.all_inputs]
    for name in given:
        if name not in declared:
            raise ShapeError(f"unknown input {name!r}: spec {spec.name!r} declares inputs: "
                             f"{', '.join(declared) or 'none'}")
    for d in spec.all_inputs:
        if given.get(d.name) is None:
            raise ShapeError(f"missing input {d.name!r}: pass {d.name}= a {d.dtype} tensor of shape "
                             f"({', '.join(map(str, d.shape))})")
        if not isinstance(given[d.name], torch.Tensor):
            raise ShapeError(f"input {d.name!r} must be a torch.Tensor, got {type(given[d.name]).__name__}")
    return [given[name] for name in declared]


def by_name(spec: Spec, tensors) -> dict:
    """The operator's `Tensor[] inputs` back to name → tensor."""
    return {d.name: t for d, t in zip(spec.all_inputs, tensors)}


def formula_args(signature, checked: dict) -> dict:
    """The kernel arguments of the inputs a kernel's formulas read (`codegen.plan_formula`):
    ``in_<name>``, its sizes ``in_<name>_size<k>`` and strides ``stride_in_<name>_<k>``, for each
    input whose ``in_<name>`` the kernel's signature declares."""
    out = {}
    for name, t in checked.items():
        if f"in_{name}" not in signature.names:
            continue
        out[f"in_{name}"] = t.detach()
        for k, (size, stride) in enumerate(zip(t.shape, t.stride())):
            out[f"in_{name}_size{k}"] = size
            out[f"stride_in_{name}_{k}"] = stride
    return out
