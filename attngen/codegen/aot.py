"""Ahead-of-time compilation for real GPUs, with no GPU: the kernel a launch would compile.

`compile_as_launched` compiles a generated kernel for a GPUTarget from the keyword arguments a
launcher builds for one call (on meta tensors), through Triton's own JIT binder, so that the
specialisation is the launch's. Used by the configuration search without a GPU, by
`attngen emit --stage ttir|ttgir|llir|ptx|sass` and by the tests that compile every shipped spec
for sm_80 and sm_90 and read the cubin's resource usage (registers, shared memory, spills) with
the ``cuobjdump`` and machine code with the ``nvdisasm`` that Triton's NVIDIA backend ships.
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
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from ..errors import CompileError

DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
STAGES = ("ttir", "ttgir", "llir", "ptx", "cubin", "sass")


def parse_arch(target: str) -> int:
    match = re.fullmatch(r"sm_?(\d+)", target)
    if not match:
        raise ValueError(f"target must look like sm_80 or sm_90, got {target!r}")
    return int(match.group(1))


def compile_as_launched(kernel, args: dict, *, target: str = "sm_90", num_warps: int = 4,
                        num_stages: int = 2):
    """The kernel Triton's JIT compiles for a launch of `kernel` with the keyword arguments `args`
    (every argument, constexprs included) on a GPU `target` — built here without a GPU.

    The JIT's own binder decides the specialisation from the argument values, exactly as at a
    launch: integers equal to 1 become constants, integers divisible by 16 and 16-byte-aligned
    pointers carry divisibility hints (vectorised loads, cp.async), integers past int32 widen.
    Tensors may live on the meta device: only their dtype and address alignment matter, and a meta
    tensor's address (0) is aligned, as a fresh CUDA allocation is. This is the one function that
    judges kernels ahead of time (the configuration search without a GPU, the compile tests and
    `attngen emit --stage`), so what it judges is what a launch runs.
    """
    arch = GPUTarget("cuda", parse_arch(target), 32)
    try:
        backend = make_backend(arch)
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        options = dict(num_warps=num_warps, num_stages=num_stages)
        bound, specialisation, options = binder(**args, **options)
        options, signature, constexprs, attrs = kernel._pack_args(
            backend, {**args, "num_warps": num_warps, "num_stages": num_stages}, bound, specialisation, options)
        return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=arch,
                              options=options.__dict__)
    except Exception as exc:   # Triton raises many types; name the kernel and the target
        raise CompileError(f"{kernel.__name__} failed to compile for {target}: {exc}") from exc


def sass(compiled) -> str:
    """The machine code of a compiled kernel as ``nvdisasm -c`` prints it (with its .L_x_ labels)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([str(_nvidia_tool("nvdisasm")), "-c", f.name], capture_output=True, text=True,
                              check=True).stdout


_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"\bBRA\b.*?\(?(\.L_x_\d+)\)?")


def sass_loops(text: str) -> list[int]:
    """The instruction count of each loop in SASS text (as `sass` prints it), in program order: a
    loop is a label and a later branch back to it; its body is the instructions in between,
    the branch included."""
    seen: dict[str, int] = {}
    loops = []
    count = 0
    for line in text.splitlines():
        label = _LABEL.match(line)
        if label:
            seen[label.group(1)] = count
            continue
        instruction = _INSTRUCTION.match(line)
        if not instruction:
            continue
        count += 1
        branch = _BRANCH.search(instruction.group(1))
        if branch and branch.group(1) in seen:
            loops.append(count - seen[branch.group(1)])
    return loops


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


def _nvidia_tool(name: str) -> Path:
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found at {path} (Triton's NVIDIA backend ships it)")
    return path


def resource_usage(compiled) -> ResourceUsage:
    """Registers, shared memory and local memory (spills) of the compiled kernel, from its cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([str(_nvidia_tool("cuobjdump")), "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    if "REG" not in fields:
        raise CompileError(f"could not read resource usage from cuobjdump:\n{text}")
    return ResourceUsage(int(fields["REG"]), int(fields["SHARED"]), int(fields["LOCAL"]),
                         int(fields["STACK"]), int(compiled.metadata.shared))


def stage_text(compiled, stage: str) -> str:
    """One compiled kernel's text at `stage` (ttir, ttgir, llir, ptx, or sass from its cubin)."""
    return sass(compiled) if stage == "sass" else compiled.asm[stage]


def launch_config(compiled) -> str:
    """``BLOCK_M=.. BLOCK_N=.. num_warps=.. num_stages=..`` of a compiled kernel (the tile constants
    it has: BLOCK_M, BLOCK_N or CHUNK), then ``USE_TMA=True`` where it reads through descriptors."""
    names = compiled.src.fn.arg_names
    constants = {names[path[0]]: value for path, value in compiled.src.constants.items() if len(path) == 1}
    tiles = [f"{name}={constants[name]}" for name in ("BLOCK_M", "BLOCK_N", "CHUNK") if name in constants]
    tma = ["USE_TMA=True"] if constants.get("USE_TMA") else []      # the forward's opt-in TMA path
    return " ".join([*tiles, f"num_warps={compiled.metadata.num_warps}",
                     f"num_stages={compiled.metadata.num_stages}", *tma])


def header_lines(kernels: dict) -> list[str]:
    """The ``# config:`` and ``# resources:`` lines of compiled kernels ({role: CompiledKernel});
    with several kernels each line names its kernel."""
    lines = []
    for role, compiled in kernels.items():
        usage = resource_usage(compiled)
        named = f" ({role}: {compiled.name})" if len(kernels) > 1 else ""
        lines += [f"# config: {launch_config(compiled)}{named}",
                  f"# resources: registers={usage.registers} shared={usage.dynamic_shared + usage.shared} "
                  f"spills={usage.spills}{named}"]
    return lines


class JoinedAsm:
    """``asm[stage]`` of several compiled kernels: their texts one after the other."""

    _COMMENT = {"llir": ";"}

    def __init__(self, kernels: dict):
        self._kernels = kernels

    def __getitem__(self, stage: str) -> str:
        if stage == "cubin":
            raise KeyError("several kernels are several cubins: read .kernels[role].asm['cubin']")
        mark = self._COMMENT.get(stage, "//")
        return "\n".join(f"{mark} ---- {role}: {compiled.name} ----\n{stage_text(compiled, stage)}"
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
