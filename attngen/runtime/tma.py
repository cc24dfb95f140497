"""The forward kernel's opt-in Hopper path: K and V tiles through tensor descriptors (TMA).

The generated forward reads K and V through pointers by default. With `USE_TMA` (a constexpr:
`TileConfig.tma`) it builds one device-side tensor descriptor each for its (batch, kv head) and
loads tiles with the tensor memory accelerator (``UTMALDG`` in the SASS for sm_90). The pointer
path stays the default and the only one off Hopper; the TMA path is taken
- with ATTNGEN_TMA=1: its configurations come first in the spill-free choice, or
- with ATTNGEN_AUTOTUNE=1: its configurations are timed beside the pointer ones and the fastest
  is kept (`SoftmaxLauncher.tuned_config`),
and only where `tma_refusal` finds nothing against it: otherwise the pointer path runs and the
reason is logged.
"""
from __future__ import annotations

import dataclasses
import logging

import torch
import triton
import triton.language as tl

from .. import env

log = logging.getLogger("attngen")

MIN_ARCH = 90        # the tensor memory accelerator came with Hopper (sm_90)
ALIGN = 16           # bytes: a descriptor's base and its outer strides


def tma_refusal(arch: str | None, *tensors: tuple[str, torch.Tensor]) -> str | None:
    """Why the TMA path cannot read these (name, tensor) pairs (K and V: (B, H, N, D)) on `arch`
    ('sm_90'; None: Triton's interpreter), or None where it can. A descriptor needs a unit stride
    along the head dim and a 16-byte aligned base (every batch and head start) and row stride."""
    if not hasattr(tl, "make_tensor_descriptor"):
        return f"Triton {triton.__version__} has no tl.make_tensor_descriptor"
    if arch is not None and int(arch.removeprefix("sm_")) < MIN_ARCH:
        return f"{arch} has no tensor memory accelerator (sm_90 and later)"
    for name, t in tensors:
        size = t.element_size()
        if t.stride(-1) != 1:
            return f"{name} has head-dim stride {t.stride(-1)}; a tensor descriptor needs 1"
        for axis, extent, stride in zip(("batch", "head", "sequence"), t.shape, t.stride()):
            # batch and head strides move the base of each (batch, head)'s descriptor: they matter
            # where there is more than one; the sequence stride is the descriptor's row stride
            if (stride * size) % ALIGN and (extent > 1 or axis == "sequence"):
                return (f"{name}'s {axis} stride is {stride * size} bytes; a tensor descriptor needs a "
                        f"multiple of {ALIGN}")
        if t.data_ptr() % ALIGN:
            return f"{name} starts at an address not aligned to {ALIGN} bytes"
    return None


def with_tma(candidates: list, refusal: str | None, *, autotune: bool) -> list:
    """The forward's candidate configurations with the TMA variants where the launch may use them:
    first with ATTNGEN_TMA=1 (the pointer ones follow, should every TMA one spill), after the
    pointer ones when autotuning (timing decides); unchanged otherwise or where `refusal`."""
    if not (env.tma() or autotune):
        return candidates
    if refusal is not None:
        if env.tma():
            log.info("attngen: forward on the pointer path, not TMA: %s", refusal)
        return candidates
    candidates = list(candidates)
    tma = [dataclasses.replace(c, tma=True) for c in candidates]
    return tma + candidates if env.tma() else candidates + tma


def ensure_allocator() -> None:
    """Device-side tensor descriptors live in a global scratch buffer that Triton asks an allocator
    for at launch; set a torch one unless the application has set its own."""
    from triton.runtime import _allocation
    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_scratch)


def _scratch(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")
