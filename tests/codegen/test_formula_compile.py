"""The kernels of every spec in specs/formulas/ (call-time inputs, score formulas, heads in masks,
sinks, Dv != Dqk) compile for sm_80 and sm_90 without a GPU, with no spills: forward, the three
backward kernels and decode, in float16 (the other dtypes with ATTNGEN_SLOW=1)."""
from pathlib import Path

import pytest
import torch

import attngen as A

from test_backward_compile import compile_backward
from test_compile import assert_no_spills
from test_decode_compile import assert_decode_compiles_clean
from tests.codegen.targets import spec_targets

# Specs with inputs or a score formula always; the input-free ones (a head-free mask formula, sinks,
# Dv != Dqk: kernels the shipped specs' compile tests already cover) with ATTNGEN_SLOW=1.
FORMULAS = [pytest.param(s, id=s.name, marks=() if s.inputs or s.score is not None else pytest.mark.slow)
            for s in (A.load_spec(p) for p in sorted(
                (Path(__file__).resolve().parents[2] / "specs" / "formulas").glob("*.yaml")))]
DTYPES = [pytest.param(torch.float16, id="float16"),
          pytest.param(torch.bfloat16, id="bfloat16", marks=pytest.mark.slow),
          pytest.param(torch.float32, id="float32", marks=pytest.mark.slow)]


@pytest.mark.compile
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec, target", spec_targets(FORMULAS))
def test_forward_and_backward(spec, target, dtype):
    assert_no_spills(spec, target, dtype)
    for role, (usage, _) in compile_backward(spec, target, dtype).items():
        assert usage.stack == 0, f"{spec.name} bwd {role} {target}: {usage}"


@pytest.mark.compile
@pytest.mark.parametrize("spec, target", spec_targets(FORMULAS))
def test_decode_fp16(spec, target):
    assert_decode_compiles_clean(spec, target)
