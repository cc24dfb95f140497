"""Ahead-of-time compilation for real GPUs, with no GPU: `triton.compile` for a GPUTarget.

Used by `attngen emit --stage ttir|ttgir|ptx` and by the tests that compile every shipped spec for
sm_80 and sm_90 and read the cubin's resource usage (registers, shared memory, spills) with the
``cuobjdump`` that Triton's NVIDIA backend ships.

Arguments are typed from the kernel's declared signature (`codegen/signature.py`): tensors by
their declared dtype (the input dtype, float32 or int32), strides and sizes as 32-bit integers.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ..errors import CompileError
from .signature import KernelSignature

DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
STAGES = ("ttir", "ttgir", "llir", "ptx", "cubin")


def parse_arch(target: str) -> int:
    match = re.fullmatch(r"sm_?(\d+)", target)
    if not match:
        raise ValueError(f"target must look like sm_80 or sm_90, got {target!r}")
    return int(match.group(1))


def specializations(signature: KernelSignature, types: dict) -> tuple[dict, dict]:
    """What Triton's JIT would see for contiguous inputs: unit head-dim strides become the
    constant 1, and pointers are 16-byte aligned. Without this, every element would carry its own
    64-bit address and the kernel would spill."""
    unit = {a.name: 1 for a in signature.args if a.role == "stride" and a.axis == "d" and types[a.name] == "i32"}
    aligned = {(signature.names.index(name),): [["tt.divisibility", 16]]
               for name, kind in types.items() if kind.startswith("*")}
    return unit, aligned


def compile_for_gpu(kernel, signature: KernelSignature, *, dtype: torch.dtype, constexprs: dict,
                    target: str = "sm_90", num_warps: int = 4, num_stages: int = 2):
    """A Triton CompiledKernel (asm: ttir, ttgir, llir, ptx, cubin) of the JIT function `kernel`,
    declared by `signature`, for `target`."""
    if tuple(kernel.arg_names) != signature.names:
        raise CompileError(f"{signature.name}: the generated function's arguments {kernel.arg_names} are not "
                           f"its declared signature {list(signature.names)}")
    arch = parse_arch(target)
    types = signature.aot_types(DTYPE_NAMES[dtype], constexprs)
    unit, aligned = specializations(signature, types)
    types.update({name: "constexpr" for name in unit})
    source = ASTSource(fn=kernel, signature=types, constexprs={**constexprs, **unit}, attrs=aligned)
    try:
        return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    except Exception as exc:   # Triton raises many types; name the kernel and the target
        raise CompileError(f"{kernel.__name__} failed to compile for {target}: {exc}") from exc


@dataclass(frozen=True)
class ResourceUsage:
    registers: int
    shared: int
    local: int      # bytes of local memory per thread: register spills and stack arrays
    stack: int
    dynamic_shared: int = 0     # bytes of shared memory Triton allocates at launch

    @property
    def spills(self) -> int:
        """Bytes of local memory and stack frame: register spills (0 for a healthy kernel)."""
        return self.local + self.stack


def _cuobjdump() -> Path:
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found at {path} (Triton's NVIDIA backend ships it)")
    return path


def resource_usage(compiled) -> ResourceUsage:
    """Registers, shared memory and local memory (spills) of the compiled kernel, from its cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([str(_cuobjdump()), "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    if "REG" not in fields:
        raise CompileError(f"could not read resource usage from cuobjdump:\n{text}")
    return ResourceUsage(int(fields["REG"]), int(fields["SHARED"]), int(fields["LOCAL"]),
                         int(fields["STACK"]), int(compiled.metadata.shared))


class JoinedAsm:
    """``asm[stage]`` of several compiled kernels: their texts one after the other."""

    _COMMENT = {"llir": ";"}

    def __init__(self, kernels: dict):
        self._kernels = kernels

    def __getitem__(self, stage: str) -> str:
        if stage == "cubin":
            raise KeyError("several kernels are several cubins: read .kernels[role].asm['cubin']")
        mark = self._COMMENT.get(stage, "//")
        return "\n".join(f"{mark} ---- {role}: {compiled.name} ----\n{compiled.asm[stage]}"
                         for role, compiled in self._kernels.items())


@dataclass(frozen=True)
class CompiledKernels:
    """The kernels of one generated source compiled ahead of time: `kernels` maps each role to its
    Triton CompiledKernel, in launch order; `asm[stage]` joins their text stages (what
    `attngen emit --stage ptx` prints for a source holding several kernels)."""

    kernels: dict

    @property
    def asm(self) -> JoinedAsm:
        return JoinedAsm(self.kernels)


def first_without_spills(candidates, usage_of):
    """(config, usage): the first candidate whose compiled kernel has no spills, else the one that
    spills least. `usage_of(config)` compiles and returns its ResourceUsage. Register allocation
    depends on the whole kernel, so no fixed table can promise a spill-free choice for every spec."""
    seen = {}
    for cfg in candidates:
        seen[cfg] = usage_of(cfg)
        if seen[cfg].spills == 0:
            return cfg, seen[cfg]
    best = min(seen, key=lambda c: seen[c].spills)
    return best, seen[best]
