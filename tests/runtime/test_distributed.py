"""Context parallelism across processes: 1, 2 and 4 ranks on this machine (gloo on 127.0.0.1,
Triton's interpreter), forward and backward against the whole-sequence call on each rank, both
layouts, ring and all-gather; causal, sliding window, BigBird, documents, GQA/MQA.

Each test spawns its ranks once and runs several cases in them (starting a process costs seconds
of imports); every wait is bounded, and a rank that fails reports its traceback.
"""
from __future__ import annotations

import queue as queue_module
import socket
import time

import pytest
import torch.multiprocessing as mp

from tests.runtime.distributed_worker import run_rank

PROCESS_TIMEOUT = 900           # seconds for all cases of one spawn (interpreted kernels, shared cores)


def small_spec(name: str, **fields) -> dict:
    return {"name": name, "query_heads": 4, "kv_heads": 2, "head_dim": 16, **fields}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, cases: list) -> list[dict]:
    """Run `cases` on `world` ranks; the reports of every rank (each case once per rank)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    processes = [ctx.Process(target=run_rank, args=(rank, world, port, cases, results), daemon=True)
                 for rank in range(world)]
    for p in processes:
        p.start()
    reports, deadline = [], time.monotonic() + PROCESS_TIMEOUT
    try:
        while len(reports) < world * len(cases):
            try:
                report = results.get(timeout=max(1.0, deadline - time.monotonic()))
            except queue_module.Empty:
                pytest.fail(f"timed out after {PROCESS_TIMEOUT} s with {len(reports)} reports: {reports}")
            assert report["error"] is None, f"rank {report['rank']}, {report['case']}:\n{report['error']}"
            reports.append(report)
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {PROCESS_TIMEOUT} s")
    finally:
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return reports


def by_case(reports: list) -> dict:
    out: dict = {}
    for r in reports:
        out.setdefault(r["case"], []).append(r)
    return out


CAUSAL = small_spec("cp_causal", causal=True)
WINDOW = small_spec("cp_window", query_heads=2, kv_heads=2, causal=True, mask={"band": {"left": 7}})
BIGBIRD = small_spec("cp_bigbird", mask={"any": [{"band": 3}, {"global": {"first": 2}},
                                                 {"random": {"per_row": 1, "block": 8, "seed": 7}}]})
DOCUMENTS = small_spec("cp_documents", causal=True, mask={"segments": True})
MQA = small_spec("cp_mqa", query_heads=4, kv_heads=1, causal=True)
SINKS = small_spec("cp_sinks", causal=True, sink=True, mask={"band": {"left": 20}})   # gpt-oss-like
# Formula inputs: a replicated per-sequence prefix and a learned per-head bias table (T5-like),
# and inputs along the sequence, sharded like q/k/v: document ids and a learned per-key bias.
PREFIX_T5 = small_spec("cp_prefix_t5", mask="j <= i or j < prefix[b]",
                       inputs={"prefix": {"shape": ["B"], "dtype": "int32"},
                               "rel": {"shape": ["Hq", 17], "dtype": "float32", "grad": True}},
                       score="s + rel[h, min(max(i - j, -8), 8) + 8]")
DOC_IDS = small_spec("cp_doc_ids", causal=True, mask="doc[b, i] == doc[b, j]",
                     inputs={"doc": {"shape": ["B", "Nk"], "dtype": "int32"},
                             "kbias": {"shape": ["Nk"], "dtype": "float32", "grad": True}},
                     score="s + kbias[j]")


def _case(case_id, fields, layout, n, **extra) -> dict:
    from attngen.spec import spec_from_dict
    fields = dict(fields)
    heads = {"query": fields.pop("query_heads"), "kv": fields.pop("kv_heads")}
    return {"id": case_id, "spec": spec_from_dict({**fields, "heads": heads}), "layout": layout, "n": n, **extra}


def test_two_ranks_every_mask_both_layouts():
    cases = [_case("causal-gqa-zigzag", CAUSAL, "zigzag", 45, repeat=True),
             _case("causal-gqa-contiguous", CAUSAL, "contiguous", 45, strategy="ring"),
             _case("window-zigzag", WINDOW, "zigzag", 45),
             _case("window-contiguous", WINDOW, "contiguous", 64),
             _case("bigbird-zigzag", BIGBIRD, "zigzag", 64, strategy="ring"),
             _case("documents-contiguous", DOCUMENTS, "contiguous", 45, strategy="ring"),
             _case("documents-zigzag", DOCUMENTS, "zigzag", 45),
             _case("mqa-allgather-zigzag", MQA, "zigzag", 45, strategy="allgather")]
    reports = by_case(spawn(2, cases))
    assert {r["strategy"] for r in reports["mqa-allgather-zigzag"]} == {"allgather"}
    assert {r["strategy"] for r in reports["causal-gqa-zigzag"]} == {"allgather"}   # auto: Hkv·W <= Hq
    assert {r["strategy"] for r in reports["window-contiguous"]} == {"ring"}        # MHA: Hkv·W > Hq
    assert {r["strategy"] for r in reports["documents-zigzag"]} == {"allgather"}


def test_two_ranks_sinks_and_formula_inputs():
    """Sinks counted once; replicated inputs (with a learned table) through the ring; a sharded
    decode reading inputs."""
    spawn(2, [_case("sinks-ring-zigzag", SINKS, "zigzag", 45, strategy="ring", repeat=True),
              _case("inputs-ring-zigzag", PREFIX_T5, "zigzag", 45, strategy="ring", repeat=True),
              _case("decode-inputs", PREFIX_T5, "contiguous", 50, decode=True)])


@pytest.mark.slow
def test_two_ranks_sequence_inputs_and_allgather_sinks():
    """Inputs along the sequence (sharded, gathered whole) with a learned per-key bias, ring and
    all-gather; sinks through the all-gather variant."""
    spawn(2, [_case("sinks-allgather-contiguous", SINKS, "contiguous", 45, strategy="allgather"),
              _case("sequence-inputs-ring-contiguous", DOC_IDS, "contiguous", 45, strategy="ring", repeat=True),
              _case("sequence-inputs-allgather-zigzag", DOC_IDS, "zigzag", 45, strategy="allgather")])


def test_four_ranks_sharded_decode():
    """Decoding against a cache cut into 4 shards: sinks on a contiguous cache, BigBird (random
    blocks drawn for the whole length) on a paged one."""
    spawn(4, [_case("decode-sinks", SINKS, "contiguous", 96, decode=True),
              _case("decode-bigbird-paged", BIGBIRD, "contiguous", 128, decode=True, paged=True)])


def test_four_ranks_skip_empty_steps():
    cases = [_case("causal-zigzag", CAUSAL, "zigzag", 77, strategy="ring", repeat=True),
             _case("window-contiguous", WINDOW, "contiguous", 128, strategy="ring"),
             _case("mqa-auto-zigzag", MQA, "zigzag", 77)]
    reports = by_case(spawn(4, cases))
    window = reports["window-contiguous"][0]
    # 16 positions a rank, a window of 7: only the previous rank's keys are ever needed.
    assert window["steps"] == 2 and window["skipped"] > 0, window
    assert reports["causal-zigzag"][0]["skipped"] == 0         # zigzag: every rank meets every chunk
    assert {r["strategy"] for r in reports["mqa-auto-zigzag"]} == {"allgather"}


@pytest.mark.slow
def test_four_ranks_random_blocks_and_documents():
    """The masks the two-rank test already covers, on four ranks (rings of 3 steps past the own chunk)."""
    spawn(4, [_case("bigbird-contiguous", BIGBIRD, "contiguous", 77, strategy="ring"),
              _case("documents-zigzag", DOCUMENTS, "zigzag", 77, strategy="ring")])


def test_one_rank_is_the_plain_call():
    cases = [_case("causal-one-rank", CAUSAL, "zigzag", 37), _case("documents-one-rank", DOCUMENTS, "contiguous", 37),
             _case("sinks-one-rank", SINKS, "zigzag", 37), _case("inputs-one-rank", DOC_IDS, "zigzag", 37)]
    spawn(1, cases)
