"""``attngen cost SPEC --n N``: exact pair count, FLOPs, bytes, KV cache and receptive field;
with ``--ranks W``, the work per rank of context parallelism (docs/distributed.md)."""
from __future__ import annotations

import json

from ..analysis.cost import Cost, cost
from ..analysis.sharding import LAYOUTS, RankWork, rank_work
from .common import DTYPES, add_command, add_docs, add_sizes, doc_segments, dtype_of, heads_line, \
    human_bytes, human_count, load, positive_int

EXAMPLES = """
  attngen cost specs/mistral_sliding_window.yaml --n 32768 --layers 32
  attngen cost specs/gqa.yaml --n 4096 --batch 8 --dtype bfloat16
  attngen cost specs/longformer.yaml --n 4096 --json          # one JSON object (docs/cli.md)
  attngen cost specs/mqa.yaml --n 1 --nk 8192                 # one decoding step
  attngen cost specs/packed_documents.yaml --n 357 --docs 100,200,57
  attngen cost specs/gqa.yaml --n 131072 --ranks 8 --layout zigzag   # work per rank, imbalance
"""


def add_parser(subparsers):
    parser = add_command(subparsers, "cost", help="FLOPs, bytes, KV cache and reach of a spec",
                         description="Count the allowed (query, key) pairs exactly (never building "
                                     "the mask) and derive forward/backward FLOPs, the minimum bytes "
                                     "moved, the KV cache and the receptive field of stacked layers.",
                         examples=EXAMPLES)
    parser.add_argument("spec", metavar="SPEC", help="spec YAML file")
    add_sizes(parser)
    add_docs(parser)
    parser.add_argument("--batch", type=positive_int, default=1, help="sequences (default 1)")
    parser.add_argument("--layers", type=positive_int, default=1,
                        help="stacked layers: multiplies FLOPs, bytes and cache; sets the "
                             "receptive field's depth (default 1)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                        help="element type of q, k, v, out and the cache (default float16)")
    parser.add_argument("--ranks", type=positive_int, default=None,
                        help="context parallelism over W ranks: exact allowed pairs per rank, max/mean "
                             "imbalance and ring steps with no work (self-attention, --n only)")
    parser.add_argument("--layout", choices=LAYOUTS, default="zigzag",
                        help="how --ranks shards the sequence (default zigzag)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def run(args) -> int:
    spec = load(args.spec)
    nk = args.n if args.nk is None else args.nk
    result = cost(spec, n=args.n, nk=args.nk, batch=args.batch, layers=args.layers,
                  dtype=dtype_of(args.dtype), q_offset=args.q_offset,
                  **doc_segments(spec, args.docs, args.n, nk, args.q_offset))
    work = _rank_work(spec, args) if args.ranks else None
    if args.json:
        data = json.loads(result.to_json())
        if work is not None:
            data["context_parallel"] = work_json(work)
        print(json.dumps(data))
    else:
        print(table(result, heads_line(spec)) + ("" if work is None else "\n" + work_table(work)))
    return 0


def _rank_work(spec, args) -> RankWork:
    if (args.nk is not None and args.nk != args.n) or args.q_offset not in (None, 0):
        raise SystemExit("attngen cost: --ranks is for self-attention over one sequence: leave out --nk and "
                         "--q-offset")
    if args.docs:
        raise SystemExit("attngen cost: --ranks counts a segments mask as one document: leave out --docs")
    if args.n < 2 * args.ranks:
        raise SystemExit(f"attngen cost: --n {args.n} cannot be cut into 2 x {args.ranks} chunks")
    return rank_work(spec, args.n, args.ranks, args.layout)


def work_json(w: RankWork) -> dict:
    return {"ranks": w.world, "layout": w.layout, "pairs_per_rank": list(w.pairs),
            "imbalance": w.imbalance, "empty_steps_per_rank": list(w.empty_steps), "ring_steps": w.ring_steps}


def work_table(w: RankWork) -> str:
    """The context-parallel rows: per rank its pairs, then the imbalance and the skipped steps."""
    mean = sum(w.pairs) / w.world
    rows = [("context parallel", f"{w.world} ranks, {w.layout} layout (2 x {w.world} chunks of n)")]
    rows += [(f"  rank {r}", f"{p:,} pairs ({p / mean if mean else 1:.3f} x mean), "
                             f"{e} of {w.world} ring steps empty") for r, (p, e) in enumerate(zip(w.pairs, w.empty_steps))]
    rows += [("imbalance", f"{w.imbalance:.4f} (max / mean pairs per rank)"),
             ("ring steps", f"{w.ring_steps} of {w.world} run; {sum(w.empty_steps)} (rank, step) computations "
                            "skipped as empty")]
    return "\n".join(f"{key:<16} {value}" for key, value in rows)


def table(c: Cost, heads: str) -> str:
    """The human form of a `Cost`."""
    total = c.n * c.nk
    if c.n != c.nk or c.q_offset != 0:
        reach = "n/a (queries and keys are different positions: cross-attention or decoding)"
    elif c.receptive_field is None:
        reach = "not computed"
    else:
        reach = f"{c.receptive_field:,} tokens after {_layers(c.layers)}"
    if c.layers_to_full_reach is not None:
        reach += f"; every query reaches all it can after {_layers(c.layers_to_full_reach)}"
    rows = [
        ("spec", f"{c.spec} ({c.kind}; {heads}; head_dim {c.head_dim})"),
        ("sizes", f"n={c.n:,} nk={c.nk:,} q_offset={c.q_offset:,} batch={c.batch} "
                  f"layers={c.layers} dtype={c.dtype}"),
        ("allowed pairs", f"{c.allowed_pairs:,} of {total:,} ({100 * c.allowed_pairs / total:.3g}%) "
                          "per head and sequence"),
        ("formula", c.formula or "none (counted row by row)"),
        *([("selected pairs", f"at most {c.selected_pairs_bound:,} ({100 * c.selected_pairs_bound / total:.3g}%) "
                              "per head and sequence, whatever the data")] if c.selected_pairs_bound is not None else []),
        ("FLOPs forward", f"{c.flops_fwd:,} ({human_count(c.flops_fwd, 'FLOP')})"),
        ("FLOPs backward", f"{c.flops_bwd:,} ({human_count(c.flops_bwd, 'FLOP')})"),
        ("bytes at least", f"{c.bytes_min:,} ({human_bytes(c.bytes_min)}): q, k, v, out"
                           + (", lse" if c.kind == "softmax" else "") + " once each"),
        ("intensity", f"{c.arithmetic_intensity:.1f} FLOP/byte (forward)"),
        ("KV cache", f"{human_bytes(c.kv_cache_bytes)} ({c.kv_cache_bytes:,} bytes); "
                     f"{human_bytes(c.kv_cache_bytes_per_token)} per token over {_layers(c.layers)}"),
        ("receptive field", reach),
    ]
    rows += [("note", note) for note in c.notes]
    return "\n".join(f"{key:<16} {value}" for key, value in rows)


def _layers(count: int) -> str:
    return f"{count} layer" + ("s" if count != 1 else "")
