"""Decode bandwidth: attngen's decode kernel against the device's copy bandwidth, SDPA and flash-attn.

On a GPU:   PYTHONPATH=. python benchmarks/decode_bench.py [--specs gqa mqa] [--batch 1 64]
                [--cache 4096 16384 65536 131072] [--nq 1] [--page-size 64] [--json FILE]
Smoke test: PYTHONPATH=. python benchmarks/decode_bench.py --smoke
            (CPU, Triton's interpreter, specs shrunk to a few heads of 32 and caches of a few hundred
            keys: every result is checked against the float64 reference; the times mean nothing)

Bytes. One decode step must read at least the K and V rows the mask allows for some query of each
sequence, once per kv head (a GQA group shares them), read q and write out: `needed_bytes`. Every
implementation is given these same bytes, whatever it moves: SDPA on K/V expanded to every query
head reads `group` times more (column "moved", and the expansion itself is left out of its time).
GB/s = needed bytes / time (1 GB = 1e9 B); "% copy" compares the better of the two GB/s columns
with a large device-to-device copy measured first (bytes read + bytes written), the ceiling.

Data. bf16, every sequence holding the full cache (cache_seqlens = cache). One pool of pages
(num_pages, page_size, Hkv, D) serves both layouts: "attngen" reads it as a contiguous cache
(B, Hkv, N, D), the transposed view of (B, N, Hkv, D), which is also what flash-attn and SDPA read;
"attngen-paged" walks it through a shuffled block table. Inputs are random, never zeros.

Time. triton.testing.do_bench, median (it flushes the L2 cache before each call). Where one input
set is smaller than 4x the L2 cache, several sets are rotated. "graph us" replays a CUDA graph of
one call per set and divides by the calls: the kernels without Python's launch overhead, which is
most of "median us" for B = 1 and short caches. Before any timing, every implementation's output
is checked against the float64 reference (`attngen.reference`) on the first and last sequence.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import attngen as A
from attngen.checking import TOLERANCE, relative_error

SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"
GB = 1e9


@dataclasses.dataclass(frozen=True)
class Problem:
    spec: A.Spec
    batch: int
    cache: int            # keys held by every sequence
    nq: int
    page_size: int
    dtype: torch.dtype
    device: torch.device

    @property
    def pages_per_sequence(self) -> int:
        return -(-self.cache // self.page_size)

    @property
    def capacity(self) -> int:
        return self.pages_per_sequence * self.page_size

    def needed_bytes(self) -> int:
        """K and V rows some query may see (once per kv head) + q read + out written."""
        spec, size = self.spec, torch.empty((), dtype=self.dtype).element_size()
        allowed = int(spec.dense_mask(self.nq, self.cache, self.cache - self.nq).any(0).sum())
        kv = 2 * self.batch * spec.kv_heads * allowed * spec.head_dim * size
        return kv + 2 * self.batch * spec.query_heads * self.nq * spec.head_dim * size


@dataclasses.dataclass
class InputSet:
    q: torch.Tensor               # (B, Hq, Nq, D)
    k_pages: torch.Tensor         # (B * pages, page_size, Hkv, D); sequence b's pages in order at b * pages
    v_pages: torch.Tensor
    table: torch.Tensor           # (B, pages) int32: a shuffled walk over the same pool
    seqlens: torch.Tensor         # (B,) int32

    def contiguous(self, p: Problem):
        """(k, v) as (B, Hkv, capacity, D) views of the pool (no copy)."""
        shape = (p.batch, p.capacity, p.spec.kv_heads, p.spec.head_dim)
        return tuple(t.view(shape).transpose(1, 2) for t in (self.k_pages, self.v_pages))

    def paged_sequence(self, p: Problem, b: int):
        """Sequence b's keys and values as the block table walks them: (1, Hkv, cache, D)."""
        def gather(pool):
            rows = pool[self.table[b].long()].reshape(p.capacity, p.spec.kv_heads, p.spec.head_dim)
            return rows[:p.cache].transpose(0, 1).unsqueeze(0)
        return gather(self.k_pages), gather(self.v_pages)


def make_set(p: Problem, gen: torch.Generator) -> InputSet:
    spec, pages = p.spec, p.batch * p.pages_per_sequence
    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=p.device, dtype=p.dtype)
    return InputSet(
        q=randn(p.batch, spec.query_heads, p.nq, spec.head_dim),
        k_pages=randn(pages, p.page_size, spec.kv_heads, spec.head_dim),
        v_pages=randn(pages, p.page_size, spec.kv_heads, spec.head_dim),
        table=torch.randperm(pages, generator=gen, device=p.device).to(torch.int32).view(p.batch, -1),
        seqlens=torch.full((p.batch,), p.cache, dtype=torch.int32, device=p.device))


# -- implementations: name -> (run(set) -> out (B, Hq, Nq, D), bytes moved / bytes needed) ---------
def implementations(p: Problem, *, expand_limit: float) -> dict[str, tuple[Callable, float]]:
    spec = p.spec
    attn = A.compile(spec)
    impls = {
        "attngen": (lambda s: attn.decode(s.q, *s.contiguous(p), cache_seqlens=s.seqlens), 1.0),
        "attngen-paged": (lambda s: attn.decode(s.q, s.k_pages, s.v_pages, cache_seqlens=s.seqlens,
                                                block_table=s.table), 1.0),
    }
    if spec.softcap is None and not spec.alibi:       # SDPA has neither
        mask = spec.dense_mask(p.nq, p.cache, p.cache - p.nq, device=p.device)
        mask = None if bool(mask.all()) else mask          # Nq = 1 with causal: every key
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def cut(t):                                         # the valid keys of the pool's capacity
            return t[:, :, :p.cache]
        impls["sdpa"] = (lambda s: sdpa(s.q, *(cut(t) for t in s.contiguous(p)), attn_mask=mask,
                                        scale=spec.softmax_scale, enable_gqa=spec.group > 1), 1.0)
        expanded = 2 * p.batch * spec.query_heads * p.cache * spec.head_dim * 2
        if spec.group > 1 and expanded <= expand_limit:
            grown = {}
            def sdpa_expanded(s):
                if id(s) not in grown:                     # made once per set, outside the timing
                    grown[id(s)] = [cut(t).repeat_interleave(spec.group, dim=1) for t in s.contiguous(p)]
                return sdpa(s.q, *grown[id(s)], attn_mask=mask, scale=spec.softmax_scale)
            impls["sdpa-expanded"] = (sdpa_expanded, float(spec.group))
    flash = flash_kvcache(p)
    if flash is not None:
        impls["flash_attn_with_kvcache"] = (flash, 1.0)
    return impls


def flash_kvcache(p: Problem) -> Callable | None:
    """flash-attn's decode on the (B, N, Hkv, D) cache, where it is installed and has the mask."""
    spec = p.spec
    plain = isinstance(spec.effective_mask, (A.spec.Everything, A.spec.Causal))
    if p.device.type != "cuda" or not plain or spec.softcap or spec.alibi:
        return None
    try:
        from flash_attn import flash_attn_with_kvcache
    except ImportError:
        return None
    shape = (p.batch, p.capacity, spec.kv_heads, spec.head_dim)
    return lambda s: flash_attn_with_kvcache(
        s.q.transpose(1, 2), s.k_pages.view(shape), s.v_pages.view(shape), cache_seqlens=s.seqlens,
        softmax_scale=spec.softmax_scale, causal=spec.causal).transpose(1, 2)


def check(name: str, run: Callable, s: InputSet, p: Problem) -> float:
    """Worst relative error of `run`'s output against float64 on the first and last sequence."""
    out = run(s)
    k, v = s.contiguous(p)
    worst = 0.0
    for b in sorted({0, p.batch - 1}):
        if name == "attngen-paged":
            kb, vb = s.paged_sequence(p, b)
        else:
            kb, vb = k[b:b + 1, :, :p.cache], v[b:b + 1, :, :p.cache]
        want, _ = A.reference(p.spec, s.q[b:b + 1], kb, vb, q_offset=p.cache - p.nq)
        worst = max(worst, relative_error(out[b:b + 1], want))
        del kb, vb, want
    return worst


# -- timing ------------------------------------------------------------------------------------------
def gpu_bench(fn: Callable) -> float:
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def cpu_bench(fn: Callable) -> float:
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def rotating(calls: list[Callable]) -> Callable:
    """One function that runs the next call of `calls` each time it is called."""
    turn = itertools.cycle(calls)
    return lambda: next(turn)()


def graph_ms(calls: list[Callable], bench: Callable) -> float:
    """ms per call of a CUDA graph holding every call of `calls` once (warmed up on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return bench(graph.replay) / len(calls)


def copy_bandwidth(device: torch.device, nbytes: int, bench: Callable) -> float:
    """GB/s of a device-to-device copy of `nbytes`, counting bytes read + bytes written."""
    src = torch.randn(nbytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / GB


def sets_for(p: Problem, l2_bytes: int, limit: int) -> int:
    """Input sets to rotate: enough that they span 4x the L2 cache, at most `limit`."""
    per_set = p.batch * p.capacity * p.spec.kv_heads * p.spec.head_dim * 2 * 2
    return max(1, min(limit, math.ceil(4 * l2_bytes / per_set)))


def measure(p: Problem, args, bench: Callable, l2_bytes: int, copy_gbs: float) -> list[dict]:
    gen = torch.Generator(device=p.device).manual_seed(p.batch * 1_000_003 + p.cache)
    sets = [make_set(p, gen) for _ in range(sets_for(p, l2_bytes, args.max_sets))]
    needed = p.needed_bytes()
    rows = []
    for name, (run, moved) in implementations(p, expand_limit=args.expand_limit_gb * GB).items():
        row = dict(spec=p.spec.name, batch=p.batch, cache=p.cache, nq=p.nq, impl=name, sets=len(sets),
                   needed_bytes=needed, moved=moved)
        try:
            row["error"] = check(name, run, sets[0], p)
            if not row["error"] <= TOLERANCE[p.dtype]:
                raise AssertionError(f"relative error {row['error']:.2e} > {TOLERANCE[p.dtype]:.0e}")
            calls = [lambda s=s: run(s) for s in sets]
            for call in calls:            # compiles, and makes sdpa-expanded's copies, before any timing
                call()
            row["median_us"] = bench(rotating(calls)) * 1e3
        except Exception as exc:          # one failing peer must not hide the others: say what and go on
            row["failed"] = f"{type(exc).__name__}: {exc}"[:200]
        if p.device.type == "cuda" and "failed" not in row:
            try:
                row["graph_us"] = graph_ms(calls, bench) * 1e3
            except Exception as exc:      # no graph: the median stands alone, with the reason
                row["graph_note"] = f"{type(exc).__name__}: {exc}"[:200]
        for key in ("median", "graph"):
            if f"{key}_us" in row:
                row[f"{key}_gbs"] = needed / (row[f"{key}_us"] * 1e-6) / GB
        best = max(row.get("median_gbs", 0.0), row.get("graph_gbs", 0.0))
        row["pct_copy"] = 100 * best / copy_gbs if best else None
        rows.append(row)
        print(line(row), flush=True)
    return rows


# -- output ------------------------------------------------------------------------------------------
HEADER = ("| spec | B | cache | impl | sets | median us | graph us | GB/s (median) | GB/s (graph) | % copy | "
          "moved | rel. error |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def line(row: dict) -> str:
    def num(key, fmt):
        value = row.get(key)
        return "-" if value is None else format(value, fmt)
    tail = f" FAILED {row['failed']}" if "failed" in row else ""
    tail += f" (no graph: {row['graph_note']})" if "graph_note" in row else ""
    return (f"| {row['spec']} | {row['batch']} | {row['cache']} | {row['impl']} | {row['sets']} | "
            f"{num('median_us', '.1f')} | {num('graph_us', '.1f')} | {num('median_gbs', '.0f')} | "
            f"{num('graph_gbs', '.0f')} | {num('pct_copy', '.0f')} | {row['moved']:g}x | "
            f"{num('error', '.1e')} |{tail}")


def summary(rows: list[dict], copy_gbs: float) -> str:
    """One line per problem: attngen's GB/s (the better of median and graph) and each peer's."""
    def gbs(row):
        return max(row.get("median_gbs", 0.0), row.get("graph_gbs", 0.0))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    out = ["| spec | B | cache | MB needed | " + " | ".join(f"{i} GB/s" for i in impls) + " | attngen % copy |",
           "|---" * (len(impls) + 5) + "|"]
    for key in dict.fromkeys((r["spec"], r["batch"], r["cache"]) for r in rows):
        mine = {r["impl"]: r for r in rows if (r["spec"], r["batch"], r["cache"]) == key}
        first = next(iter(mine.values()))
        cells = ["-" if i not in mine else "failed" if "failed" in mine[i] else f"{gbs(mine[i]):.4g}"
                 for i in impls]
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {first['needed_bytes'] / 1e6:.1f} | " + " | ".join(cells)
                   + f" | {100 * gbs(mine.get('attngen', {})) / copy_gbs:.0f} |")
    return "\n".join(out)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=SPECS_DIR.parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def shrunk(spec: A.Spec) -> A.Spec:
    """For --smoke: at most 2 kv heads, groups of at most 8, head dim 32 (the mask is the file's)."""
    kv = min(spec.kv_heads, 2)
    return dataclasses.replace(spec, kv_heads=kv, query_heads=kv * min(spec.group, 8), head_dim=32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", nargs="+", default=["gqa", "mqa"], help="names of specs/*.yaml")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--cache", type=int, nargs="+", default=[4096, 16384, 65536, 131072])
    parser.add_argument("--nq", type=int, default=1)
    parser.add_argument("--page-size", type=int, default=64)
    parser.add_argument("--copy-gb", type=float, default=4.0, help="size of the copy that sets the ceiling")
    parser.add_argument("--max-sets", type=int, default=16, help="most input sets rotated")
    parser.add_argument("--expand-limit-gb", type=float, default=40.0,
                        help="largest expanded K+V for the sdpa-expanded peer")
    parser.add_argument("--json", type=Path, help="also write every row as JSON lines here")
    parser.add_argument("--smoke", action="store_true", help="CPU, interpreter, tiny shapes: checks the script")
    args = parser.parse_args(argv)
    specs = [A.load_spec(SPECS_DIR / f"{name}.yaml") for name in args.specs]
    if args.smoke:
        device, bench, l2_bytes = torch.device("cpu"), cpu_bench, 2 ** 16     # 64 KiB: rotate 2+ sets
        specs, args.batch, args.cache, args.page_size, args.copy_gb = (
            [shrunk(s) for s in specs], [1, 3], [100, 300], 16, 0.016)
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run with --smoke on CPU")
    else:
        device, bench = torch.device("cuda"), gpu_bench
        l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size
    copy_gbs = copy_bandwidth(device, int(args.copy_gb * GB), bench)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)"
    import triton
    print(f"device {name}, torch {torch.__version__}, triton {triton.__version__}, commit {commit()}, "
          f"L2 {l2_bytes / 2**20:g} MiB\ncommand: python {' '.join(sys.argv)}\n"
          f"copy ceiling: {copy_gbs:.0f} GB/s (device-to-device copy of {args.copy_gb:g} GB, read + write)")
    print(HEADER, flush=True)
    rows = []
    for spec in specs:
        for batch in args.batch:
            for cache in args.cache:
                p = Problem(spec, batch, cache, args.nq, args.page_size, torch.bfloat16, device)
                rows += measure(p, args, bench, l2_bytes, copy_gbs)
                if device.type == "cuda":            # the next problem's caches may be larger
                    torch.cuda.empty_cache()
    if args.json:
        with args.json.open("w") as f:
            for row in rows:
                f.write(json.dumps({**row, "copy_gbs": copy_gbs, "device": name}) + "\n")
    failed = [r for r in rows if "failed" in r]
    print(f"\nsummary ({name}): copy ceiling {copy_gbs:.0f} GB/s; {len(rows)} rows, {len(failed)} failed")
    print(summary(rows, copy_gbs))
    # A peer that is missing or refuses a shape is reported, not fatal; attngen failing is.
    return 1 if any(r["impl"].startswith("attngen") for r in failed) else 0


if __name__ == "__main__":
    sys.exit(main())
