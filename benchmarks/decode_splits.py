"""Split-KV counts a decode launch chooses, per batch, with no GPU (`choose_num_splits`).

    python benchmarks/decode_splits.py [--spec specs/gqa.yaml] [--target sm_90] [--n 8192] [--max-batch 64]

For a contiguous cache and one of 16-token pages: the kernel's tile configuration, its resident
CTAs per SM (its registers and shared memory compiled as launched for --target, against the SM's
limits), then per batch the programs (batch x kv heads x row tiles), the split count and the share
of the resident slots its waves keep busy.
"""
from __future__ import annotations

import argparse

import torch

import attngen as A
from attngen.analysis.lowering_decode import resident_ctas, sm_limits
from attngen.codegen.aot import resource_usage
from attngen.codegen.emit import generate
from attngen.runtime.decode import DecodeLauncher


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="specs/gqa.yaml")
    parser.add_argument("--target", default="sm_90")
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--max-batch", type=int, default=64)
    args = parser.parse_args(argv)
    launcher = DecodeLauncher(generate(A.load_spec(args.spec), "decode"))
    limits = sm_limits(args.target)
    caches = {"contiguous": dict(paged=False), "16-token pages": dict(paged=True, page_size=16)}
    rows, ctas = {}, {}
    for name, cache in caches.items():
        shape = dict(n=args.n, **cache)
        cfg = launcher.spill_free_config(args.target, torch.float16, **shape)
        usage = resource_usage(launcher.compile_for(args.target, torch.float16, cfg, **shape))   # split variant
        ctas[name] = resident_ctas(registers=usage.registers, shared=usage.shared + usage.dynamic_shared,
                                   num_warps=cfg.num_warps, limits=limits)
        rows[name] = [launcher.aot_arguments(torch.float16, batch=b, split=None, target=args.target, **shape)(cfg)[0]
                      for b in range(1, args.max_batch + 1)]
        print(f"{name}: {cfg}, {usage.registers} registers, {ctas[name]} CTAs per SM x {limits.sms} SMs")
    print("| batch | programs | " + " | ".join(f"splits, slots busy ({name})" for name in caches) + " |")
    print("|---|---|" + "---|" * len(caches))
    for b in range(args.max_batch):
        cells = []
        for name in caches:
            programs, splits, row_tiles = rows[name][b]
            run, slots = programs * splits * row_tiles, limits.sms * ctas[name]
            cells.append(f"{splits}, {run / (slots * -(-run // slots)):.0%}")
        programs, _, row_tiles = rows["contiguous"][b]
        print(f"| {b + 1} | {programs * row_tiles} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
