"""Tile efficiency of a mask that reads call-time data (issue 12): prefix-LM with a per-sequence
prefix, `j <= i or j < prefix[b]`. Its block map is built once per shape from input-free bounds
(README, Decisions), so the kernels visit every tile the prefix could reach; this prints how many
more than the tiles that hold an allowed pair for the prefixes actually passed (the exact maps of
`j <= i or j < P` for each sequence's P).

    python benchmarks/input_tile_efficiency.py [--n 1000] [--batch 4]
"""
from __future__ import annotations

import argparse

import torch

import attngen as A
from attngen.analysis.blockmap import block_map

SPEC = dict(name="prefix_lm_efficiency", heads={"query": 1, "kv": 1}, head_dim=16,
            inputs={"prefix": {"shape": ["B"], "dtype": "int32"}}, mask="j <= i or j < prefix[b]")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    spec = A.load_spec(SPEC)
    launcher = A.compile(spec).launcher()
    n = args.n
    prefix = torch.linspace(0, n // 2, args.batch).to(torch.int32)
    q, k, v = (torch.randn(args.batch, 1, n, 16) for _ in range(3))
    cfg = launcher.tuned_config(q, k, v, q_offset=0, seg_q=None, seg_k=None, inputs={"prefix": prefix})
    *_, counts = launcher.forward(q, k, v, config=cfg, count_tiles=True, inputs={"prefix": prefix})
    counts = counts.reshape(args.batch, -1)
    print(f"| prefix P | tiles visited | tiles holding an allowed pair | efficiency |  (n = {n}, "
          f"tiles {cfg.block_m}x{cfg.block_n})\n|---|---|---|---|")
    for b, p in enumerate(prefix.tolist()):
        exact = A.Spec(name=f"prefix_{p}", query_heads=1, kv_heads=1, head_dim=16,
                       mask=A.expr(f"j <= i or j < {p}"))
        bm = block_map(exact, n, n, cfg.block_m, cfg.block_n)
        visited, needed = int(counts[b].sum()), bm.num_full + bm.num_partial
        print(f"| {p} | {visited} | {needed} | {needed / visited:.3f} |")


if __name__ == "__main__":
    main()
