"""Host time of a warm attngen call, kernel launch stubbed out: our code only, not Triton's.

    python benchmarks/host_overhead.py [--spec specs/mistral_sliding_window.yaml] [--calls 2000]

Times `attn(q, k, v)` (the forward, through the registered torch operator) and `attn.decode(...)`
on CPU tensors after a first call, with `runtime.launcher.launch_kernel` replaced by a function that
does nothing: what remains is argument checks, the cached per-shape tables and configuration,
output allocation (and, on CPU, the NaN poisoning the interpreter path always does), the keyword
mapping, and (first pair of lines) the torch operator's dispatch, which the second pair leaves out.
Prints the median and the 10th/90th percentiles in µs. The machine is shared and noisy: run it
twice and read the medians.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import attngen as A
from attngen.runtime import launcher


def _times_us(call, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - start) / 1e3)
    return sorted(out)


def _report(name: str, times: list[float]) -> None:
    n = len(times)
    print(f"{name:<8} median {statistics.median(times):7.1f} µs   p10 {times[n // 10]:7.1f}   "
          f"p90 {times[9 * n // 10]:7.1f}   ({n} calls)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="specs/mistral_sliding_window.yaml")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--n", type=int, default=16,
                        help="sequence length of the forward call (small: the CPU path fills the outputs "
                             "with NaN, memory work that grows with n and that no GPU call does)")
    parser.add_argument("--cache", type=int, default=256, help="KV-cache length of the decode call")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    attn = A.compile(args.spec)
    spec = attn.spec
    q = torch.randn(1, spec.query_heads, args.n, spec.head_dim)
    k = torch.randn(1, spec.kv_heads, args.n, spec.head_dim)
    v = torch.randn_like(k)
    q1 = torch.randn(4, spec.query_heads, 1, spec.head_dim)
    k_cache = torch.randn(4, spec.kv_heads, args.cache, spec.head_dim)
    v_cache = torch.randn_like(k_cache)
    lengths = torch.tensor([args.cache, max(args.cache - 3, 1), max(args.cache // 2, 1), 1], dtype=torch.int32)
    launched = []
    launcher.launch_kernel = lambda kernel, grid, kwargs, num_warps, num_stages: launched.append(grid)
    with torch.no_grad():
        attn(q, k, v)                                              # first calls: generate, plan
        attn.decode(q1, k_cache, v_cache, cache_seqlens=lengths)
        before = len(launched)
        forward = _times_us(lambda: attn(q, k, v), args.calls)
        decode = _times_us(lambda: attn.decode(q1, k_cache, v_cache, cache_seqlens=lengths), args.calls)
        # The same calls below the torch operator (what its implementation runs: attngen's code only).
        forward_impl = _times_us(lambda: attn.kernels.forward_impl(q, k, v), args.calls)
        decode_impl = _times_us(lambda: attn.kernels.decode_impl(q1, k_cache, v_cache, lengths), args.calls)
    assert len(launched) > before, "the stub was not called: the benchmark timed nothing"
    print(f"spec {spec.name}, forward n={args.n}, decode batch 4 against a {args.cache}-key cache, "
          f"torch {torch.__version__}, 1 thread, kernel launch stubbed")
    print("through the torch operator (attn(q, k, v), attn.decode(...): what a user calls)")
    _report("forward", forward)
    _report("decode", decode)
    print("below it (AttentionKernels.forward_impl / decode_impl: attngen's code alone)")
    _report("forward", forward_impl)
    _report("decode", decode_impl)


if __name__ == "__main__":
    main()
