"""Registers and loop lengths of the kernels a launch runs, read from their machine code (no GPU).

    python benchmarks/sass_loops.py [--target sm_90] [--n 4096]
    python benchmarks/sass_loops.py --decode [--n 8192]     # gqa decode: contiguous and paged caches

For each case, the forward (and with --backward the dK/dV and dQ kernels) is compiled exactly as a
launch at n keys compiles it (`attngen emit --stage sass`), and the instruction count of every loop
of its SASS is printed (`aot.sass_loops`: a label and the branch back to it), with the tile
configuration, the registers and the leanest loop (the full-tile loop, where no mask is
evaluated). For comparison (Triton 3.9, sm_90, fp16, n = 4096), Triton's fused-attention tutorial
at 128x64/8 warps: d64 299 instructions in its loop and 120 registers (causal: 126 registers,
300 full / 411 diagonal), d128 385.
"""
from __future__ import annotations

import argparse
import re

import attngen as A
from attngen.codegen.aot import sass_loops

CASES = {
    "causal d64": dict(head_dim=64, causal=True),
    "dense d64": dict(head_dim=64),
    "causal d128": dict(head_dim=128, causal=True),
    "dense d128": dict(head_dim=128),
    "sliding window d128 GQA": "specs/mistral_sliding_window.yaml",
}


def rows(target: str, n: int, backward: bool):
    for name, case in CASES.items():
        spec = case if isinstance(case, str) else A.Spec(name=name.replace(" ", "_"), query_heads=16,
                                                           kv_heads=16, **case)
        for kernel in ("fwd", "bwd") if backward else ("fwd",):
            text = A.emit(spec, kernel=kernel, stage="sass", target=target, n=n)
            parts = re.split(r"^# ---- (\w+): \w+ ----$", text, flags=re.M)
            bodies = dict(zip(parts[1::2], parts[2::2])) if len(parts) > 1 else {"fwd": text}
            configs = re.findall(r"^# config: (.*?)(?: \((\w+): \w+\))?$", text, flags=re.M)
            resources = re.findall(r"^# resources: registers=(\d+).*?(?: \((\w+): \w+\))?$", text, flags=re.M)
            config_of = {role or "fwd": c for c, role in configs}
            registers_of = {role or "fwd": r for r, role in resources}
            for role, body in bodies.items():
                if role == "preprocess":
                    continue
                # the exit trap spins on itself; a TMA wait retries in two instructions (try-wait, branch)
                loops = [n for n in sass_loops(body) if n > 2]
                yield name, role, config_of[role], registers_of[role], loops


PAGE_SIZES = (None, 16, 32, 48, 64, 128)


def decode_rows(target: str, n: int):
    """gqa's decode kernel (batch 1, `n` cached keys) over a contiguous cache and over pages of each
    size: (cache, config, registers, loops, full-tile loop / the contiguous one)."""
    contiguous = None
    for page_size in PAGE_SIZES:
        text = A.emit("specs/gqa.yaml", kernel="decode", stage="sass", target=target, n=n, page_size=page_size)
        body = re.split(r"^# ---- decode: \w+ ----$", text, flags=re.M)[1].split("# ---- merge")[0]
        config = re.search(r"^# config: (.*?) \(decode", text, flags=re.M).group(1)
        registers = re.search(r"^# resources: registers=(\d+).*\(decode", text, flags=re.M).group(1)
        loops = [k for k in sass_loops(body) if k > 1]
        contiguous = contiguous or min(loops)
        yield (f"{page_size}-token pages" if page_size else "contiguous", config, registers, loops,
               min(loops) / contiguous)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="sm_90")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--backward", action="store_true", help="also the dK/dV and dQ kernels")
    parser.add_argument("--decode", action="store_true", help="the gqa decode kernel, contiguous and paged")
    args = parser.parse_args(argv)
    if args.decode:
        print("| cache | config | registers | loops | full-tile loop / contiguous |")
        print("|---|---|---|---|---|")
        for cache, config, registers, loops, ratio in decode_rows(args.target, args.n if args.n != 4096 else 8192):
            print(f"| {cache} | {config} | {registers} | {', '.join(map(str, loops))} | {ratio:.3f} |")
        return
    print("| case | kernel | config | registers | loops (instructions each) | leanest |")
    print("|---|---|---|---|---|---|")
    for name, role, config, registers, loops in rows(args.target, args.n, args.backward):
        print(f"| {name} | {role} | {config} | {registers} | {', '.join(map(str, loops))} | {min(loops)} |")


if __name__ == "__main__":
    main()
