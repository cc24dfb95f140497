"""The gpu tier's code, proved on CPU: its checks run here under the interpreter at tiny sizes (the
same functions the gpu tier calls on CUDA), they fail when a kernel leaves an element unwritten or
gets a gradient wrong, its case lists cover every spec, and the GPU session's scripts run in their
smoke forms. Not marked gpu: these run everywhere.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attngen as A
from attngen.runtime.decode import DecodeLauncher
from attngen.runtime.launch import SoftmaxLauncher
from attngen.runtime.launch_backward import BackwardLauncher
from attngen.runtime.linear import LinearLauncher

import gpu_checks
import test_gpu_kernels as tier
from gpu_checks import check_decode, check_linear, check_softmax, poisoned_outputs

ROOT = Path(__file__).resolve().parents[2]
FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16


def tiny(name: str, head_dim: int = 16) -> A.Spec:
    """A shipped spec with its mask and modifiers and few heads: MHA stays MHA (2), MQA stays MQA
    (3 query heads), GQA keeps a group (2 of 2 kv heads)."""
    spec = A.load_spec(ROOT / "specs" / f"{name}.yaml")
    kv = 1 if spec.kv_heads == 1 else 2
    query = 3 if kv == 1 else (kv if spec.group == 1 else 2 * kv)
    return dataclasses.replace(spec, query_heads=query, kv_heads=kv, head_dim=head_dim)


# -- the checks pass on correct kernels (interpreter) --------------------------------------------
@pytest.mark.parametrize("name, nq, nk, dtype, layout, q_offset", [
    pytest.param("sparse_strided", 37, 53, FP32, "bnhd", None, id="lists-fp32-bnhd"),
    pytest.param("packed_documents", 40, 60, BF16, "bhnd", None, id="segments-bf16"),
    pytest.param("mistral_sliding_window", 50, 20, FP16, "bhnd", None, id="ranges-fp16-empty-rows"),
    pytest.param("bigbird", 45, 197, FP32, "bnhd", -9, id="random-fp32-offset"),
])
def test_check_softmax_on_cpu(name, nq, nk, dtype, layout, q_offset, seed):
    spec = tiny(name)
    errors = check_softmax(spec, nq, nk, dtype, "cpu", seed, batch=2, layout=layout, q_offset=q_offset)
    assert set(errors) == {"out", "lse", "empty_rows", "dq", "dk", "dv"}
    # Packed documents: each query row is a key of its own document, so it has a key (itself).
    per_head = 0 if spec.uses_segments else int((~spec.dense_mask(nq, nk, q_offset).any(-1)).sum())
    empty = per_head * spec.query_heads * 2
    assert errors["empty_rows"] == empty and (empty > 0) == (name == "mistral_sliding_window")


def test_check_linear_on_cpu(seed):
    errors = check_linear(tiny("linear_favor"), 37, 53, FP32, "cpu", seed, batch=2, layout="bnhd")
    assert set(errors) == {"out", "dq", "dk", "dv"}


@pytest.mark.parametrize("name, nq, dtype, capacity", [
    pytest.param("gqa", 1, BF16, 70, id="gqa-bf16"),
    pytest.param("bigbird", 3, FP32, 230, id="random-fp32"),
])
def test_check_decode_on_cpu(name, nq, dtype, capacity, seed):
    errors = check_decode(tiny(name, head_dim=32), nq, capacity, dtype, "cpu", seed, layout="bnhd", page_size=16)
    assert set(errors) == {"contiguous out", "contiguous lse", "paged out", "paged lse"}


def test_sequence_lengths_and_pages(seed):
    gen = gpu_checks.generator(seed, "cpu")
    assert gpu_checks.sequence_lengths(tiny("bigbird"), 5, 300, gen)[:3] == [300, 0, 129]
    k, v = (torch.randn(2, 3, 40, 4, generator=gen) for _ in range(2))
    k_pages, v_pages, table = gpu_checks.to_pages(k, v, 16, gen)
    assert k_pages.shape == (7, 16, 3, 4) and table.shape == (2, 3) and table.dtype == torch.int32
    for b in range(2):
        walked = k_pages[table[b].long()].reshape(48, 3, 4).transpose(0, 1)
        assert torch.equal(walked[:, :40], k[b]) and walked[:, 40:].isnan().all()


# -- the checks fail on wrong kernels ------------------------------------------------------------
def unwritten(t: torch.Tensor) -> torch.Tensor:
    """t with one element replaced by what a fresh allocation holds (NaN under poisoning)."""
    from attngen.runtime.launch import poison

    t, fresh = t.clone(), torch.empty((), dtype=t.dtype, device=t.device)
    poison(fresh, interpreted=False)             # as a compiled launch's output would be
    t.view(-1)[t.numel() // 2] = fresh
    return t


def test_an_unwritten_output_element_fails(monkeypatch, seed):
    real = SoftmaxLauncher.forward

    def forward(self, *args, **kwargs):
        out, *rest = real(self, *args, **kwargs)
        return (unwritten(out), *rest)
    monkeypatch.setattr(SoftmaxLauncher, "forward", forward)
    with pytest.raises(AssertionError, match="out: relative error inf"):
        check_softmax(tiny("mha"), 20, 30, FP32, "cpu", seed)


def test_a_wrong_gradient_fails(monkeypatch, seed):
    real = BackwardLauncher.backward

    def off_by_a_percent(self, *args, **kwargs):
        dq, dk, dv = real(self, *args, **kwargs)
        return dq, dk * 1.01, dv
    monkeypatch.setattr(BackwardLauncher, "backward", off_by_a_percent)
    with pytest.raises(AssertionError, match="dk: relative error"):
        check_softmax(tiny("gqa"), 20, 30, FP32, "cpu", seed)


def test_an_unwritten_paged_decode_row_fails(monkeypatch, seed):
    real = DecodeLauncher.decode

    def decode(self, q, k, v, **kwargs):
        out, lse = real(self, q, k, v, **kwargs)
        return (unwritten(out) if kwargs.get("block_table") is not None else out), lse
    monkeypatch.setattr(DecodeLauncher, "decode", decode)
    with pytest.raises(AssertionError, match="paged out"):
        check_decode(tiny("mqa", head_dim=32), 1, 40, FP32, "cpu", seed, page_size=16)


def test_a_zero_linear_gradient_fails(monkeypatch, seed):
    real = LinearLauncher.backward

    def backward(self, *args, **kwargs):
        dq, dk, dv = real(self, *args, **kwargs)
        return dq, dk, torch.zeros_like(dv)
    monkeypatch.setattr(LinearLauncher, "backward", backward)
    with pytest.raises(AssertionError, match="dv: relative error"):
        check_linear(tiny("linear_elu1"), 20, 30, FP32, "cpu", seed)


# -- the conditions of a GPU run -----------------------------------------------------------------
def test_poisoned_outputs_make_compiled_launches_poison_and_restore(monkeypatch):
    from attngen.runtime.launch import poison

    monkeypatch.delenv("ATTNGEN_POISON", raising=False)
    t = torch.zeros(3, dtype=BF16)
    poison(t, interpreted=False)                 # a GPU launch without the flag: left as it is
    assert not t.isnan().any()
    with poisoned_outputs():
        poison(t, interpreted=False)
        assert t.isnan().all()
    assert "ATTNGEN_POISON" not in os.environ
    with pytest.raises(RuntimeError), poisoned_outputs():
        raise RuntimeError("restored on errors too")
    assert "ATTNGEN_POISON" not in os.environ


def test_expect_compiled_refuses_the_interpreter_on_cuda(monkeypatch):
    cuda = torch.device("cuda")
    gpu_checks.expect_compiled(torch.device("cpu"))             # the CPU path is the interpreter: fine
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("ATTNGEN_INTERPRET", "1")               # architecture() then says None
    with pytest.raises(AssertionError, match="ATTNGEN_INTERPRET"):
        gpu_checks.expect_compiled(cuda)
    monkeypatch.delenv("ATTNGEN_INTERPRET")
    monkeypatch.setattr(gpu_checks, "architecture", lambda device: "sm_90")
    gpu_checks.expect_compiled(cuda)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(AssertionError, match="TRITON_INTERPRET"):
        gpu_checks.expect_compiled(cuda)


# -- the gpu tier's cases ------------------------------------------------------------------------
def test_the_gpu_tier_is_marked_and_skips_without_cuda():
    marks = {m.name: m for m in tier.pytestmark}
    assert "gpu" in marks and "skipif" in marks
    assert marks["skipif"].args == (not torch.cuda.is_available(),)
    assert "CUDA" in marks["skipif"].kwargs["reason"]


def test_the_gpu_tier_covers_every_spec_dtype_and_layout():
    files = {p.stem for p in (ROOT / "specs").glob("*.yaml")}
    softmax = [p.values for p in tier.SOFTMAX_CASES]
    linear = [p.values for p in tier.LINEAR_CASES]
    decode = [p.values for p in tier.DECODE_CASES]
    assert {v[0].name for v in softmax} | {v[0].name for v in linear} == files
    for spec in tier.SOFTMAX + tier.LINEAR:                  # both odd sizes for every spec
        cases = softmax if spec.kind == "softmax" else linear
        assert {(v[1], v[2]) for v in cases if v[0] == spec} >= {s[:2] for s in tier.SIZES}, spec.name
    decodable = {s.name for s in A.load_specs(ROOT / "specs") if s.kind == "softmax" and not s.uses_segments}
    assert {v[0].name for v in decode} == decodable and "gqa" in decodable
    for cases, dtype_at in ((softmax, 3), (linear, 3), (decode, 2)):
        assert {v[dtype_at] for v in cases} == {FP16, BF16, FP32}
        assert {v[-1] for v in cases} == {"bhnd", "bnhd"}
    assert {v[3] for v in softmax if v[0].name == "gqa"} == {FP16, BF16, FP32}
    assert any(v[0].kv_heads not in (1, v[0].query_heads) for v in softmax)       # GQA
    assert {name for name, *_ in (p.values for p in tier.EMPTY_ROW_CASES)} <= {s.name for s in tier.SOFTMAX}


# -- the GPU session's scripts in their smoke forms -----------------------------------------------
def run(args: list[str], timeout: int, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(args, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)


def test_decode_bench_smoke_checks_every_result(tmp_path):
    result = run([sys.executable, "benchmarks/decode_bench.py", "--smoke", "--specs", "gqa",
                  "--json", str(tmp_path / "rows.json")], timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "copy ceiling" in result.stdout and "0 failed" in result.stdout
    rows = tmp_path.joinpath("rows.json").read_text().splitlines()
    impls = {json.loads(r)["impl"] for r in rows}
    assert {"attngen", "attngen-paged", "sdpa", "sdpa-expanded"} <= impls and len(rows) == 4 * len(impls)


def test_decode_bench_counts_and_rotation():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import decode_bench as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    spec = A.load_spec(ROOT / "specs" / "gqa.yaml")
    p = bench.Problem(spec, 2, 4096, 1, 64, BF16, torch.device("cpu"))
    # Nq = 1 at the end of a causal cache sees every key: K and V of 8 kv heads, then q and out.
    assert p.needed_bytes() == 2 * 2 * 8 * 4096 * 128 * 2 + 2 * 2 * 64 * 1 * 128 * 2
    window = A.load_spec(ROOT / "specs" / "mistral_sliding_window.yaml")
    assert bench.Problem(window, 1, 16384, 1, 64, BF16, torch.device("cpu")).needed_bytes() == \
        2 * 8 * 4097 * 128 * 2 + 2 * 32 * 128 * 2
    # One set is 32 MiB of K and V: 8 sets span 4 x a 60 MiB L2; a 128 MiB set is not rotated.
    assert bench.sets_for(p, l2_bytes=60 * 2**20, limit=16) == 8
    assert bench.sets_for(p, l2_bytes=60 * 2**20, limit=4) == 4
    assert bench.sets_for(dataclasses.replace(p, batch=8), l2_bytes=32 * 2**20, limit=16) == 1
    seen = []
    step = bench.rotating([lambda i=i: seen.append(i) for i in range(3)])
    for _ in range(7):
        step()
    assert seen == [0, 1, 2, 0, 1, 2, 0]


def test_gpu_session_script_parses():
    assert run(["bash", "-n", "benchmarks/gpu_session.sh"], timeout=30).returncode == 0


@pytest.mark.slow
def test_gpu_session_smoke_runs_every_step(tmp_path):
    result = run(["bash", "benchmarks/gpu_session.sh"], timeout=400, OUT=str(tmp_path), GPU_SESSION_SMOKE="1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for step in ("env", "gpu_tests", "decode_bench", "bench_fwd", "bench_bwd", "linear"):
        assert f"| {step} | ok |" in result.stdout and (tmp_path / f"{step}.log").stat().st_size > 0
