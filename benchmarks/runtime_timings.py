"""Runtime timings: cold compile per stage, warm `attngen.load('specs')`, `import attngen`.

    python benchmarks/runtime_timings.py [--specs mha mistral_sliding_window sparse_strided] [--repeat 3]

Every measurement runs in a fresh Python process with an empty temporary ATTNGEN_CACHE_DIR (and
Triton's cache inside it), so "cold" means cold on disk and in memory. Stages of one spec's forward
kernel, cold:
    ir          spec → IR (`build_forward` + the IR passes)
    analysis    the passes that need analysis (interval bounds → iteration strategy, tile table)
    codegen     IR → Triton source (`forward_values` + jinja)
    store       writing the cache entry (`cache.generated`'s store stage)
    import      importing the source (Triton's @jit reads every function's source)
    aot sm_90 cold / warm   `triton.compile` for sm_90, float16 (ahead of time: what a GPU's first
                call pays, no GPU needed); warm: again in a second process, from Triton's cache,
                which attngen points inside its own
    first call  one forward at n=64 under the interpreter (CPU), with its call-time tables
Times are the median over --repeat processes. `import attngen` is timed as the wall time of
`python -c 'import attngen'` against `python -c 'import torch'` (interleaved, median), and broken
down with `python -X importtime`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STAGES_CHILD = textwrap.dedent("""
    import json, sys, time, warnings
    warnings.simplefilter("ignore")
    import torch, attngen
    from attngen.analysis.lowering import ANALYSIS_PASSES
    from attngen.ir.passes import run_passes
    from attngen.ir.softmax import IR_PASSES, build_forward
    from attngen.codegen.plan import forward_values
    from attngen.codegen.render import render
    from attngen.runtime import cache
    from attngen.runtime.loader import load_source
    spec = attngen.load_spec(sys.argv[1])
    t = {}
    def timed(name, fn):
        start = time.perf_counter(); out = fn(); t[name] = time.perf_counter() - start; return out
    ir = timed("ir", lambda: run_passes(build_forward(spec), IR_PASSES, check=False))
    graph = timed("analysis", lambda: run_passes(ir, ANALYSIS_PASSES, check=False))
    name = f"attngen_fwd_{spec.name}"
    timed("codegen", lambda: render("fwd.py.jinja", **forward_values(graph, kernel_name=name)))
    kernel = cache.generated(spec, "fwd")
    t["store"] = cache.TIMINGS[-1][2]["store"]
    timed("import", lambda: load_source(kernel.source))
    attn = attngen.compile(spec)
    timed("aot sm_90 cold", lambda: attn.compile_for("sm_90", torch.float16))
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, spec.query_heads, 64, spec.head_dim, generator=g)
    k, v = (torch.randn(1, spec.kv_heads, 64, spec.head_dim, generator=g) for _ in range(2))
    timed("first call", lambda: attn(q, k, v))
    print(json.dumps(t))
""")

AOT_AGAIN_CHILD = textwrap.dedent("""
    import json, sys, time, warnings
    warnings.simplefilter("ignore")
    import torch, attngen
    attn = attngen.compile(attngen.load_spec(sys.argv[1]))
    start = time.perf_counter(); attn.compile_for("sm_90", torch.float16)
    print(json.dumps({"aot sm_90 warm": time.perf_counter() - start}))
""")

LOAD_CHILD = textwrap.dedent("""
    import json, sys, time, warnings
    warnings.simplefilter("ignore")
    import attngen
    from attngen.runtime import cache
    start = time.perf_counter(); kernels = attngen.load(sys.argv[1]); total = time.perf_counter() - start
    lookup = sum(sum(s.values()) for _, _, s in cache.TIMINGS)
    print(json.dumps({"load": total, "generate": lookup, "specs": len(kernels), "stats": dict(cache.STATS)}))
""")


def child_env(cache_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_CACHE_DIR", "ATTNGEN_LOG")}
    env.update(ATTNGEN_CACHE_DIR=cache_dir, TRITON_DEFAULT_FP_FUSION="1", PYTHONPATH=str(ROOT))
    return env


def run_child(code: str, arg: str, cache_dir: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True,
                          env=child_env(cache_dir), cwd=ROOT, timeout=600)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def cold_stages(spec_file: Path, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="attngen-bench-") as cache_dir:
            stages = run_child(STAGES_CHILD, str(spec_file), cache_dir)
            stages.update(run_child(AOT_AGAIN_CHILD, str(spec_file), cache_dir))
            runs.append(stages)
    return median_of(runs)


def load_times(specs: Path, repeat: int) -> tuple[dict, dict]:
    cold, warm = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="attngen-bench-") as cache_dir:
            cold.append(run_child(LOAD_CHILD, str(specs), cache_dir))
            warm.append(run_child(LOAD_CHILD, str(specs), cache_dir))
    keep = ("load", "generate")
    return median_of([{k: r[k] for k in keep} for r in cold]), {
        **median_of([{k: r[k] for k in keep} for r in warm]), "specs": warm[0]["specs"],
        "stats": warm[0]["stats"]}


def import_wall(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                env=child_env(tempfile.gettempdir()), cwd=ROOT).stdout)


def import_overhead(repeat: int) -> dict:
    """Wall time of importing torch alone, attngen, and attngen.api (the whole compiler, which
    `attngen.compile`/`load` import on first use), interleaved fresh processes, median; then
    `python -X importtime -c 'import attngen'`: attngen's own modules (self time) and the
    cumulative time of the heavy packages it pulls in."""
    walls = {"torch": [], "attngen": [], "attngen.api": []}
    for _ in range(repeat):
        for module in walls:
            walls[module].append(import_wall(module))
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import attngen"],
                          capture_output=True, text=True, env=child_env(tempfile.gettempdir()),
                          cwd=ROOT, timeout=300)
    rows = [re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            for line in done.stderr.splitlines()]
    rows = [(int(m.group(1)), int(m.group(2)), len(m.group(3)), m.group(4)) for m in rows if m]
    total = sum(cumulative for _, cumulative, depth, _ in rows if depth == 1)
    own = sum(self_us for self_us, _, _, name in rows if name.split(".")[0] == "attngen")
    heavy = {}
    for _, cumulative, _, name in rows:
        if name in ("torch", "triton", "sympy", "jinja2", "networkx", "yaml") and name not in heavy:
            heavy[name] = cumulative
    return {"torch_wall_s": statistics.median(walls["torch"]),
            "attngen_wall_s": statistics.median(walls["attngen"]),
            "compiler_wall_s": statistics.median(walls["attngen.api"]),
            "total_s": total / 1e6, "attngen_self_s": own / 1e6,
            "packages_s": {k: v / 1e6 for k, v in sorted(heavy.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--specs", nargs="+", default=["mha", "mistral_sliding_window", "sparse_strided"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("cold compile of the forward kernel, per stage (ms, median of %d fresh processes)" % args.repeat)
    header = None
    for name in args.specs:
        stages = cold_stages(ROOT / "specs" / f"{name}.yaml", args.repeat)
        if header is None:
            header = list(stages)
            print(f"  {'spec':<24}" + "".join(f"{h:>16}" for h in header))
        print(f"  {name:<24}" + "".join(f"{stages[h] * 1e3:>16.1f}" for h in header))
    cold, warm = load_times(ROOT / "specs", args.repeat)
    print(f"attngen.load('specs') ({warm['specs']} specs, every kernel kind): "
          f"cold {cold['load'] * 1e3:.0f} ms "
          f"(of which generating {cold['generate'] * 1e3:.0f} ms), warm {warm['load'] * 1e3:.0f} ms "
          f"(of which cache lookups {warm['generate'] * 1e3:.0f} ms; {warm['stats']})")
    imports = import_overhead(max(args.repeat, 5))
    print(f"import wall time (median of {max(args.repeat, 5)} fresh processes): torch alone "
          f"{imports['torch_wall_s'] * 1e3:.0f} ms, attngen {imports['attngen_wall_s'] * 1e3:.0f} ms "
          f"(+{(imports['attngen_wall_s'] - imports['torch_wall_s']) * 1e3:.0f} ms), with the compiler "
          f"(attngen.api, loaded on first compile/load) {imports['compiler_wall_s'] * 1e3:.0f} ms")
    print(f"python -X importtime -c 'import attngen': {imports['total_s'] * 1e3:.0f} ms in all, "
          f"{imports['attngen_self_s'] * 1e3:.0f} ms in attngen's own modules; packages it imports: "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in imports["packages_s"].items()))


if __name__ == "__main__":
    main()
