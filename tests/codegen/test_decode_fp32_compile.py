"""float32 decode kernels compile without spills where the fp16 tier does not look: Gemma-2's
256-dim heads with a softcap (shipped, and the per-head cap formula at head dim 64) and MQA's 48
query heads of dim 256 packed into one program's rows (at most 32 in float32: `max_rows`), sm_80
and sm_90, one token and five speculative ones, with the configuration the launcher picks."""
from pathlib import Path

import pytest
import torch

import attngen as A
from attngen.codegen.aot import resource_usage
from attngen.codegen.emit import generate
from attngen.runtime.decode import DecodeLauncher

SPECS = Path(__file__).resolve().parents[2] / "specs"


@pytest.mark.compile
@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
@pytest.mark.parametrize("path", ["gemma2_softcap.yaml", "formulas/gemma2_softcap_per_head.yaml", "mqa.yaml"])
def test_decode_fp32_has_no_spills(path, target):
    spec = A.load_spec(SPECS / path)
    launcher = DecodeLauncher(generate(spec, "decode"))
    for nq in (1, 5):
        cfg = launcher.spill_free_config(target, torch.float32, nq=nq)
        usage = resource_usage(launcher.compile_for(target, torch.float32, cfg, nq=nq))
        assert usage.local == 0 and usage.stack == 0, f"{spec.name} {target} nq={nq} {cfg}: {usage}"
