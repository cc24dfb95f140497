"""Tile efficiency of LSH attention (`lsh:`): `python benchmarks/lsh_tiles.py`.

CPU only, no kernel launched. For Reformer-style hashing (8 buckets, 2 rounds, causal, as
specs/select/reformer_lsh.yaml) at n = 4K and 16K, one head of random q, k: the call's rounds are
planned as a call plans them (buckets, stable sorts, runtime/lsh.py), their tile lists built at the
forward's 64 x 64 tiles (the sm_80/sm_90 16-bit forward at head dim 64), and counted:

- visited: the list entries over all rounds, i.e. the tiles the forward kernels walk (their
  COUNT_TILES count; tests/runtime/test_lsh.py checks the two agree), partial and full;
- holding a pair: per round, the tiles of the bucket-sorted rows that hold a pair allowed in that
  round (causal, same bucket, no earlier shared bucket), counted densely apart from the lists
  (n <= 16K): visited must equal it;
- the fraction of the dense causal work (the causal tiles), and the fraction of causal pairs allowed;
- the host time of planning (buckets, sorts, candidate tiles, settling them) on this CPU.
"""
from __future__ import annotations

import argparse
import time

import torch

from attngen import Spec
from attngen.analysis.blockmap import block_map
from attngen.runtime.lsh import LshAttention

TILE = 64


def measure(n: int, *, buckets: int, rounds: int, head_dim: int, seed: int, check: bool) -> dict:
    spec = Spec(name=f"bench_lsh_{n}", query_heads=1, kv_heads=1, head_dim=head_dim, causal=True,
                lsh={"buckets": buckets, "seed": 0, "rounds": rounds})
    runner = LshAttention(spec, None)
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, 1, n, head_dim, generator=gen) for _ in range(2))
    start = time.perf_counter()
    plan = runner.plan(q, k, 0)
    lists = [rnd.tiles.lists(TILE, TILE) for rnd in plan]
    seconds = time.perf_counter() - start
    visited = sum(int(p[-1] + f[-1]) for p, _, f, _, _ in lists)
    causal = block_map(Spec(query_heads=1, kv_heads=1, head_dim=head_dim, causal=True), n, n, TILE, TILE)
    out = dict(n=n, visited=visited, dense_causal=causal.num_full + causal.num_partial, plan_s=seconds)
    if check:
        holding, pairs, seen = 0, 0, torch.zeros(n, n, dtype=torch.bool)
        causal_pairs = torch.ones(n, n, dtype=torch.bool).tril()
        for rnd in plan:
            pq, pk = rnd.perm_q[0, 0], rnd.perm_k[0, 0]
            same = torch.zeros(n, n, dtype=torch.bool)
            same[pq[:, None], pk[None, :]] = rnd.seg_q[0][:, None] == rnd.seg_k[0][None, :]
            allowed = same & ~seen & causal_pairs
            seen |= same
            pairs += int(allowed.sum())
            tiles = allowed[pq][:, pk].view(n // TILE, TILE, n // TILE, TILE).any(dim=3).any(dim=1)
            holding += int(tiles.sum())
        out.update(holding=holding, pair_fraction=pairs / int(causal_pairs.sum()))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--buckets", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"lsh {args.buckets} buckets, {args.rounds} rounds, causal; tiles {TILE}x{TILE}; head dim "
          f"{args.head_dim}; random q, k (seed {args.seed})")
    print(f"{'n':>7} {'visited':>9} {'holding':>9} {'causal':>9} {'of causal':>10} {'pairs':>8} {'plan (CPU s)':>13}")
    for n in args.n:
        r = measure(n, buckets=args.buckets, rounds=args.rounds, head_dim=args.head_dim, seed=args.seed,
                    check=n <= 16384 and n % TILE == 0)
        if "holding" in r and r["visited"] != r["holding"]:
            raise SystemExit(f"n={n}: {r['visited']} tiles visited but {r['holding']} hold an allowed pair")
        holding = f"{r['holding']:>9,}" if "holding" in r else f"{'-':>9}"
        pairs = f"{100 * r['pair_fraction']:>7.2f}%" if "pair_fraction" in r else f"{'-':>8}"
        print(f"{n:>7} {r['visited']:>9,} {holding} {r['dense_causal']:>9,} "
              f"{100 * r['visited'] / r['dense_causal']:>9.2f}% {pairs} {r['plan_s']:>13.1f}")


if __name__ == "__main__":
    main()
