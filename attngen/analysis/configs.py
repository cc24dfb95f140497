"""Tile configurations: block sizes, warps and stages per head dim, dtype and architecture.

Chosen by shape class (padded head dim, dtype, architecture), never by sequence length, so that
varying lengths neither retune nor recompile. Every default here compiles for sm_80 and sm_90 with
no register spills (checked by tests/codegen/test_compile.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

ARCHS = ("sm_80", "sm_90")


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration. `block_m` query rows × `block_n` keys per tile."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tma: bool = False       # forward K/V tiles through tensor descriptors (Hopper's TMA; opt-in)

    def __post_init__(self):
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name}={value} must be a power of two >= 16 (tl.dot needs 16)")

    def as_dict(self) -> dict:
        out = {"block_m": self.block_m, "block_n": self.block_n, "num_warps": self.num_warps,
               "num_stages": self.num_stages}
        return {**out, "tma": True} if self.tma else out


def padded_head_dim(head_dim: int) -> int:
    """The head dim as the kernel tiles it: the next power of two, at least 16."""
    return max(16, 1 << (head_dim - 1).bit_length())


# Candidates per architecture family, dtype class and padded head dim, in order of preference
# (largest tiles first). Register allocation depends on the whole kernel (mask, iteration strategy,
# modifiers), so no single entry is spill-free for every spec: the launcher compiles the candidates
# in order and keeps the first with no spills (`runtime.launch.SoftmaxLauncher.spill_free_config`).
# float32 runs tl.dot in full "ieee" precision on CUDA cores, which needs far more registers.
_16BIT = {
    64: (TileConfig(128, 64, 8, 3), TileConfig(128, 64, 8, 2), TileConfig(64, 64, 4, 2),
         TileConfig(64, 32, 4, 2), TileConfig(32, 32, 4, 2)),
    128: (TileConfig(128, 64, 8, 2), TileConfig(128, 32, 8, 2), TileConfig(64, 64, 8, 2),
          TileConfig(64, 32, 4, 1), TileConfig(32, 32, 4, 2), TileConfig(32, 32, 8, 1)),
    256: (TileConfig(64, 32, 8, 2), TileConfig(32, 32, 8, 2), TileConfig(32, 32, 8, 1),
          TileConfig(16, 32, 4, 1), TileConfig(16, 16, 4, 1)),
}
_FP32 = {
    64: (TileConfig(64, 32, 8, 2), TileConfig(32, 32, 4, 2), TileConfig(32, 16, 4, 1), TileConfig(16, 16, 4, 1)),
    128: (TileConfig(32, 16, 4, 1), TileConfig(16, 16, 4, 1)),
    256: (TileConfig(32, 16, 4, 1), TileConfig(16, 16, 4, 1)),
}
# The interpreter runs every tile op in numpy: mid-sized tiles keep both the op count and the
# wasted padding low at the small sizes it is used for.
INTERPRETER_CONFIG = TileConfig(32, 32, 4, 1)


def arch_family(arch: str) -> str:
    """Hopper and later share one family; Ampere and Ada the other."""
    match = re.fullmatch(r"sm_?(\d+)\d", arch)
    if not match:
        raise ValueError(f"target must look like sm_80 or sm_90, got {arch!r}")
    return "sm_90" if int(match.group(1)) >= 9 else "sm_80"


def fit_tiles(configs, fit: int | None) -> tuple[TileConfig, ...]:
    """`configs` with tiles of at most `fit` rows and keys (None: as they are), in order, without
    repeats. Content-based selection (`select: {block: R}`, R a power of two) needs every tile
    inside one block of R: then a tile's rows share one query block and its keys one key block."""
    if fit is None:
        return tuple(configs)
    out = []
    for c in configs:
        fitted = TileConfig(min(c.block_m, fit), min(c.block_n, fit), c.num_warps, c.num_stages)
        if fitted not in out:
            out.append(fitted)
    return tuple(out)


def candidate_configs(head_dim: int, dtype: torch.dtype, arch: str | None, *,
                      fit: int | None = None) -> tuple[TileConfig, ...]:
    """Tile configurations to try for this shape class, preferred first; `arch` None is the CPU
    interpreter. (Both GPU families share the lists today; the family is part of the key so that a
    measured table for one does not move the other.) `fit`: tiles no larger (`fit_tiles`)."""
    if arch is None:
        return fit_tiles((INTERPRETER_CONFIG,), fit)
    arch_family(arch)                       # refuses a malformed target early
    padded = padded_head_dim(head_dim)
    by_dim = _FP32 if dtype == torch.float32 else _16BIT
    for bound in sorted(by_dim):
        if padded <= bound:
            return fit_tiles(by_dim[bound], fit)
    raise ValueError(f"head_dim {head_dim} is above the largest supported (256)")


def default_config(head_dim: int, dtype: torch.dtype, arch: str | None) -> TileConfig:
    """The preferred configuration of the shape class (before the spill check)."""
    return candidate_configs(head_dim, dtype, arch)[0]


def config_table(head_dim: int) -> dict:
    """Every candidate configuration for a head dim, by target and dtype class, for the header."""
    table = {"interpreter": [INTERPRETER_CONFIG.as_dict()]}
    for arch in ARCHS:
        for label, dtype in (("16-bit", torch.float16), ("float32", torch.float32)):
            table[f"{arch}/{label}"] = [c.as_dict() for c in candidate_configs(head_dim, dtype, arch)]
    return table
