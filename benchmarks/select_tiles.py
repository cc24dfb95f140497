"""Tile efficiency of content-based selection (`select:`): `python benchmarks/select_tiles.py`.

CPU only. For MoBA-style selection (top 4 key blocks of 64 tokens, causal) at n = 4K, 16K, 64K:
the selection is drawn for random q, k by the generated selection kernels (under Triton's
interpreter), turned into the kernels' own per-(batch, kv head) lists at the forward's tiles
(64 x 64, as the sm_80/sm_90 16-bit forward runs at head dim 128 with blocks of 64), and counted:

- visited: the list entries, i.e. the tiles the forward kernel walks (its COUNT_TILES count;
  tests/runtime/test_select.py checks the two agree), partial and full;
- holding a pair: tiles with at least one allowed pair (selected block and mask), counted apart
  from the lists: visited must equal it (no tile without an allowed pair is visited);
- the fractions of the dense causal work (the causal tiles) and of all tiles;
- the gate's FLOPs against the attention's (2 Nq/R Nk/R D per kv head vs 4 D per allowed pair
  and query head, at the bound), the share of time the gate can take on the arithmetic alone.
"""
from __future__ import annotations

import argparse
import time

import torch

from attngen import Spec
from attngen.analysis.blockmap import block_map
from attngen.runtime.launch import SoftmaxLauncher
from attngen.runtime import cache

TILE = 64


def measure(n: int, *, top: int, block: int, head_dim: int, seed: int) -> dict:
    spec = Spec(name=f"bench_select_{n}", query_heads=1, kv_heads=1, head_dim=head_dim, causal=True,
                select={"top": top, "block": block})
    launcher = SoftmaxLauncher(cache.generated(spec, "fwd"))
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, 1, n, head_dim, generator=gen) for _ in range(2))
    start = time.perf_counter()
    selection = launcher.select(q, k, 0, None, None)
    seconds = time.perf_counter() - start
    partial_ptr, _, full_ptr, _, rows = selection.lists(TILE, TILE)
    visited = int(partial_ptr[-1] + full_ptr[-1])
    causal = block_map(Spec(query_heads=1, kv_heads=1, head_dim=head_dim, causal=True), n, n, TILE, TILE)
    dense_causal = causal.num_full + causal.num_partial
    tiles = causal.dense_classes() != 0                                    # holds a causal pair
    per = block // TILE
    chosen = selection.chosen[0, 0].repeat_interleave(per, 0).repeat_interleave(per, 1)
    holding = int((tiles & chosen[:tiles.shape[0], :tiles.shape[1]]).sum())
    blocks = -(-n // block)
    gate_flops = 2 * blocks * blocks * head_dim
    attn_flops = 4 * head_dim * visited * TILE * TILE
    return dict(n=n, visited=visited, holding=holding, dense_causal=dense_causal, all=tiles.numel(),
                gate_share=gate_flops / (gate_flops + attn_flops), select_s=seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--top", type=int, default=4)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"select top {args.top} of {args.block}-token blocks, causal; tiles {TILE}x{TILE}; "
          f"head dim {args.head_dim}; random q, k (seed {args.seed})")
    print(f"{'n':>7} {'visited':>9} {'holding':>9} {'causal':>9} {'all':>10} {'of causal':>10} "
          f"{'of all':>8} {'gate FLOPs':>11} {'select (CPU s)':>15}")
    for n in args.n:
        r = measure(n, top=args.top, block=args.block, head_dim=args.head_dim, seed=args.seed)
        if r["visited"] != r["holding"]:
            raise SystemExit(f"n={n}: {r['visited']} tiles visited but {r['holding']} hold an allowed pair")
        print(f"{n:>7} {r['visited']:>9,} {r['holding']:>9,} {r['dense_causal']:>9,} {r['all']:>10,} "
              f"{100 * r['visited'] / r['dense_causal']:>9.2f}% {100 * r['visited'] / r['all']:>7.2f}% "
              f"{100 * r['gate_share']:>10.2f}% {r['select_s']:>15.1f}")


if __name__ == "__main__":
    main()
