"""Bytes one decode step reads, from the kernel's own count (COUNT_TILES), against the cache bytes
the mask allows once per kv group. Interpreter; shipped specs at their head dims and kv heads.
    python benchmarks/decode_bytes.py [--cache 8192] [--block-n 64]
"""
import argparse
import torch
import attngen as A
from attngen.analysis.configs import TileConfig
from attngen.analysis.lowering_decode import row_block
from attngen.codegen.emit import generate
from attngen.runtime.decode import DecodeLauncher

p = argparse.ArgumentParser()
p.add_argument("--cache", type=int, default=8192)
p.add_argument("--block-n", type=int, default=64)
p.add_argument("--specs", nargs="+", default=["gqa", "mqa", "mistral_sliding_window", "longformer",
                                              "bigbird", "sparse_strided", "sparse_fixed"])
p.add_argument("--nq", type=int, nargs="+", default=[1, 5])
args = p.parse_args()
MiB = 2 ** 20
print(f"B=1, cache {args.cache} keys, fp16, block_n {args.block_n}, page 64 (paged cache)")
print(f"{'spec':24} {'Hq/Hkv':>7} {'D':>4} {'Nq':>3} {'rowtiles':>8} {'keys read':>10} {'keys allowed':>12} "
      f"{'MiB read':>9} {'MiB allowed':>11} {'MiB/token':>9} {'dense MiB':>9}")
for name in args.specs:
    spec = A.load_spec(f"specs/{name}.yaml")
    run = DecodeLauncher(generate(spec, "decode"))
    n, d, hkv = args.cache, spec.head_dim, spec.kv_heads
    for nq in args.nq:
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, spec.query_heads, nq, d, generator=g).half()
        pages = -(-n // 64)
        k = torch.randn(pages, 64, hkv, d, generator=g).half()
        v = torch.randn(pages, 64, hkv, d, generator=g).half()
        table = torch.randperm(pages, generator=g).to(torch.int32)[None]
        cfg = TileConfig(row_block(spec.group, nq, d, torch.float16), args.block_n, 4, 1)
        _, _, counts = run.decode(q, k, v, cache_seqlens=torch.tensor([n], dtype=torch.int32),
                                  block_table=table, config=cfg, count_tiles=True)
        keys_read = int(counts[..., 1].sum())
        allowed = int(spec.dense_mask(nq, n, n - nq).any(0).sum()) * hkv     # once per kv group
        per_key = d * 2 * 2                                                  # K and V rows, fp16
        print(f"{name:24} {spec.query_heads:>3}/{hkv:<3} {d:>4} {nq:>3} {counts.shape[2]:>8} {keys_read:>10} "
              f"{allowed:>12} {keys_read * per_key / MiB:>9.3f} {allowed * per_key / MiB:>11.3f} "
              f"{keys_read * per_key / MiB / nq:>9.3f} {n * hkv * per_key / MiB:>9.3f}", flush=True)
