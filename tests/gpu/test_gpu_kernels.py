"""The gpu tier: every spec in specs/ compiled for the CUDA device at hand, against float64.

Forward (out, lse) and backward (dq, dk, dv) of every softmax spec at two odd sizes, decode
(contiguous and paged caches) of every decodable spec, linear specs forward and backward; outputs
poisoned with NaN first; fp16, bf16 and fp32 sampled across specs (a Triton compile per kernel and
dtype costs seconds: the full product would take far longer than the few minutes a lease allows),
with every dtype on the GQA spec. Specs run at their own heads and head dims.

The checks are `gpu_checks` (proved on CPU under the interpreter by test_gpu_helpers.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attngen as A
from attngen.spec import Band

from gpu_checks import LAYOUTS, check_decode, check_linear, check_softmax, expect_compiled

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="gpu tier: needs a CUDA device (torch.cuda.is_available() is False)")]

SPECS = A.load_specs(Path(__file__).resolve().parents[2] / "specs")
SOFTMAX = [s for s in SPECS if s.kind == "softmax"]
LINEAR = [s for s in SPECS if s.kind == "linear"]
DECODABLE = [s for s in SOFTMAX if not s.uses_segments]      # a KV cache holds no document ids
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Odd sizes (ragged last tiles); the second is a chunk of queries against a longer key sequence
# (bottom-right alignment) as transposed (B, N, H, D) views, which are not contiguous.
SIZES = ((1000, 1000, "bhnd"), (77, 1500, "bnhd"))
# Bands wider than those sizes are causal there: one more size where the window cuts.
WINDOW_SIZE = (1000, 5003, "bhnd")
DECODE_CAPACITY = 4999                                        # past the 4096 windows; not a tile multiple


def name_of(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def batch_for(spec: A.Spec) -> int:
    return 2 if spec.query_heads <= 16 else 1


def widest_band(spec: A.Spec) -> int:
    sides = [side for p in spec.effective_mask.walk() if isinstance(p, Band) for side in (p.left, p.right)]
    return max((side for side in sides if side is not None), default=0)


def softmax_cases() -> list:
    cases = []
    for index, spec in enumerate(SOFTMAX):
        sizes = SIZES + ((WINDOW_SIZE,) if widest_band(spec) >= SIZES[1][1] else ())
        dtypes = DTYPES if spec.name == "gqa" else (DTYPES[index % len(DTYPES)],)
        cases += [pytest.param(spec, nq, nk, dtype, layout, id=f"{spec.name}-{nq}x{nk}-{name_of(dtype)}-{layout}")
                  for dtype in dtypes for nq, nk, layout in sizes]
    return cases


def decode_cases() -> list:
    cases = [pytest.param(spec, (1, 5)[i % 2], DTYPES[i % len(DTYPES)], LAYOUTS[(i // 2) % 2],
                          id=f"{spec.name}-nq{(1, 5)[i % 2]}-{name_of(DTYPES[i % len(DTYPES)])}")
             for i, spec in enumerate(DECODABLE)]
    # What benchmarks/decode_bench.py times (bf16, Nq = 1), and several row tiles per kv head:
    # GQA 8 x 16 tokens = 128 rows, MQA 48 x 5 = 240 rows (row tiles of 64 at D 128 and 256).
    by_name = {s.name: s for s in DECODABLE}
    for name, nq in (("gqa", 1), ("gqa", 16), ("mqa", 1), ("mqa", 5)):
        cases.append(pytest.param(by_name[name], nq, torch.bfloat16, "bhnd", id=f"{name}-nq{nq}-bfloat16"))
    return cases


def linear_cases() -> list:
    return [pytest.param(spec, nq, nk, DTYPES[i % len(DTYPES)], layout,
                         id=f"{spec.name}-{nq}x{nk}-{name_of(DTYPES[i % len(DTYPES)])}-{layout}")
            for i, spec in enumerate(LINEAR) for nq, nk, layout in SIZES]


SOFTMAX_CASES, DECODE_CASES, LINEAR_CASES = softmax_cases(), decode_cases(), linear_cases()
DTYPE_OF = {p.values[0].name: p.values[3] for p in SOFTMAX_CASES}     # each spec's (last) dtype


def test_kernels_run_compiled_for_this_device():
    device = torch.device("cuda")
    expect_compiled(device)
    major, minor = torch.cuda.get_device_capability(device)
    from attngen.runtime.launch import architecture
    assert architecture(device) == f"sm_{major}{minor}"


@pytest.mark.parametrize("spec, nq, nk, dtype, layout", SOFTMAX_CASES)
def test_softmax_forward_and_backward(spec, nq, nk, dtype, layout, seed, record_property):
    errors = check_softmax(spec, nq, nk, dtype, "cuda", seed, batch=batch_for(spec), layout=layout)
    record_property("errors", errors)


# Rows that allow no key: queries before key 0 (more queries than keys, or a negative q_offset), on
# an interval mask (closed-form ranges) and on a list-walking mask.
EMPTY_ROW_CASES = [pytest.param("mistral_sliding_window", 1000, 300, None, id="mistral-1000x300"),
                   pytest.param("sparse_strided", 77, 1500, -40, id="sparse_strided-77x1500-offset-40")]


@pytest.mark.parametrize("name, nq, nk, q_offset", EMPTY_ROW_CASES)
def test_rows_with_no_allowed_key(name, nq, nk, q_offset, seed, record_property):
    spec = next(s for s in SOFTMAX if s.name == name)
    batch = batch_for(spec)
    errors = check_softmax(spec, nq, nk, DTYPE_OF[name], "cuda", seed, batch=batch, q_offset=q_offset)
    empty_per_head = int((~spec.dense_mask(nq, nk, q_offset).any(-1)).sum())
    assert empty_per_head > 0 and errors["empty_rows"] == empty_per_head * spec.query_heads * batch
    record_property("errors", errors)


@pytest.mark.parametrize("spec, nq, dtype, layout", DECODE_CASES)
def test_decode_contiguous_and_paged(spec, nq, dtype, layout, seed, record_property):
    errors = check_decode(spec, nq, DECODE_CAPACITY, dtype, "cuda", seed, layout=layout)
    record_property("errors", errors)


@pytest.mark.parametrize("spec, nq, nk, dtype, layout", LINEAR_CASES)
def test_linear_forward_and_backward(spec, nq, nk, dtype, layout, seed, record_property):
    errors = check_linear(spec, nq, nk, dtype, "cuda", seed, batch=batch_for(spec), layout=layout)
    record_property("errors", errors)


@pytest.mark.parametrize("dtype", DTYPES, ids=name_of)
def test_lsh_bucket_kernel(dtype, seed):
    """The generated LSH bucket kernel compiled for this device (specs/select/reformer_lsh.yaml's
    shape, odd N, a transposed view) equals the reference's buckets except on float32 near-ties
    (reference_lsh.lsh_near_ties), which stay rare."""
    from attngen.reference_lsh import lsh_buckets, lsh_near_ties
    spec = A.load_spec(Path(__file__).resolve().parents[2] / "specs" / "select" / "reformer_lsh.yaml")
    lsh = spec.lsh
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1001, spec.kv_heads, spec.head_dim, generator=gen).to(device="cuda", dtype=dtype).transpose(1, 2)
    got = A.compile(spec).kernels.launcher("lsh").buckets(x)
    want = lsh_buckets(x.cpu().double(), lsh.buckets, lsh.seed, lsh.rounds)
    ties = lsh_near_ties(x.cpu(), lsh.buckets, lsh.seed, lsh.rounds)
    differ = got.cpu() != want
    assert not (differ & ~ties).any(), f"{int((differ & ~ties).sum())} rows differ off a near-tie"
    assert int(ties.sum()) <= ties.numel() // 100
