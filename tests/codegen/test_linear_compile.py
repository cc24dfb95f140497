"""Linear attention kernels compile for sm_80 and sm_90 without a GPU, with no register spills.

Every kernel of the forward (states, output pass) and of the backward (states, dq, reverse state
pass, dk/dv) of every shipped linear spec, at the default chunk table: the cubin's resource usage
must show no local memory and no stack frame (ptxas puts spills in the stack frame).
"""
import pytest
import torch

import attngen as A
from attngen.codegen.aot import resource_usage
from tests.codegen.targets import TARGETS, spec_targets

LINEAR = [s for s in A.load_specs("specs") if s.kind == "linear"]


# The one known exception, measured on the kernel as a launch compiles it (Triton 3.9; not 3.6):
# relu's float32 state pass keeps a stack frame of 8 (sm_80) or 16 (sm_90) bytes at every chunk
# configuration tried (16/8/1, 16/8/2, 16/4/1, 16/4/2, 16/2/1, 32/4/1), with 64 registers and no
# local memory. float32 runs these dots on CUDA cores; the 16-bit kernels have no stack anywhere.
STACK_ALLOWED = {("linear_relu", torch.float32, "states"): 16}


def assert_no_spills(spec, target, dtype, kernel):
    for role, compiled in A.compile(spec).compile_for(target, dtype, kernel=kernel).kernels.items():
        usage = resource_usage(compiled)
        allowed = STACK_ALLOWED.get((spec.name, dtype, role), 0)
        assert usage.local == 0 and usage.stack <= allowed, f"{spec.name} {kernel}/{role} {target} {dtype}: {usage}"
        assert usage.registers <= 255


@pytest.mark.compile
@pytest.mark.parametrize("kernel", ["fwd", "bwd"])
@pytest.mark.parametrize("spec, target", spec_targets(LINEAR))
def test_linear_specs_compile_without_spills_fp16(spec, target, kernel):
    assert_no_spills(spec, target, torch.float16, kernel)


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("kernel", ["fwd", "bwd"])
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("spec", LINEAR, ids=lambda s: s.name)
def test_linear_specs_compile_without_spills_other_dtypes(spec, target, kernel, dtype):
    assert_no_spills(spec, target, dtype, kernel)
