"""Decode kernels compile for real GPUs without one, with no register spills.

For every shipped spec that can decode, on sm_80 and sm_90 in float16: the launcher's choice among
the tile candidates (`DecodeLauncher.spill_free_config`, the paged split-KV variant: the larger one)
has no local memory and no stack frame, and the merge kernel compiles too.
"""
import pytest
import torch

import attngen as A
from attngen.codegen.aot import resource_usage
from attngen.codegen.emit import generate
from attngen.runtime.decode import DecodeLauncher
from tests.codegen.targets import spec_targets

DECODABLE = [s for s in A.load_specs("specs") if s.kind == "softmax" and not s.uses_segments]


def assert_decode_compiles_clean(spec, target) -> DecodeLauncher:
    """The decode kernel of `spec` compiled for `target` in fp16 as launched, with no spills, at one
    token and five speculative ones where that packs more rows (GQA/MQA); its launcher."""
    launcher = DecodeLauncher(generate(spec, "decode"))
    for nq in sorted({1, 5 if spec.group > 1 else 1}):
        cfg = launcher.spill_free_config(target, torch.float16, nq=nq)
        usage = resource_usage(launcher.compile_for(target, torch.float16, cfg, nq=nq))
        assert usage.local == 0 and usage.stack == 0, f"{spec.name} {target} nq={nq} {cfg}: {usage}"
        assert usage.registers <= 255
    return launcher


@pytest.mark.compile
@pytest.mark.parametrize("spec, target", spec_targets(DECODABLE))
def test_decode_compiles_without_spills_fp16(spec, target):
    launcher = assert_decode_compiles_clean(spec, target)
    merge = resource_usage(launcher.compile_for(target, torch.float16, kernel="merge"))
    assert merge.local == 0 and merge.stack == 0, merge


@pytest.mark.compile
def test_emit_decode_ptx():
    launcher = DecodeLauncher(generate(A.load_spec("specs/gqa.yaml"), "decode"))
    ptx = launcher.compile_for("sm_90", torch.float16, nq=1).asm["ptx"]
    assert ".target sm_90" in ptx and "attngen_decode_gqa" in ptx
    assert "cp.async" in ptx or "ld.global.v4" in ptx        # K/V rows load as 16-byte vectors
