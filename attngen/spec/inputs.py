"""`inputs:` declarations (call-time tensors that formulas read) and their check at call time.

SPEC.md, "Expressions": ``name: {shape: [d1, ..], dtype: int32 | int64 | float32 | bool, grad: false}``,
each ``di`` an integer or one of ``B, Hq, Hkv, Nq, Nk``; passed by name at call time. A name that
clashes with a formula name, a formula function or a call keyword is refused when the spec loads.
"""
from __future__ import annotations

import keyword
from dataclasses import dataclass

import torch

from ..errors import ShapeError, SpecError
from .formula_syntax import FUNCTIONS, NAMES, SCORE_FUNCTIONS

DTYPES = {"int32": torch.int32, "int64": torch.int64, "float32": torch.float32, "bool": torch.bool}
DIM_NAMES = ("B", "Hq", "Hkv", "Nq", "Nk")
# Keywords of the call (attn(q, k, v, *, q_offset=.., ...), decode, reference): an input of the same
# name could not be passed.
CALL_KEYWORDS = ("q", "k", "v", "q_offset", "seg_q", "seg_k", "return_lse", "k_cache", "v_cache",
                 "cache_seqlens", "block_table", "spec", "self", "cu_seqlens_q", "cu_seqlens_k",
                 "max_seqlen_q", "max_seqlen_k")
RESERVED = set(NAMES) | set(FUNCTIONS) | set(SCORE_FUNCTIONS) | set(CALL_KEYWORDS)


@dataclass(frozen=True)
class InputDecl:
    """One call-time input: `shape` holds integers and names of `DIM_NAMES`."""

    name: str
    shape: tuple
    dtype: str
    grad: bool = False

    def __post_init__(self):
        name = self.name
        if not isinstance(name, str) or not name.isidentifier() or not name.isascii():
            raise SpecError("", name, "an input name must be an identifier")
        if name in RESERVED or keyword.iskeyword(name) or name.startswith("__"):
            raise SpecError("", name, "clashes with a formula name, function or call keyword "
                                      f"({', '.join(sorted(RESERVED - {'True', 'False'}))})")
        if not isinstance(self.shape, tuple) or not self.shape:
            raise SpecError("shape", list(self.shape) if isinstance(self.shape, tuple) else self.shape,
                            "must be a non-empty list of sizes (integers or B, Hq, Hkv, Nq, Nk)")
        for n, dim in enumerate(self.shape):
            if dim in DIM_NAMES:
                continue
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise SpecError(f"shape[{n}]", dim, f"must be an integer >= 1 or one of {', '.join(DIM_NAMES)}")
        if self.dtype not in DTYPES:
            raise SpecError("dtype", self.dtype, f"must be one of {', '.join(DTYPES)}")
        if not isinstance(self.grad, bool):
            raise SpecError("grad", self.grad, "must be true or false")
        if self.grad and self.dtype != "float32":
            raise SpecError("grad", self.grad, f"needs dtype float32 (the input is {self.dtype})")

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "grad": self.grad}

    def sizes(self, sizes: dict) -> tuple[int, ...]:
        """The concrete shape for call sizes {"B": .., "Hq": .., ...}."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)


def input_decl(name, value) -> InputDecl:
    """An `InputDecl` from its YAML/dict form (or an InputDecl, renamed-checked)."""
    if isinstance(value, InputDecl):
        if value.name != name:
            raise SpecError(str(name), value.name, "the declaration's name differs from its key")
        return value
    if not isinstance(value, dict):
        raise SpecError(str(name), value, "must be a mapping {shape: [..], dtype: .., grad: ..}")
    for key in value:
        if key not in ("shape", "dtype", "grad"):
            raise SpecError(f"{name}.{key}", value[key], f"unknown key {key!r} (allowed: shape, dtype, grad)")
    for key in ("shape", "dtype"):
        if key not in value:
            raise SpecError(f"{name}.{key}", None, "is required")
    shape = value["shape"]
    if not isinstance(shape, (list, tuple)):
        raise SpecError(f"{name}.shape", shape, "must be a list of sizes")
    try:
        return InputDecl(name, tuple(shape), value["dtype"], value.get("grad", False))
    except SpecError as err:
        raise err.under(str(name)) from None


# `sink: true` declares this input (gpt-oss attention sinks).
SINK = InputDecl("sink", ("Hq",), "float32", True)


def input_decls(value, *, sink: bool) -> tuple[InputDecl, ...]:
    """The declarations of a spec's `inputs:` (a mapping, or None), sorted by name: the order of
    declaration does not change what a spec means."""
    if value is None or value == {}:
        decls = ()
    elif isinstance(value, dict):
        try:
            decls = tuple(input_decl(name, v) for name, v in value.items())
        except SpecError as err:
            raise err.under("inputs") from None
    elif isinstance(value, (tuple, list)) and all(isinstance(d, InputDecl) for d in value):
        decls = tuple(value)
    else:
        raise SpecError("inputs", value, "must be a mapping name: {shape: [..], dtype: ..}")
    names = [d.name for d in decls]
    for name in names:
        if names.count(name) > 1:
            raise SpecError(f"inputs.{name}", name, "is declared twice")
    if sink and "sink" in names:
        raise SpecError("inputs.sink", "sink", "is declared by sink: true (shape [Hq], float32, "
                                               "with gradient); do not declare it again")
    return tuple(sorted(decls, key=lambda d: d.name))


def check_inputs(decls: tuple[InputDecl, ...], given: dict, sizes: dict, device, *,
                 float64_ok: bool = False) -> dict:
    """The call's inputs checked against the declarations: every declared one passed, as a tensor
    of the declared dtype and shape on `device`; no other. Returns name → tensor. `float64_ok`:
    float64 stands for float32 (the float64 reference, and `gradcheck` through it)."""
    declared = {d.name: d for d in decls}
    for name in given:
        if name not in declared:
            known = ", ".join(declared) or "none"
            raise ShapeError(f"unknown input {name!r}: this spec declares inputs: {known}")
    for name, decl in declared.items():
        want = decl.sizes(sizes)
        if name not in given or given[name] is None:
            raise ShapeError(f"missing input {name!r}: pass {name}= a {decl.dtype} tensor of shape {want}")
        t = given[name]
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"input {name!r} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != DTYPES[decl.dtype] and not (float64_ok and decl.dtype == "float32" and t.dtype == torch.float64):
            raise ShapeError(f"input {name!r} has dtype {t.dtype}, expected {DTYPES[decl.dtype]}")
        if tuple(t.shape) != want:
            raise ShapeError(f"input {name!r} has shape {tuple(t.shape)}, expected {want} "
                             f"({', '.join(map(str, decl.shape))})")
        if device is not None and t.device != torch.device(device):
            raise ShapeError(f"input {name!r} is on {t.device}, expected {device} (where q is)")
    return {name: given[name] for name in declared}
