"""Tile configurations: block sizes, warps and stages per head dim, dtype and architecture.

Chosen by shape class (padded head dim, dtype, architecture), never by sequence length, so that
varying lengths neither retune nor recompile. Every default here compiles for sm_80 and sm_90 with
no register spills (checked by tests/codegen/test_compile.py).
"""
from __future__ import annotations

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

    def __post_init__(self):
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name}={value} must be a power of two >= 16 (tl.dot needs 16)")

    def as_dict(self) -> dict:
        return {"block_m": self.block_m, "block_n": self.block_n, "num_warps": self.num_warps,
                "num_stages": self.num_stages}


def padded_head_dim(head_dim: int) -> int:
    """The head dim as the kernel tiles it: the next power of two, at least 16."""
    return max(16, 1 << (head_dim - 1).bit_length())


# (padded head dim upper bound, 16-bit config, fp32 config), for GPUs.
_GPU_TABLE = (
    (64, TileConfig(128, 64, 4, 3), TileConfig(64, 32, 4, 2)),
    (128, TileConfig(128, 64, 8, 3), TileConfig(64, 32, 4, 2)),
    (256, TileConfig(64, 32, 4, 2), TileConfig(32, 32, 4, 1)),
)
# The interpreter runs every tile op in numpy: mid-sized tiles keep both the op count and the
# wasted padding low at the small sizes it is used for.
INTERPRETER_CONFIG = TileConfig(32, 32, 4, 1)


def default_config(head_dim: int, dtype: torch.dtype, arch: str | None) -> TileConfig:
    """The tile configuration for this shape class; `arch` None means the CPU interpreter."""
    if arch is None:
        return INTERPRETER_CONFIG
    padded = padded_head_dim(head_dim)
    for bound, half, single in _GPU_TABLE:
        if padded <= bound:
            return single if dtype == torch.float32 else half
    raise ValueError(f"head_dim {head_dim} is above the largest supported (256)")


def config_table(head_dim: int) -> dict:
    """Every default configuration for a head dim, for the kernel's header."""
    table = {"interpreter": INTERPRETER_CONFIG.as_dict()}
    for arch in ARCHS:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            table[f"{arch}/{str(dtype).removeprefix('torch.')}"] = default_config(head_dim, dtype, arch).as_dict()
    return table
