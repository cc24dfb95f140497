"""The varlen kernels (`attn.varlen`) compile for sm_80 and sm_90 without a GPU, exactly as a launch
over a packed batch compiles them (`VarlenLauncher.aot_arguments`), with no spills in 16-bit.

By default four specs cover the kernels' paths: closed-form key ranges with a window (mistral),
block-map lists (sparse_strided), per-sequence random draws (bigbird) and GQA with causal (gqa); ATTNGEN_SLOW=1 adds every shipped
softmax spec varlen runs.
"""
from __future__ import annotations

import pytest
import torch

import attngen as A
from attngen.codegen.aot import resource_usage
from attngen.codegen.plan_varlen import varlen_unsupported
from tests.codegen.targets import TARGETS, spec_targets

DEFAULT = ("mistral_sliding_window", "sparse_strided", "gqa", "bigbird")
SPECS = [pytest.param(s, id=s.name, marks=() if s.name in DEFAULT else pytest.mark.slow)
         for s in A.load_specs("specs") if s.kind == "softmax" and not varlen_unsupported(s)]


def usages(spec, target, dtype) -> dict:
    """{role: ResourceUsage} of the varlen forward and the three varlen backward kernels."""
    attn = A.compile(spec)
    out = {"fwd": resource_usage(attn.compile_for(target, dtype, kernel="varlen_fwd"))}
    backward = attn.compile_for(target, dtype, kernel="varlen_bwd")
    out.update({role: resource_usage(k) for role, k in backward.kernels.items()})
    print(f"\n{spec.name:24s} {target} {str(dtype)[6:]:8s} " + "  ".join(
        f"{role}: regs {u.registers} stack {u.stack} local {u.local}" for role, u in out.items()), end="")
    return out


@pytest.mark.compile
@pytest.mark.parametrize("spec, target", spec_targets(SPECS))
def test_varlen_kernels_compile_without_spills_fp16(spec, target):
    for role, u in usages(spec, target, torch.float16).items():
        assert u.local == 0 and u.stack == 0, f"{spec.name} varlen {role} {target}: {u}"
        assert u.registers <= 255


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("spec", [s for s in SPECS if s.id in DEFAULT])
def test_varlen_kernels_compile_bf16(spec, target):
    for role, u in usages(spec, target, torch.bfloat16).items():
        assert u.local == 0 and u.stack == 0, f"{spec.name} varlen {role} {target}: {u}"
