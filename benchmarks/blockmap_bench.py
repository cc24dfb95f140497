"""Block-map build time and memory: `python benchmarks/blockmap_bench.py`.

1. The headline: nq = nk = 1,048,576, causal + band(left=4096), tiles 128x128; must take under
   1 s and under 100 MB of peak resident memory above what the process held before the call
   (Linux: VmHWM after resetting it through /proc/self/clear_refs; elsewhere ru_maxrss).
2. 16K and 64K for causal, sliding window, Longformer, BigBird and Sparse Transformer strided,
   beside torch's flex_attention `create_block_mask` on the CPU at 16K when it is importable
   (it evaluates the mask on every pair; its FULL/PARTIAL counts double as a cross-check).
Times are the best of `--repeat` runs after a warm-up: the machine may be shared. On a busy
machine with few cores, torch's intra-op thread pool adds stalls of tens of ms to these small
operations; `--threads 1` (or OMP_NUM_THREADS=1) gives steadier numbers, for flex as well.
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import torch

from attngen import Spec, band, global_tokens, random, stride
from attngen.analysis.blockmap import block_map
from attngen.spec.random_draw import draw_key_blocks, query_block_span

BLOCK = 128
HEADLINE_N = 1 << 20
FLEX_TIME_LIMIT_S = 90.0      # stop starting flex runs past this much flex time


def spec_of(mask=None, causal=False) -> Spec:
    return Spec(name="bench", query_heads=1, kv_heads=1, head_dim=64, mask=mask, causal=causal)


SPECS = {
    "causal": spec_of(causal=True),
    "sliding_window(4096)": spec_of(band(left=4096), causal=True),
    "longformer(256+g2)": spec_of(band(256) | global_tokens(2)),
    "bigbird(96+g128+r3x64)": spec_of(band(96) | global_tokens(128) | random(3, 64, 0)),
    "strided(128)": spec_of(band(left=128) | stride(128), causal=True),
}


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_increase_mb(fn) -> tuple[object, float, str]:
    """(fn(), peak resident memory above the current level in MB, how it was measured)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                   # resets VmHWM to the current RSS
        before = _status_kb("VmRSS")
        out = fn()
        return out, (_status_kb("VmHWM") - before) / 1024, "VmHWM after reset"
    except (OSError, TypeError):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = fn()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return out, (after - before) / 1024, "ru_maxrss delta (a lower bound)"


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def headline(repeat: int) -> None:
    spec = SPECS["sliding_window(4096)"]
    n = HEADLINE_N
    block_map(spec, 4096, 4096, BLOCK, BLOCK)              # warm-up (imports, first-call setup)
    start = time.perf_counter()
    bm, peak_mb, how = peak_rss_increase_mb(lambda: block_map(spec, n, n, BLOCK, BLOCK))
    first = time.perf_counter() - start
    best, _ = best_time(lambda: block_map(spec, n, n, BLOCK, BLOCK), repeat)
    ok = "OK" if min(first, best) < 1.0 and peak_mb < 100 else "OVER BUDGET"
    print(f"headline: causal + band(left=4096), nq = nk = {n}, tiles {BLOCK}x{BLOCK}")
    print(f"  first call {first * 1e3:.1f} ms, best of {repeat} {best * 1e3:.1f} ms; "
          f"peak RSS increase {peak_mb:.1f} MB ({how})  [{ok}: < 1 s, < 100 MB]")
    print(f"  {bm}")


def flex_mask_mod(name: str, n: int):
    """The same masks as flex_attention mask_mods (q_offset 0: nq == nk)."""
    if name == "causal":
        return lambda b, h, q, k: q >= k
    if name.startswith("sliding"):
        return lambda b, h, q, k: (q >= k) & (q - k <= 4096)
    if name.startswith("longformer"):
        return lambda b, h, q, k: ((q - k).abs() <= 256) | (q < 2) | (k < 2)
    if name.startswith("strided"):
        return lambda b, h, q, k: (q >= k) & ((q - k <= 128) | ((q - k) % 128 == 0))
    first, count = query_block_span(n, 0, 64)
    drawn = draw_key_blocks(seed=0, per_row=3, block=64, nk=n, first_query_block=first, num_query_blocks=count)
    table = torch.zeros(count, -(-n // 64), dtype=torch.bool)
    table.scatter_(1, drawn, True)
    return lambda b, h, q, k: ((q - k).abs() <= 96) | (q < 128) | (k < 128) | table[q // 64, k // 64]


def flex_run(name: str, n: int):
    from torch.nn.attention.flex_attention import create_block_mask
    start = time.perf_counter()
    mask = create_block_mask(flex_mask_mod(name, n), None, None, n, n, device="cpu", BLOCK_SIZE=BLOCK)
    seconds = time.perf_counter() - start
    full = int(mask.full_kv_num_blocks.sum()) if mask.full_kv_num_blocks is not None else 0
    return seconds, full, int(mask.kv_num_blocks.sum())


def table(sizes: list[int], flex_sizes: list[int], repeat: int) -> None:
    """attngen's times first, then flex's (its CPU threads would disturb the short timings)."""
    rows = {}
    for name, spec in SPECS.items():
        block_map(spec, 2048, 2048, BLOCK, BLOCK)          # warm-up
        for n in sizes:
            rows[name, n] = best_time(lambda: block_map(spec, n, n, BLOCK, BLOCK), repeat)
    flex = {}
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        flex_sizes = []
    spent = 0.0
    for name, n in rows:
        if n in flex_sizes and spent < FLEX_TIME_LIMIT_S:
            flex[name, n] = flex_run(name, n)
            spent += flex[name, n][0]
    print(f"\n{'spec':24} {'n':>6} {'attngen ms':>10} {'full':>7} {'partial':>7} {'empty':>7}"
          f"{'  flex ms':>10} {'full':>7} {'partial':>7}")
    for (name, n), (seconds, bm) in rows.items():
        line = (f"{name:24} {n:>6} {seconds * 1e3:>10.2f} {bm.num_full:>7} {bm.num_partial:>7} "
                f"{bm.num_empty:>7}")
        if (name, n) in flex:
            fs, ff, fp = flex[name, n]
            agree = "" if (ff, fp) == (bm.num_full, bm.num_partial) else "  (counts differ)"
            line += f"{fs * 1e3:>10.1f} {ff:>7} {fp:>7}{agree}"
        elif n in flex_sizes:
            line += f"{'skipped':>10}"
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[16384, 65536])
    parser.add_argument("--flex-sizes", type=int, nargs="*", default=[16384],
                        help="sizes at which to time flex_attention's create_block_mask (CPU)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    headline(args.repeat)
    table(args.sizes, args.flex_sizes, args.repeat)


if __name__ == "__main__":
    main()
