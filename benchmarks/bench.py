"""attngen against FlexAttention, SDPA (and flash-attn when installed), forward and forward+backward.

On a GPU:   python benchmarks/bench.py --device cuda [--n 1024 4096 16384] [--dims 64 128] [--backward]
On CPU:     python benchmarks/bench.py --device cpu     (block-map construction: see blockmap_bench.py)
Smoke test: python benchmarks/bench.py --smoke          (tiny sizes, interpreter; checks the script)
Tiles:      python benchmarks/bench.py --tile-efficiency [--n 257 1000]
            (tiles visited / non-empty tiles for every softmax spec in specs/, counted by the kernel)

TFLOP/s are counted from the exact number of allowed (i, j) pairs (`attngen.analysis.cost`):
4·D FLOPs per allowed pair per query head in the forward, 2.5× that for the backward, as the
FlashAttention papers count. Every timed attngen result is first checked against FlexAttention's
(or SDPA's) output. Record GPU tables in benchmarks/RESULTS.md with the device, commit and command.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import attngen as A
from attngen.analysis.cost import allowed_pairs
from attngen.checking import relative_error
from attngen.spec.random_draw import draw_key_blocks, query_block_span


SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"


@dataclass(frozen=True)
class Case:
    name: str
    mask: object = None          # attngen predicate (or None)
    causal: bool = False
    kv_heads: int | None = None  # None: MHA
    softcap: float | None = None
    alibi: bool = False
    segments: bool = False
    sdpa: bool = False           # SDPA has this pattern natively (dense / causal)
    flash: bool = False          # flash-attn has it natively (causal, window, softcap, alibi)


CASES = [
    Case("dense", sdpa=True, flash=True),
    Case("causal", causal=True, sdpa=True, flash=True),
    Case("sliding_window_4096", mask=A.band(left=4096), causal=True, flash=True),
    Case("documents", causal=True, mask=A.segments()),
    Case("gqa_causal", causal=True, kv_heads=2, sdpa=True, flash=True),
    Case("longformer", mask=A.band(256) | A.global_tokens(2)),
    Case("bigbird", mask=A.band(96) | A.global_tokens(128) | A.random(3, 64, seed=0)),
    Case("strided", causal=True, mask=A.band(left=128) | A.stride(128)),
    Case("softcap", causal=True, softcap=50.0, flash=True),
    Case("alibi", causal=True, alibi=True, flash=True),
]


def spec_for(case: Case, heads: int, head_dim: int) -> A.Spec:
    return A.Spec(name=case.name, query_heads=heads, kv_heads=case.kv_heads or heads, head_dim=head_dim,
                  mask=case.mask, causal=case.causal, softcap=case.softcap, alibi=case.alibi)


def document_ids(n: int, batch: int, device) -> torch.Tensor:
    """Packed documents of random lengths (mean n/8), fixed seed."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, max(2, n // 4), (n,), generator=g)
    ids = torch.repeat_interleave(torch.arange(n), lengths)[:n]
    return ids.expand(batch, n).contiguous().to(device)


def flex_mods(case: Case, spec: A.Spec, n: int, seg: torch.Tensor | None, device):
    """FlexAttention's mask_mod and score_mod for the same meaning (written independently)."""
    tables = {}
    for pred in spec.effective_mask.walk():
        if isinstance(pred, A.spec.Random):
            first, count = query_block_span(n, 0, pred.block)
            tables[pred] = draw_key_blocks(seed=pred.seed, per_row=pred.per_row, block=pred.block, nk=n,
                                           first_query_block=first, num_query_blocks=count).to(device)

    def allowed(b, h, q_idx, kv_idx):
        ctx = A.spec.EvalContext(nq=n, nk=n, q_offset=0,
                                 seg_rows=None if seg is None else seg[b, q_idx],
                                 seg_cols=None if seg is None else seg[b, kv_idx],
                                 random_table=lambda p: (0, tables[p]))
        return spec.effective_mask.evaluate(q_idx, kv_idx, ctx)

    slopes = A.spec.alibi_slopes(spec.query_heads).to(device=device, dtype=torch.float32)

    def score_mod(score, b, h, q_idx, kv_idx):
        if case.softcap:
            score = case.softcap * torch.tanh(score / case.softcap)
        if case.alibi:
            score = score - slopes[h] * (q_idx - kv_idx)
        return score

    has_mask = not isinstance(spec.effective_mask, A.spec.Everything)
    return (allowed if has_mask else None), (score_mod if case.softcap or case.alibi else None)


def flash_runner(case: Case, spec: A.Spec, q, k, v, backward: bool) -> Callable | None:
    """flash-attn's `flash_attn_func` on (B, N, H, D) copies made here, untimed (None where flash-attn
    is not installed or lacks the pattern). Its window is (left, right) with -1 for unbounded; its
    ALiBi bias is -slope * |i - j|, which is attngen's on the causal case it runs."""
    if not case.flash or q.device.type != "cuda":
        return None
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    window = (-1, -1)
    if isinstance(case.mask, A.spec.Band):
        window = tuple(-1 if side is None else side for side in (case.mask.left, case.mask.right))
    slopes = None
    if case.alibi:
        slopes = A.spec.alibi_slopes(spec.query_heads).to(device=q.device, dtype=torch.float32)
    qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_(backward) for t in (q, k, v))
    return lambda: flash_attn_func(qt, kt, vt, causal=case.causal, window_size=window,
                                   softcap=case.softcap or 0.0, alibi_slopes=slopes).transpose(1, 2)


def time_ms(fn: Callable, device: str) -> float:
    if device == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def run_case(case: Case, n: int, head_dim: int, args) -> list[dict]:
    device, dtype = args.device, getattr(torch, args.dtype)
    heads, batch = args.heads, args.batch
    spec = spec_for(case, heads, head_dim)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(batch, h, n, head_dim, device=device, dtype=dtype, generator=g)
               for h in (heads, spec.kv_heads, spec.kv_heads))
    seg = document_ids(n, batch, device) if case.segments or spec.uses_segments else None
    seg_args = {"seg_q": seg, "seg_k": seg} if seg is not None else {}
    pairs = allowed_pairs(spec, n, n, seg_q=None if seg is None else seg[0].cpu(),
                          seg_k=None if seg is None else seg[0].cpu())
    flops = 4 * head_dim * pairs * heads * batch * (3.5 if args.backward else 1.0)
    rows = []

    attn = A.compile(spec)
    runners = {"attngen": lambda: attn(q, k, v, **seg_args)}
    want = None
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        mask_mod, score_mod = flex_mods(case, spec, n, seg, device)
        block_mask = create_block_mask(mask_mod, batch if seg is not None else None, None, n, n,
                                       device=device) if mask_mod else None
        # Fresh compiled flex per case: past dynamo's recompile limit (8 variants of score_mod,
        # mask and shape) flex silently falls back to its unfused path, which stores nq x nk scores.
        torch._dynamo.reset()
        flex = torch.compile(flex_attention)
        gqa = spec.kv_heads != heads
        runners["flex"] = lambda: flex(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=gqa)
        want = runners["flex"]()
    except Exception as exc:  # flex unavailable here: say so, keep going
        print(f"  flex unavailable for {case.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    if case.sdpa:
        runners["sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=case.causal, enable_gqa=spec.kv_heads != heads)
        want = runners["sdpa"]() if want is None else want
    flash = flash_runner(case, spec, q, k, v, args.backward)
    if flash is not None:
        runners["flash-attn"] = flash
    if want is not None:
        for name, fn in runners.items():
            err = relative_error(fn(), want)
            assert err < 2e-2, f"{case.name}: {name} differs from the reference peer by {err:.2e}"
    for t in (q, k, v):
        t.requires_grad_(args.backward)
    for name, fn in runners.items():
        step = fn
        if args.backward:
            step = lambda fn=fn: fn().sum().backward()  # noqa: E731
        try:
            ms = time_ms(step, device)
        except NotImplementedError as exc:   # flex has no backward on the CPU
            print(f"  {name} skipped for {case.name}: {exc}", file=sys.stderr)
            continue
        rows.append(dict(case=case.name, n=n, d=head_dim, impl=name, ms=ms, tflops=flops / ms / 1e9))
    return rows


def tile_efficiency(sizes: list[int], device: str) -> int:
    """Print, per softmax spec in specs/ and size, the key tiles the kernel visited (its own count,
    COUNT_TILES) over the non-empty tiles of the block map. One head; the masks are the specs'."""
    from attngen.analysis.blockmap import block_map

    print("| spec | nq = nk | tiles visited | non-empty tiles | efficiency |\n|---|---|---|---|---|")
    worst = 1.0
    # the shipped specs, and the input-free mask formulas of specs/formulas (their maps are exact too)
    formulas = [s for s in A.load_specs(SPECS_DIR / "formulas")
                if s.uses_formulas and not s.all_inputs and s.score is None and s.value_head_dim is None]
    for full in (s for s in A.load_specs(SPECS_DIR) + formulas if s.kind == "softmax"):
        mask = None if isinstance(full.effective_mask, A.spec.Everything) else full.effective_mask
        spec = A.Spec(name=full.name, query_heads=1, kv_heads=1, head_dim=16, mask=mask,
                      softcap=full.softcap, alibi=full.alibi)
        launcher = A.compile(spec).launcher()
        for n in sizes:
            q, k, v = (torch.randn(1, 1, n, 16, device=device) for _ in range(3))
            ids = document_ids(n, 1, device) if spec.uses_segments else None
            seg = {} if ids is None else {"seg_q": ids, "seg_k": ids}
            cfg = launcher.tuned_config(q, k, v, q_offset=0, seg_q=seg.get("seg_q"), seg_k=seg.get("seg_k"))
            *_, counts = launcher.forward(q, k, v, config=cfg, count_tiles=True, **seg)
            bm = block_map(spec, n, n, cfg.block_m, cfg.block_n, **{name: t.cpu() for name, t in seg.items()})
            visited, non_empty = int(counts.sum()), bm.num_full + bm.num_partial
            worst = min(worst, visited / non_empty, non_empty / visited, 0.0 if bm.unresolved else 1.0)
            note = f" ({bm.unresolved} tiles unproven: an upper bound)" if bm.unresolved else ""
            print(f"| {spec.name} | {n} | {visited} | {non_empty}{note} | {visited / non_empty:.3f} |",
                  flush=True)
    return 0 if worst == 1.0 else 1


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, nargs="+", default=None,
                        help="sequence lengths (default 1024 4096 16384 65536 131072)")
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--cases", nargs="+", default=[c.name for c in CASES])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--backward", action="store_true", help="time forward+backward")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: checks the script")
    parser.add_argument("--tile-efficiency", action="store_true",
                        help="tiles visited / non-empty tiles per spec in specs/ (default --n 257 1000)")
    args = parser.parse_args(argv)
    if args.tile_efficiency:
        return tile_efficiency(args.n or [257, 1000], args.device)
    args.n = args.n or [1024, 4096, 16384, 65536, 131072]
    if args.smoke:
        args.device, args.n, args.dims, args.heads, args.dtype = "cpu", [200], [16], 2, "float32"
    elif args.device == "cpu":
        from blockmap_bench import main as blockmap_main
        return blockmap_main([]) or 0
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (interpreter)"
    print(f"device {device_name}, commit {commit()}, command: python {' '.join(sys.argv)}")
    print("| case | n | d | impl | ms | TFLOP/s |\n|---|---|---|---|---|---|")
    for case in (c for c in CASES if c.name in args.cases):
        for d in args.dims:
            for n in args.n:
                for row in run_case(case, n, d, args):
                    print(f"| {row['case']} | {row['n']} | {row['d']} | {row['impl']} | {row['ms']:.3f} | "
                          f"{row['tflops']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
