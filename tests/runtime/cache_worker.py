"""Run by test_processes.py in fresh processes: load specs through the disk cache, run each
forward once, print one JSON line: load seconds, of which generate seconds (spent in
`cache.generated`: lowering, codegen and storing when cold, the index lookup when warm; the rest
is importing the kernel modules, the same either way), cache stats, a digest of the outputs.

    python cache_worker.py SPEC_PATH [--barrier DIR --rank R --world W] [--slow-build SECONDS]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

import attngen
from attngen.runtime import cache


def wait_for_everyone(folder: Path, rank: int, world: int) -> None:
    """A file barrier: every process has imported attngen before any compiles."""
    (folder / f"ready.{rank}").touch()
    deadline = time.time() + 120
    while len(list(folder.glob("ready.*"))) < world:
        if time.time() > deadline:
            raise TimeoutError("the other workers never became ready")
        time.sleep(0.01)


def slow_builds(seconds: float) -> None:
    """Hold the build lock longer, so that the other processes surely wait on it."""
    entry_files = cache._entry_files

    def slow(kernel):
        time.sleep(seconds)
        return entry_files(kernel)
    cache._entry_files = slow


def timed_generation() -> list:
    spent = [0.0]
    generated = cache.generated

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return generated(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start
    cache.generated = timed
    return spent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("specs")
    parser.add_argument("--barrier", type=Path)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--slow-build", type=float, default=0.0)
    args = parser.parse_args()
    if args.slow_build:
        slow_builds(args.slow_build)
    if args.barrier:
        wait_for_everyone(args.barrier, args.rank, args.world)
    generate_seconds = timed_generation()
    start = time.perf_counter()
    kernels = attngen.load(args.specs)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    g = torch.Generator().manual_seed(0)
    for name, op in kernels.items():
        spec = op.spec
        q = torch.randn(1, spec.query_heads, 16, spec.head_dim, generator=g)
        k, v = (torch.randn(1, spec.kv_heads, 16, spec.head_dim, generator=g) for _ in range(2))
        digest.update(op(q, k, v).numpy().tobytes())
    print(json.dumps({"seconds": seconds, "generate_seconds": generate_seconds[0],
                      "stats": dict(cache.STATS), "digest": digest.hexdigest()}))


if __name__ == "__main__":
    main()
