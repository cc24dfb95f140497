"""Masks whose data reads are per-(b, h) scalars walk exact lists built per call from the input
values (analysis/tiles_params.py): the kernels visit exactly the tiles that hold an allowed pair
(tile efficiency 1.000, the kernel's own COUNT_TILES count) for prefix-LM per sequence and a
per-head window, and match the float64 reference (out, lse, dq, dk, dv) at odd sizes, Nq != Nk,
explicit q_offset, GQA, fp32 and bf16."""
import dataclasses
from pathlib import Path

import pytest
import torch

import attngen as A

from test_backward_compile import compile_backward
from test_compile import assert_no_spills
from test_formula_inputs import check_case, qkv

SPECS = Path(__file__).resolve().parents[2] / "specs" / "formulas"
PREFIX_LM = dataclasses.replace(A.load_spec(SPECS / "prefix_lm_per_sequence.yaml"), query_heads=4, kv_heads=2,
                                head_dim=16)
HEAD_WINDOW = A.load_spec(dict(name="head_window", heads={"query": 4, "kv": 2}, head_dim=16,
                               inputs={"window": {"shape": ["Hq"], "dtype": "int32"}}, mask="abs(i - j) <= window[h]"))
VALUES = {"prefix_lm_per_sequence": {"prefix": torch.tensor([0, 40, 77], dtype=torch.int32)},
          "head_window": {"window": torch.tensor([0, 5, 33, 300], dtype=torch.int32)}}


def needed_tiles(spec, inputs, batch, nq, nk, q_offset, bq, bk) -> torch.Tensor:
    """int (B, Hq, query tiles): key tiles holding an allowed pair, from the dense mask."""
    dense = spec.dense_mask(nq, nk, q_offset, inputs=inputs, batch=batch)
    padded = torch.nn.functional.pad(dense, (0, -nk % bk, 0, -nq % bq))
    tiles = padded.reshape(batch, spec.query_heads, padded.shape[2] // bq, bq, padded.shape[3] // bk, bk)
    return tiles.any(5).any(3).sum(-1)


@pytest.mark.parametrize("nq, nk, q_offset", [(75, 91, None), (61, 45, 3)])
@pytest.mark.parametrize("spec", [PREFIX_LM, HEAD_WINDOW], ids=lambda s: s.name)
def test_tile_efficiency_is_one(spec, nq, nk, q_offset):
    batch = 3
    q, k, v = qkv(spec, batch, nq, nk, torch.Generator().manual_seed(0), torch.float32)
    inputs = VALUES[spec.name]
    launcher = A.compile(spec).launcher()
    cfg = launcher.tuned_config(q, k, v, q_offset=q_offset, seg_q=None, seg_k=None, inputs=inputs)
    *_, counts = launcher.forward(q, k, v, q_offset=q_offset, config=cfg, count_tiles=True, inputs=inputs)
    offset = nk - nq if q_offset is None else q_offset
    need = needed_tiles(spec, inputs, batch, nq, nk, offset, cfg.block_m, cfg.block_n)
    visited = counts.reshape(batch, spec.query_heads, -1)       # (b, h, query tile): the kernel's count
    assert torch.equal(visited, need), "a program visited a tile without an allowed pair, or missed one"
    assert int(need.sum()) / int(visited.sum()) == 1.0


@pytest.mark.parametrize("dtype, shape", [
    pytest.param(torch.float32, (27, 19, 4), id="fp32-nq27-nk19-off4"),
    pytest.param(torch.float32, (21, 35, None), id="fp32-nq21-nk35", marks=pytest.mark.slow),
    pytest.param(torch.bfloat16, (23, 29, None), id="bf16-nq23-nk29"),
    pytest.param(torch.bfloat16, (30, 17, 2), id="bf16-nq30-nk17-off2", marks=pytest.mark.slow)])
def test_head_window_against_the_reference(dtype, shape):
    check_case(HEAD_WINDOW, *shape, dtype, seed=5, batch=2)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_prefix_lm_with_explicit_offset(dtype):
    check_case(PREFIX_LM, 33, 20, 6, dtype, seed=2, batch=3)


@pytest.mark.compile
@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, id="float16"),
                                   pytest.param(torch.bfloat16, id="bfloat16", marks=pytest.mark.slow),
                                   pytest.param(torch.float32, id="float32", marks=pytest.mark.slow)])
@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
def test_head_window_kernels_compile_without_spills(target, dtype):
    """The per-(b, h) list rows (shipped prefix-LM: tests/codegen/test_formula_compile.py)."""
    assert_no_spills(HEAD_WINDOW, target, dtype)
    for role, (usage, _) in compile_backward(HEAD_WINDOW, target, dtype).items():
        assert usage.stack == 0, f"{HEAD_WINDOW.name} bwd {role} {target}: {usage}"


@pytest.mark.slow
def test_a_read_at_constant_indices_builds_one_shared_set():
    """`lim[0]` reads no axis: one set of lists (no list rows), still built from the call's values."""
    spec = A.load_spec(dict(name="const_read", heads={"query": 4, "kv": 2}, head_dim=16,
                            inputs={"lim": {"shape": [2], "dtype": "int32"}}, mask="j <= i or j < lim[0]"))
    check_case(spec, 27, 19, 4, torch.float32)
