"""Ahead-of-time compilation for real GPUs, with no GPU: `triton.compile` for a GPUTarget.

Used by `attngen emit --stage ttir|ttgir|ptx` and by the tests that compile every shipped spec for
sm_80 and sm_90 and read the cubin's resource usage (registers, shared memory, spills) with the
``cuobjdump`` that Triton's NVIDIA backend ships.

Kernel arguments are typed by naming convention, shared by every template: the tensors q/k/v/out/
dout/dq/dk/dv carry the input dtype; names listed in `FLOAT32_POINTERS` point to float32; names in
`INT32_POINTERS` or ending in ``_table``, ``_ptr``, ``_idx`` point to int32; every other non-constexpr
argument is a 32-bit integer scalar.
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

DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
INPUT_POINTERS = {"q", "k", "v", "out", "dout", "dq", "dk", "dv", "k_cache", "v_cache",
                  "partial_out"}
FLOAT32_POINTERS = {"lse", "alibi_slopes", "delta", "partial_lse", "dq_accum", "features",
                    "state", "state_z", "lse_out", "chunk_state", "chunk_norm", "chunk_max",
                    "grad_state", "grad_norm", "grad_max", "row_rden", "row_dden", "row_max",
                    "split_out", "split_lse"}
INT32_POINTERS = {"seg_q", "seg_k", "tile_counts", "cache_seqlens", "block_table"}
STAGES = ("ttir", "ttgir", "llir", "ptx", "cubin")


def parse_arch(target: str) -> int:
    match = re.fullmatch(r"sm_?(\d+)", target)
    if not match:
        raise ValueError(f"target must look like sm_80 or sm_90, got {target!r}")
    return int(match.group(1))


def signature_of(kernel, dtype: torch.dtype, constexprs: dict) -> dict:
    """The ASTSource signature of a generated kernel, by the naming convention above."""
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in INPUT_POINTERS:
            sig[name] = "*" + DTYPE_NAMES[dtype]
        elif name in FLOAT32_POINTERS:
            sig[name] = "*fp32"
        elif name in INT32_POINTERS or name.endswith(("_table", "_ptr", "_idx")):
            sig[name] = "*i32"
        else:
            sig[name] = "i32"
    return sig


def specializations(kernel, signature: dict) -> tuple[dict, dict]:
    """What Triton's JIT would see for contiguous inputs: unit last-dim strides (``stride_*d``,
    ``stride_*n`` of 1-D tables) become the constant 1, and pointers are 16-byte aligned. Without
    this, every element would carry its own 64-bit address and the kernel would spill."""
    unit = {name: 1 for name in kernel.arg_names
            if signature.get(name) == "i32" and re.fullmatch(r"stride_\w*d", name)}
    aligned = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]]
               for name, kind in signature.items() if kind.startswith("*")}
    return unit, aligned


def compile_for_gpu(kernel, *, dtype: torch.dtype, constexprs: dict, target: str = "sm_90",
                    num_warps: int = 4, num_stages: int = 2):
    """A Triton CompiledKernel (asm: ttir, ttgir, llir, ptx, cubin) for `target`."""
    arch = parse_arch(target)
    signature = signature_of(kernel, dtype, constexprs)
    unit, aligned = specializations(kernel, signature)
    signature.update({name: "constexpr" for name in unit})
    source = ASTSource(fn=kernel, signature=signature, constexprs={**constexprs, **unit}, attrs=aligned)
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
