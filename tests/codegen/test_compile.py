"""Generated kernels compile for real GPUs without one, with no register spills.

`triton.compile` for GPUTarget("cuda", 80|90) yields PTX and a cubin; the cubin's resource usage
(read by the cuobjdump Triton ships) must show no local memory and no stack frame: spills would
make the kernels slow, and the default tile table was chosen so that none occur.
"""
import pytest
import torch

import attngen as A
from attngen.codegen.aot import resource_usage
from tests.codegen.targets import TARGETS, spec_targets

SHIPPED = [s for s in A.load_specs("specs") if s.kind == "softmax"]


def assert_no_spills(spec, target, dtype, kernel="fwd"):
    compiled = A.compile(spec).compile_for(target, dtype, kernel=kernel)
    usage = resource_usage(compiled)
    assert usage.local == 0 and usage.stack == 0, f"{spec.name} {kernel} {target} {dtype}: {usage}"
    assert usage.registers <= 255
    return usage


@pytest.mark.compile
@pytest.mark.parametrize("spec, target", spec_targets(SHIPPED))
def test_shipped_specs_compile_without_spills_fp16(spec, target):
    assert_no_spills(spec, target, torch.float16)


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("spec", SHIPPED, ids=lambda s: s.name)
def test_shipped_specs_compile_without_spills_other_dtypes(spec, target, dtype):
    assert_no_spills(spec, target, dtype)


@pytest.mark.compile
def test_emit_later_stages():
    spec = A.load_spec("specs/mistral_sliding_window.yaml")
    ptx = A.emit(spec, stage="ptx", target="sm_80")
    assert ".target sm_80" in ptx and "attngen_fwd_mistral_sliding_window" in ptx
    assert "tt.func" in A.emit(spec, stage="ttir", target="sm_90")
    assert "ttg." in A.emit(spec, stage="ttgir", target="sm_90")
    with pytest.raises(ValueError, match="stage must be"):
        A.emit(spec, stage="cubin")
    with pytest.raises(ValueError, match="sm_80"):
        A.emit(spec, stage="ptx", target="ampere")
