"""Content-based sparsity kernels compile for sm_80 and sm_90 without spills, as launched: the
selection kernels (pool, gate) and the attention kernels that walk per-(batch, kv head) lists
(forward, backward, decode), for the shipped specs/select files; and LSH attention's (`lsh:`)
forward and backward (its kernel spec: segments by bucket, the mask at original positions read
from inputs, call-time lists) for specs/select/reformer_lsh.yaml and specs combining lsh with
formulas, inputs, segments and random masks, and its bucket kernel (templates/lsh.py.jinja)."""
from pathlib import Path

import pytest
import torch

import attngen as A
from attngen.codegen.aot import resource_usage

ALL_SPECS = A.load_specs(Path(__file__).resolve().parents[2] / "specs" / "select")
SPECS = [s for s in ALL_SPECS if s.select is not None]
LSH_SPECS = [s for s in ALL_SPECS if s.lsh is not None]


def _no_spills(compiled, what):
    for role, kernel in (getattr(compiled, "kernels", None) or {"": compiled}).items():
        usage = resource_usage(kernel)
        assert usage.local == 0 and usage.stack == 0 and usage.registers <= 255, f"{what} {role}: {usage}"


# bfloat16 of the first spec in the default run; the other specs and float32 with ATTNGEN_SLOW=1
CASES = [pytest.param(spec, dtype, id=f"{spec.name}-{str(dtype)[6:]}",
                      marks=() if (n, dtype) == (0, torch.bfloat16) else pytest.mark.slow)
         for n, spec in enumerate(SPECS) for dtype in (torch.bfloat16, torch.float32)]


@pytest.mark.compile
@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
@pytest.mark.parametrize("kernel", ["select", "fwd", "bwd"])
@pytest.mark.parametrize("spec, dtype", CASES)
def test_select_kernels_compile_without_spills(spec, dtype, kernel, target):
    _no_spills(A.compile(spec).compile_for(target, dtype, kernel=kernel), f"{spec.name} {kernel} {target} {dtype}")


@pytest.mark.compile
@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
def test_select_decode_compiles_without_spills(target):
    launcher = A.compile(SPECS[0]).kernels.launcher("decode")
    for paged in (False, True):
        _no_spills(launcher.compile_launches(target, torch.bfloat16, nq=4, paged=paged),
                   f"{SPECS[0].name} decode paged={paged} {target}")


# lsh combined with formulas reading b, h and inputs (a grad input too) and ALiBi; and with a
# segments mask and a random mask (their kernel specs read more inputs: lsh_b/lsh_h, the user's
# tensors, lsh_docq/lsh_dock, the drawn key blocks)
LSH_COMBINED = [
    A.Spec(name="lsh_compile_prefix_t5", query_heads=4, kv_heads=2, head_dim=64, alibi=True,
           lsh={"buckets": 8, "seed": 0, "rounds": 2}, mask="j <= i or j < prefix[b]",
           score="s + rel[h, min(max(i - j, -8), 8) + 8]",
           inputs={"prefix": {"shape": ["B"], "dtype": "int32"},
                   "rel": {"shape": ["Hq", 17], "dtype": "float32", "grad": True}}),
    A.Spec(name="lsh_compile_docs_random", query_heads=4, kv_heads=2, head_dim=64, causal=True,
           lsh={"buckets": 8, "seed": 0, "rounds": 2}, mask=A.segments() & (A.random(2, 64, 1) | A.band(32))),
]


@pytest.mark.compile
@pytest.mark.parametrize("target", ["sm_90", pytest.param("sm_80", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kernel", ["fwd", "bwd"])
@pytest.mark.parametrize("spec, dtype", [     # bf16 of the shipped spec and of the first combined one by default
    pytest.param(spec, dtype, id=f"{spec.name}-{str(dtype)[6:]}",
                 marks=() if (n in (0, len(LSH_SPECS)) and dtype == torch.bfloat16) else pytest.mark.slow)
    for n, spec in enumerate(LSH_SPECS + LSH_COMBINED) for dtype in (torch.bfloat16, torch.float32)])
def test_lsh_kernels_compile_without_spills(spec, dtype, kernel, target):
    _no_spills(A.compile(spec).compile_for(target, dtype, kernel=kernel), f"{spec.name} {kernel} {target} {dtype}")


@pytest.mark.compile
@pytest.mark.parametrize("target", ["sm_90", pytest.param("sm_80", marks=pytest.mark.slow)])
@pytest.mark.parametrize("spec, dtype", [
    pytest.param(spec, dtype, id=f"{spec.name}-{str(dtype)[6:]}",
                 marks=() if (n, dtype) == (0, torch.bfloat16) else pytest.mark.slow)
    for n, spec in enumerate(LSH_SPECS) for dtype in (torch.bfloat16, torch.float32)])
def test_lsh_bucket_kernel_compiles_without_spills(spec, dtype, target):
    _no_spills(A.compile(spec).compile_for(target, dtype, kernel="lsh"), f"{spec.name} lsh {target} {dtype}")


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
@pytest.mark.parametrize("head_dim, buckets", [(256, 64), (64, 1000), (16, 1000), (24, 6)])
def test_lsh_bucket_kernel_compiles_at_the_extremes(head_dim, buckets, target):
    """The widest head dim (a 256-wide x tile), many buckets (many chunks of R's columns, the
    widest at D 16), and a padded odd head dim with fewer columns than one chunk."""
    spec = A.Spec(name=f"lsh_compile_{head_dim}_{buckets}", query_heads=4, kv_heads=2, head_dim=head_dim,
                  causal=True, lsh={"buckets": buckets, "seed": 0, "rounds": 2})
    _no_spills(A.compile(spec).compile_for(target, torch.float32, kernel="lsh"), f"{spec.name} {target}")

