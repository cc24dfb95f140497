"""The launcher base: one generated source, its kernels by role, launched from keyword mappings.

Every launcher (forward, backward, decode, linear) is a `KernelLauncher` over one
`GeneratedKernel`. What it does once, and keeps:
- the generated module (imported once, not re-hashed per call) and each kernel by role and by
  where it runs (compiled, or wrapped for Triton's interpreter);
- the tile configuration chosen per shape class: on a GPU, `launch_choice` compiles each
  candidate exactly as the launch compiles it (Triton's JIT `warmup` on the call's own arguments,
  so the same specialisation) and keeps the first without spills; that compiled kernel stays in
  Triton's cache and is the one the launch then runs. Ahead-of-time compilation for a target
  without a GPU (`compile_launch`, for `compile_for` and `attngen emit --stage`) keeps what it
  compiles too (`compiled`);
- a check, on the first launch of each kernel, that the launcher's keyword mapping names exactly
  the kernel's declared arguments (`KernelSignature.check_arguments`).
A warm launch is: build the keyword mapping, `launch_kernel`. Nothing symbolic runs on it.
"""
from __future__ import annotations

import logging

import torch

from .. import env, progress
from ..errors import ShapeError
from ..codegen.aot import compile_as_launched, first_without_spills, resource_usage
from ..codegen.emit import GeneratedKernel
from .loader import interpreted, load_source

log = logging.getLogger("attngen")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_kernel_dtypes(q, k, v) -> None:
    """q in a dtype the kernels take; k and v in q's dtype, on q's device (ShapeError naming them)."""
    if q.dtype not in DTYPES:
        raise ShapeError(f"q has dtype {q.dtype}; attngen kernels take float16, bfloat16 or float32")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ShapeError(f"{name} has dtype {t.dtype}, expected q's dtype {q.dtype}")
        if t.device != q.device:
            raise ShapeError(f"{name} is on {t.device}, expected q's device {q.device}")
# The sequence length kernels are judged at ahead of time unless told (`attngen emit --n`): long
# enough for every tile size, divisible by 16 as most real lengths are.
AOT_LENGTH = 4096


def ids_int32(ids: torch.Tensor, name: str, device=None) -> torch.Tensor:
    """`ids` (segment ids, document ids) as int32 on `device`: the kernels read them as int32, so
    ids outside its range are refused naming `name` rather than wrapped. Wider integer ids cost
    one min/max (a device sync on a GPU)."""
    if ids.dtype in (torch.int64, torch.uint32, torch.uint64) and ids.numel():
        low, high = (int(x) for x in torch.aminmax(ids))
        if low < _INT32.min or high > _INT32.max:
            raise ShapeError(f"{name} holds ids {low}..{high}, outside int32: the kernels read them as int32")
    return ids.to(device=device if device is not None else ids.device, dtype=torch.int32)


_INT32 = torch.iinfo(torch.int32)


def meta_tensor(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """A tensor with a shape and a dtype but no storage: what ahead-of-time compilation passes for
    q, k, v and the outputs (its address, 0, is aligned like a fresh CUDA allocation)."""
    return torch.empty(shape, dtype=dtype, device="meta")


def specialisation_key(args: dict) -> tuple:
    """What a compiled kernel depends on in its arguments: tensors' dtypes and alignment, every
    other value (Triton's JIT specialises on them)."""
    return tuple(sorted((name, (str(v.dtype), v.data_ptr() % 16 == 0) if isinstance(v, torch.Tensor) else v)
                        for name, v in args.items()))


def launch_kernel(kernel, grid, args: dict, num_warps: int, num_stages: int) -> None:
    """The one place a generated kernel is launched (benchmarks/host_overhead.py stubs it out to
    time everything else)."""
    kernel[grid](**args, num_warps=num_warps, num_stages=num_stages)


def cdiv(a: int, b: int) -> int:
    """Ceiling division on the host (triton.cdiv is a constexpr function: slow to call from Python)."""
    return -(-a // b)


def warm_kernel(kernel, grid, args: dict, num_warps: int, num_stages: int):
    """Compile `kernel` for these arguments as a launch would, without launching it: Triton's JIT
    warmup (the same specialisation and cache key as the launch, which then reuses the result).
    Returns the CompiledKernel (its cubin tells registers and spills)."""
    return kernel.warmup(grid=grid, num_warps=num_warps, num_stages=num_stages, **args)


def is_interpreted(device: torch.device) -> bool:
    return device.type != "cuda" or env.force_interpreter()


_ARCHS: dict = {}


def architecture(device: torch.device) -> str | None:
    """'sm_XY' for a CUDA device, None where the interpreter runs (asked of the driver once per
    device)."""
    if is_interpreted(device):
        return None
    key = device.index
    if key not in _ARCHS:
        major, minor = torch.cuda.get_device_capability(device)
        _ARCHS[key] = f"sm_{major}{minor}"
    return _ARCHS[key]


def poison(*tensors: torch.Tensor, interpreted: bool) -> None:
    """Fill outputs with NaN before a launch, so that an element a kernel forgets to write fails
    the check against the reference: always under the interpreter (the tests' path), on a GPU with
    ATTNGEN_POISON=1 (the gpu tier), where fresh memory may still hold an earlier correct result."""
    if interpreted or env.poison_outputs():
        for t in tensors:
            t.fill_(float("nan"))


def dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs must not silently drop to tf32 on GPUs: fp32 results are held to 1e-4.
    return "ieee" if dtype == torch.float32 else "tf32"


class KernelLauncher:
    """Runs the kernels of one generated source (see the module docstring)."""

    def __init__(self, generated: GeneratedKernel):
        self.generated = generated
        self.spec = generated.spec
        self.graph = generated.graph
        self.signatures = generated.signatures
        self._module = None
        self._kernels: dict = {}
        self._checked: set = set()
        self._choices: dict = {}
        self.compiled: dict = {}        # (role, target, warps, stages, specialisation) → CompiledKernel

    # -- kernels --------------------------------------------------------------------------------
    def jit_function(self, role: str):
        if self._module is None:
            self._module = load_source(self.generated.source)
        return getattr(self._module, self.signatures[role].name)

    def kernel(self, role: str, interpret: bool):
        """The kernel of `role`, launchable as ``kernel[grid](**args)``, compiled or interpreted."""
        key = (role, interpret)
        kernel = self._kernels.get(key)
        if kernel is None:
            fn = self.jit_function(role)
            kernel = self._kernels[key] = interpreted(fn) if interpret else fn
        return kernel

    def launch(self, role: str, grid, args: dict, *, num_warps: int, num_stages: int,
               interpret: bool) -> None:
        if role not in self._checked:
            self.signatures[role].check_arguments(args)
            self._checked.add(role)
            if interpret:           # seconds per call on CPU: say so the first time a person waits
                with progress.step(f"{self.spec.name}: first run of the {role} kernel under "
                                   f"Triton's interpreter (CPU)"):
                    launch_kernel(self.kernel(role, interpret), grid, args, num_warps, num_stages)
                return
        launch_kernel(self.kernel(role, interpret), grid, args, num_warps, num_stages)

    # -- ahead of time ------------------------------------------------------------------------
    def compile_launch(self, role: str, target: str, arguments, cfg):
        """Kernel `role` compiled for a GPU `target` without a GPU, exactly as a launch with
        `arguments(cfg)` (→ grid, keyword arguments, num_warps, num_stages) would compile it
        (`aot.compile_as_launched`); kept, so that the configuration search and `compile_for`
        never compile the same kernel twice."""
        _, args, num_warps, num_stages = arguments(cfg)
        if role not in self._checked:
            self.signatures[role].check_arguments(args)
            self._checked.add(role)
        key = (role, target, num_warps, num_stages, specialisation_key(args))
        if key not in self.compiled:
            with progress.step(f"{self.spec.name}: compiling the {role} kernel for {target} "
                               f"({_config_words(getattr(args.get('q'), 'dtype', None), args, num_warps, num_stages)})"):
                self.compiled[key] = compile_as_launched(self.jit_function(role), args, target=target,
                                                         num_warps=num_warps, num_stages=num_stages)
        return self.compiled[key]

    def choose(self, key, candidates, usage_of, what: str):
        """The first of `candidates` whose compiled kernel has no spills (`usage_of(candidate)`
        compiles and measures it), decided once per `key`."""
        if key not in self._choices:
            chosen, usage = first_without_spills(candidates, usage_of)
            if usage.spills:
                log.warning("%s: every tile configuration spills (%s); using %s", what, key, chosen)
            self._choices[key] = chosen
        return self._choices[key]

    def launch_choice(self, key, role: str, candidates, arguments, what: str):
        """On a GPU, the first of `candidates` whose kernel `role`, compiled for this call's own
        arguments (`arguments(candidate)` → (grid, keyword arguments, num_warps, num_stages)) as
        the launch compiles it, has no spills; decided once per `key`. The kernels compiled here
        stay in Triton's cache: the launch that follows runs the chosen one, not a recompilation."""
        return self.choose(key, candidates, lambda cfg: self.launch_usage(role, arguments, cfg), what)

    def launch_usage(self, role: str, arguments, cfg):
        """Registers and spills of kernel `role` compiled as this call's launch at `cfg` compiles it."""
        grid, args, num_warps, num_stages = arguments(cfg)
        with progress.step(f"{self.spec.name}: compiling the {role} kernel for this GPU "
                           f"({_config_words(getattr(args.get('q'), 'dtype', None), args, num_warps, num_stages)})"):
            return resource_usage(warm_kernel(self.jit_function(role), grid, args, num_warps, num_stages))


def _config_words(dtype: torch.dtype | None, constexprs: dict, num_warps: int, num_stages: int) -> str:
    """'float16, BLOCK_M=128 BLOCK_N=64 num_warps=8 num_stages=3': which candidate is compiling."""
    words = [str(dtype).removeprefix("torch.") + ","] if dtype is not None else []
    words += [f"{name}={constexprs[name]}" for name in sorted(constexprs) if name.startswith("BLOCK_")]
    return " ".join(words + [f"num_warps={num_warps}", f"num_stages={num_stages}"])
