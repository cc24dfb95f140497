"""A generated kernel's signature, declared once.

Each plan (plan.py, plan_backward.py, plan_decode.py, plan_linear.py) declares the arguments of the
kernels it generates as a `KernelSignature`: name, role and type of each argument, in order. The
places that used to keep their own copy read this one declaration:

- the template renders the ``def`` line through a hole (`KernelSignature.definition`, as
  Inductor's ``def_kernel``);
- launchers build a keyword mapping and `KernelSignature.check_arguments` compares it with the
  declaration (once per launcher and kernel);
- ahead-of-time compilation (`aot.compile_as_launched`) compiles the launch a launcher builds
  from it, checked the same way, so that what is judged without a GPU is what a launch runs.

Roles: ``tensor`` (a pointer; `dtype` is ``input`` for the call's q/k/v dtype, else ``fp32`` or
``i32``), ``stride`` and ``size`` (32-bit integer scalars; a stride's `axis` is the dimension it
steps, ``d`` the head dim), ``constexpr`` (compile-time constants: tile sizes and flags).
"""
from __future__ import annotations

from dataclasses import dataclass

ROLES = ("tensor", "stride", "size", "constexpr")
TENSOR_DTYPES = ("input", "fp32", "i32", "i64", "i1")     # i64, i1: formulas' int64 and bool inputs
LINE = 104         # the width the definition's argument lines wrap at (the templates' longest)


@dataclass(frozen=True)
class Arg:
    name: str
    role: str
    dtype: str = "i32"          # tensors: input | fp32 | i32; scalars are i32
    axis: str = ""              # strides: the dimension stepped (b, h, n, d)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"argument {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if self.role == "tensor" and self.dtype not in TENSOR_DTYPES:
            raise ValueError(f"tensor {self.name!r}: dtype must be one of {TENSOR_DTYPES}, got {self.dtype!r}")


def tensors(*names: str, dtype: str = "input") -> tuple[Arg, ...]:
    return tuple(Arg(n, "tensor", dtype) for n in names)


def strides(prefix: str, axes: str = "bhnd") -> tuple[Arg, ...]:
    """``stride_<prefix><axis>`` for each axis, e.g. strides("q") → stride_qb ... stride_qd."""
    return tuple(Arg(f"stride_{prefix}{axis}", "stride", axis=axis) for axis in axes)


def sizes(*names: str) -> tuple[Arg, ...]:
    return tuple(Arg(n, "size") for n in names)


def constexprs(*names: str) -> tuple[Arg, ...]:
    return tuple(Arg(n, "constexpr") for n in names)


@dataclass(frozen=True)
class KernelSignature:
    """The name and ordered arguments of one generated ``@triton.jit`` kernel."""

    name: str
    args: tuple[Arg, ...]

    def __post_init__(self):
        names = [a.name for a in self.args]
        if len(set(names)) != len(names):
            raise ValueError(f"kernel {self.name}: argument names repeat: {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args)

    @property
    def constexpr_names(self) -> frozenset[str]:
        return frozenset(a.name for a in self.args if a.role == "constexpr")

    def definition(self) -> str:
        """The ``def`` line as the template prints it: tensors and sizes wrapped at LINE
        characters, a line of strides per tensor, constexprs (annotated) last."""
        groups: list[list[str]] = []
        last = None
        for arg in self.args:
            group = {"stride": arg.name[:-1], "constexpr": "constexpr"}.get(arg.role, "values")
            text = f"{arg.name}: tl.constexpr" if arg.role == "constexpr" else arg.name
            if group != last or len(", ".join(groups[-1] + [text])) + 5 > LINE:
                groups.append([])
            groups[-1].append(text)
            last = group
        lines = "".join(f"    {', '.join(g)},\n" for g in groups)
        return f"def {self.name}(\n{lines}):"

    def check_arguments(self, given) -> None:
        """Raise if a launcher's keyword mapping does not name exactly these arguments."""
        missing = [n for n in self.names if n not in given]
        extra = sorted(set(given) - set(self.names))
        if missing or extra:
            raise TypeError(f"launch of {self.name}: missing arguments {missing}, unknown {extra}")
