"""``attngen run SPEC``: compile a spec, run it on random inputs, check it against the reference."""
from __future__ import annotations

import time

import torch

from .. import progress
from ..analysis.cost import flops_forward
from ..analysis.pairs import allowed_pairs
from ..checking import TOLERANCE, relative_error
from ..reference import reference
from ..spec import Spec, resolve_q_offset
from .common import CommandError, DTYPES, add_command, add_sizes, dtype_of, human_count, load, \
    positive_int
from .emit import compiler_entry

EXAMPLES = """
  attngen run specs/mha.yaml --n 64                      # CPU: Triton's interpreter, float32
  attngen run specs/gqa.yaml --n 4096 --device cuda --dtype bfloat16 --repeat 20
  attngen run specs/packed_documents.yaml --n 300        # random packed documents as segment ids
  attngen run specs/mqa.yaml --n 1 --nk 1000             # one decoding step
"""


def add_parser(subparsers):
    parser = add_command(subparsers, "run", help="compile, run on random inputs, check the result",
                         description="Compile the spec, run it on random inputs (Triton's interpreter "
                                     "on CPU), compare out and lse with the float64 reference and "
                                     "print the error, the time and the achieved FLOP rate. Exit "
                                     "status 1 when an error is over the dtype's tolerance.",
                         examples=EXAMPLES)
    parser.add_argument("spec", metavar="SPEC", help="spec YAML file")
    add_sizes(parser, n_required=False, n_default=128)
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="input dtype (default float32)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument("--repeat", type=positive_int, default=1,
                        help="timed calls after the first (default 1)")
    return parser


def random_inputs(spec: Spec, *, n: int, nk: int, batch: int, dtype, device, seed: int,
                  q_offset: int | None = None) -> tuple[tuple, dict]:
    """(q, k, v) drawn from `seed`, and the call's keyword arguments (packed documents' segment ids
    when the spec has a segments mask)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(heads, length):
        return torch.randn(batch, heads, length, spec.head_dim, generator=gen).to(device=device, dtype=dtype)

    q, k, v = draw(spec.query_heads, n), draw(spec.kv_heads, nk), draw(spec.kv_heads, nk)
    kwargs = {}
    if spec.uses_segments:       # documents of random lengths cut at a few key positions
        cuts = torch.randint(0, nk, (max(1, nk // 64),), generator=gen)
        offset = resolve_q_offset(n, nk, q_offset)
        seg_k = torch.bucketize(torch.arange(nk), cuts.sort().values, right=True)
        seg_q = torch.bucketize(torch.arange(n) + offset, cuts.sort().values, right=True)
        kwargs = {"seg_q": seg_q.to(device), "seg_k": seg_k.to(device)}
    if q_offset is not None:
        kwargs["q_offset"] = q_offset
    return (q, k, v), kwargs


def _generate_and_compile(attn, q, k, v, kwargs: dict, device: str) -> list[tuple[str, str]]:
    """Generate the forward kernel and, on a GPU, compile it for these arguments, each timed on
    its own (kernels are otherwise made lazily inside the first call). A stand-in for the compiler
    without launchers (the tests') has no such stages."""
    if not hasattr(attn, "launcher"):
        return []
    from ..runtime import cache

    builds = cache.STATS["builds"]
    launcher, seconds = _timed(lambda: attn.launcher("fwd"), "cpu")
    how = "lowered, generated, stored in the disk cache" if cache.STATS["builds"] > builds else \
        "read from the disk cache"
    rows = [("generate", f"{seconds:.2f} s ({how})")]
    if device != "cuda":
        return rows + [("compile", "none: on CPU Triton's interpreter runs the generated source")]
    if not hasattr(launcher, "tuned_config"):
        return rows + [("compile", "inside the first call (Triton's JIT)")]
    _, seconds = _timed(lambda: launcher.tuned_config(q, k, v, q_offset=kwargs.get("q_offset"),
                                                      seg_q=kwargs.get("seg_q"),
                                                      seg_k=kwargs.get("seg_k")), device)
    return rows + [("compile", f"{seconds:.2f} s (tile configurations compiled for these arguments "
                               "until one has no spills)")]


def _calls(count: int) -> str:
    return f"{count} call" + ("s" if count != 1 else "")


def _timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def run(args) -> int:
    spec = load(args.spec)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda: no CUDA device here (run on cpu: Triton's interpreter)")
    n, nk, dtype = args.n, args.n if args.nk is None else args.nk, dtype_of(args.dtype)
    with progress.step(f"{spec.name}: loading the compiler, registering the operators"):
        attn, setup = _timed(lambda: compiler_entry("compile")(spec), "cpu")
    (q, k, v), kwargs = random_inputs(spec, n=n, nk=nk, batch=args.batch, dtype=dtype,
                                      device=args.device, seed=args.seed, q_offset=args.q_offset)
    stages = [("setup", f"{setup:.2f} s (imports, operator registration)")]
    stages += _generate_and_compile(attn, q, k, v, kwargs, args.device)
    softmax = spec.kind == "softmax"
    options = {"return_lse": True} if softmax else {}
    got, first = _timed(lambda: attn(q, k, v, **kwargs, **options), args.device)
    stages.append(("first call", f"{first:.2f} s"))
    with progress.step(f"{spec.name}: {_calls(args.repeat)} timed"):
        times = [_timed(lambda: attn(q, k, v, **kwargs, **options), args.device)[1]
                 for _ in range(args.repeat)]
    want_out, want_lse = reference(spec, q, k, v, **kwargs)
    errors = {"out": relative_error(got[0] if softmax else got, want_out)}
    if softmax:
        errors["lse"] = relative_error(got[1], want_lse)
    segments = {key: kwargs[key] for key in ("seg_q", "seg_k") if key in kwargs}
    pairs = allowed_pairs(spec, n, nk, args.q_offset, **segments)
    flops = flops_forward(spec, pairs=pairs, n=n, nk=nk, batch=args.batch)
    tolerance = TOLERANCE[dtype]
    print(f"{spec.name}: batch={args.batch} n={n} nk={nk} {args.dtype} on {args.device}")
    for name, text in stages:
        print(f"  {name:<10} {text}")
    for name, err in errors.items():
        print(f"  {name:<10} relative error {err:.3e} (tolerance {tolerance:.0e}): "
              f"{'ok' if err <= tolerance else 'FAILED'}")
    best = min(times)
    print(f"  {'time':<10} {best * 1e3:.3f} ms (best of {_calls(len(times))} after the first)")
    print(f"  {'rate':<10} {human_count(flops / best, 'FLOP/s')} ({flops:,} FLOPs, {pairs:,} allowed pairs)")
    return 0 if all(err <= tolerance for err in errors.values()) else 1
