"""The lowering of a softmax spec's backward: IR build, IR passes, then the passes that need analysis.

    lower_backward(spec) = run_passes(build_backward(spec), IR_PASSES + BACKWARD_ANALYSIS_PASSES)

Two kernels walk tiles (FlashAttention-2): the query-major dQ kernel walks key tiles exactly as the
forward does (`choose_iteration`: ranges from L(i), R(i), or the block map's lists); the key-major
dK/dV kernel walks query tiles, from the transposed interval [Linv(j), Rinv(j)]
(`intervals.query_interval`) where the mask is an interval, else from the transposed block map.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch

from ..errors import CompileError
from ..ir.graph import Graph
from ..ir.passes import run_passes
from ..ir.softmax import IR_PASSES
from ..ir.softmax_backward import build_backward
from ..spec import Spec
from .configs import ARCHS, TileConfig, fit_tiles, padded_head_dim
from .intervals import query_interval
from .lowering import choose_iteration


@dataclass(frozen=True)
class BackwardConfig:
    """Tiles of the backward kernels, each a `TileConfig`:

    - `key_major` (the dK/dV kernel): a program owns ``block_n`` keys of one kv head and steps
      through ``block_m`` query rows at a time, for each query head of the group;
    - `query_major` (the dQ kernel): a program owns ``block_m`` query rows and steps through
      ``block_n`` keys at a time.
    The owned side is the long one: its accumulators stay in registers while the other side streams.
    (The delta preprocess streams rows only: `preprocess_rows`.)
    """

    key_major: TileConfig
    query_major: TileConfig

    def as_dict(self) -> dict:
        return {"key_major": self.key_major.as_dict(), "query_major": self.query_major.as_dict()}


def _tiles(*configs: tuple) -> tuple[TileConfig, ...]:
    return tuple(TileConfig(*c) for c in configs)


# Candidates per kernel, dtype class and padded head dim, preferred (largest) first; TileConfig
# fields are (block_m, block_n, num_warps, num_stages). As for the forward (`configs.py`), register
# allocation depends on the whole kernel, so on a GPU the launcher keeps, per kernel, the first
# candidate that compiles with no spills (`BackwardLauncher.spill_free_config`), or, where none
# does, the one that spills least. Both kernels carry more live tiles than the forward (dO, dP, dS
# and two accumulators in dK/dV), so their tiles are smaller than the forward's at the same head dim.
# tests/codegen/test_backward_compile.py compiles every shipped spec and reports the choices.
_KEY_MAJOR = {
    "16-bit": {64: _tiles((32, 128, 8, 2), (32, 64, 8, 2), (32, 64, 4, 2), (32, 32, 4, 2), (16, 32, 4, 1)),
               # 32x64 with one stage: the GQA sliding-window dK/dV keeps wgmma under Triton 3.6,
               # where two stages spill (8 bytes) and 64x32 falls back to mma.sync
               128: _tiles((32, 64, 8, 2), (32, 64, 8, 1), (64, 32, 8, 2), (32, 32, 8, 2), (16, 32, 4, 2),
                           (16, 16, 4, 1)),
               256: _tiles((32, 32, 8, 1), (16, 32, 8, 2), (16, 16, 8, 1), (16, 16, 4, 1))},
    "float32": {64: _tiles((32, 32, 4, 1), (32, 32, 8, 1), (16, 32, 4, 1), (16, 16, 4, 1)),
                128: _tiles((32, 32, 8, 1), (16, 32, 4, 1), (16, 16, 4, 1), (16, 16, 8, 1)),
                256: _tiles((16, 16, 4, 1), (16, 16, 8, 1))},
}
_QUERY_MAJOR = {
    "16-bit": {64: _tiles((128, 32, 8, 2), (64, 32, 8, 2), (64, 32, 4, 2), (32, 32, 4, 2), (32, 16, 4, 1)),
               128: _tiles((64, 32, 8, 2), (32, 64, 8, 2), (32, 32, 8, 2), (32, 32, 4, 2), (16, 16, 4, 1)),
               256: _tiles((32, 32, 8, 1), (16, 32, 8, 1), (16, 16, 8, 1), (16, 16, 4, 1))},
    "float32": {64: _tiles((32, 32, 4, 1), (32, 32, 8, 1), (32, 16, 4, 1), (16, 16, 8, 1)),
                128: _tiles((32, 32, 8, 1), (32, 16, 4, 1), (16, 16, 4, 1)),
                256: _tiles((16, 16, 8, 1), (16, 16, 4, 1))},
}
# The interpreter: mid-sized tiles, as for the forward.
INTERPRETER_BACKWARD_CONFIG = BackwardConfig(TileConfig(32, 32, 4, 1), TileConfig(32, 32, 4, 1))
ROLES = ("dkdv", "dq")


def candidate_backward_configs(head_dim: int, dtype: torch.dtype, arch: str | None,
                               role: str, *, fit: int | None = None) -> tuple[TileConfig, ...]:
    """Tile configurations to try for one tile-walking kernel (`role` dkdv or dq) of this shape
    class, preferred first; `arch` None is the CPU interpreter. `fit`: tiles no larger
    (`configs.fit_tiles`, for content-based selection)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if arch is None:
        cfg = INTERPRETER_BACKWARD_CONFIG
        return fit_tiles((cfg.key_major if role == "dkdv" else cfg.query_major,), fit)
    table = _KEY_MAJOR if role == "dkdv" else _QUERY_MAJOR
    by_dim = table["float32" if dtype == torch.float32 else "16-bit"]
    padded = padded_head_dim(head_dim)
    for bound in sorted(by_dim):
        if padded <= bound:
            return fit_tiles(by_dim[bound], fit)
    raise ValueError(f"head_dim {head_dim} is above the largest supported (256)")


def preprocess_rows(head_dim: int) -> int:
    """Query rows per program of the delta preprocess (4 warps): a streaming row sum, so tiles of
    about 2048 elements, which compile spill-free for every head dim."""
    return max(16, 2048 // padded_head_dim(head_dim))


def default_backward_config(head_dim: int, dtype: torch.dtype, arch: str | None, *,
                            fit: int | None = None) -> BackwardConfig:
    """The preferred configuration of the shape class (before the spill check)."""
    return BackwardConfig(*(candidate_backward_configs(head_dim, dtype, arch, role, fit=fit)[0] for role in ROLES))


def backward_config_table(head_dim: int) -> dict:
    """Every candidate configuration for a head dim, by kernel, target and dtype class (as the
    forward's `configs.config_table`), for the kernel's header."""
    table = {}
    for role in ROLES:
        interpreter = candidate_backward_configs(head_dim, None, None, role)
        table[f"{role} interp"] = [c.as_dict() for c in interpreter]
        for arch in ARCHS:
            for label, dtype in (("half", torch.float16), ("fp32", torch.float32)):
                table[f"{role} {arch}/{label}"] = [
                    c.as_dict() for c in candidate_backward_configs(head_dim, dtype, arch, role)]
    return table


def choose_query_ranges(g: Graph) -> Graph:
    """Key-major programs of interval masks take query-tile ranges from [Linv(j), Rinv(j)]."""
    if g.facts["iteration"] != "ranges":
        return g.with_facts(query_bounds=None)
    if "mask" not in g:
        return g.with_facts(query_bounds=(-sympy.oo, sympy.oo))
    bounds = query_interval(g.node("mask").attrs["predicate"])
    if bounds is None:       # key_interval and query_interval accept the same predicates
        raise CompileError(f"{g.label}: interval mask without a transposed interval")
    return g.with_facts(query_bounds=tuple(bounds))


def choose_backward_tiles(g: Graph) -> Graph:
    """Backward tiles by shape class (padded head dim, dtype, arch), per kernel: the table travels
    with the IR."""
    head_dim = g.facts["head_dim"]
    return g.with_facts(block_d=padded_head_dim(head_dim), tile_configs=backward_config_table(head_dim))


BACKWARD_ANALYSIS_PASSES = (choose_iteration, choose_query_ranges, choose_backward_tiles)
BACKWARD_PASSES = IR_PASSES + BACKWARD_ANALYSIS_PASSES


def lower_backward(spec: Spec, *, check: bool | None = None) -> Graph:
    if spec.kind != "softmax":
        raise ValueError(f"lower_backward lowers softmax specs; {spec.name!r} is {spec.kind}")
    return run_passes(build_backward(spec), BACKWARD_PASSES, check=check)
