"""How linear attention's time and memory grow with length: `python benchmarks/linear_scaling.py`.

Runs the generated kernels of a causal elu1 spec (head_dim 16 by default) at four lengths under
Triton's interpreter on the CPU (or compiled, with `--device cuda`), forward and forward+backward,
and fits the log-log slope of time against n (1 means linear). Memory is the peak of Python-side
allocations during the call (tracemalloc sees the interpreter's numpy tiles) and the bytes of the
torch tensors the launcher allocates per forward+backward (outputs, gradients, chunk states,
per-row values): neither may grow faster than n (no Nq × Nk buffer anywhere). `--softmax` times the causal softmax forward at
the same sizes beside it (quadratic). Times are the best of `--repeat` runs after a warm-up; under
the interpreter `--clock cpu` times this process's CPU seconds instead of wall seconds, which other
work on a shared machine does not inflate (the interpreter is single-threaded numpy).
"""
from __future__ import annotations

import argparse
import math
import time
import tracemalloc

import torch

import attngen as A

LENGTHS = (128, 256, 512, 1024)


def fitted_exponent(ns, values) -> float:
    """Least-squares slope of log(value) against log(n)."""
    xs, ys = [math.log(n) for n in ns], [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def best_time(fn, repeat: int, clock=time.perf_counter) -> float:
    fn()                                               # warm-up: generation, import, caches
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, clock() - start)
    return best


def python_peak(fn) -> int:
    """Peak bytes allocated through Python/numpy while `fn` runs, above the starting point."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def launcher_bytes(fn) -> int:
    """Bytes of every tensor the linear launcher allocates while `fn` runs (outputs, chunk states,
    per-row values): torch.empty / torch.empty_like are counted in attngen.runtime.linear."""
    import attngen.runtime.linear as linear

    total = 0
    real = linear.torch

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def empty(*args, **kwargs):
            nonlocal total
            t = real.empty(*args, **kwargs)
            total += t.numel() * t.element_size()
            return t

        @staticmethod
        def empty_like(*args, **kwargs):
            nonlocal total
            t = real.empty_like(*args, **kwargs)
            total += t.numel() * t.element_size()
            return t

    linear.torch = Counting()
    try:
        fn()
    finally:
        linear.torch = real
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--softmax", action="store_true", help="also time the causal softmax forward")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall seconds, or this process's CPU seconds (interpreter on a busy machine)")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu times the interpreter; GPU kernels need wall time")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    spec = A.Spec(name="linear_bench", kind="linear", query_heads=args.heads, kv_heads=args.heads,
                  head_dim=args.head_dim, causal=True, feature_map=A.FeatureMap("elu1"))
    attn = A.compile(spec)
    softmax = A.compile(A.Spec(name="softmax_bench", query_heads=args.heads, kv_heads=args.heads,
                               head_dim=args.head_dim, causal=True)) if args.softmax else None
    chunk = attn.launcher("fwd").config(torch.device(args.device)).chunk
    rows = {"fwd": [], "fwd+bwd": [], "softmax fwd": []}
    print(f"causal elu1, head_dim {args.head_dim}, {args.heads} head(s), batch {args.batch}, "
          f"{args.device}, chunk {chunk}, {args.clock} clock")
    print(f"{'n':>6} {'fwd s':>9} {'fwd+bwd s':>10} {'py peak MB':>11} {'alloc KB':>9}"
          + (f" {'softmax s':>10}" if softmax else ""))
    for n in args.lengths:
        gen = torch.Generator().manual_seed(n)
        q, k, v, dout = (torch.randn(args.batch, args.heads, n, args.head_dim, generator=gen).to(args.device)
                         for _ in range(4))

        def forward():
            return attn(q, k, v)

        def forward_backward():
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            attn(*leaves).backward(dout)

        fwd = best_time(forward, args.repeat, clock)
        both = best_time(forward_backward, args.repeat, clock)
        peak = python_peak(forward_backward)
        alloc = launcher_bytes(forward_backward)
        rows["fwd"].append(fwd)
        rows["fwd+bwd"].append(both)
        rows.setdefault("launcher alloc", []).append(alloc)
        line = f"{n:>6} {fwd:>9.3f} {both:>10.3f} {peak / 2**20:>11.2f} {alloc / 1024:>9.1f}"
        if softmax:
            soft = best_time(lambda: softmax(q, k, v), args.repeat, clock)
            rows["softmax fwd"].append(soft)
            line += f" {soft:>10.3f}"
        print(line, flush=True)
        rows.setdefault("python peak", []).append(peak)
    for name in ("fwd", "fwd+bwd", "softmax fwd", "launcher alloc", "python peak"):
        if rows.get(name):
            print(f"fitted exponent ({name}): {fitted_exponent(args.lengths, rows[name]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
