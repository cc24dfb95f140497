"""``attngen show SPEC --n N``: the tile map (full / partial / empty tiles) as text, or as a PNG
beside the token mask."""
from __future__ import annotations

import torch

from ..analysis.blockmap import block_map
from ..spec import Spec
from .common import CommandError, add_command, add_docs, add_sizes, doc_segments, load, positive_int

EXAMPLES = """
  attngen show specs/longformer.yaml --n 4096                 # 64 × 64 tiles of 64
  attngen show specs/bigbird.yaml --n 2048 --block 128
  attngen show specs/sparse_strided.yaml --n 1024 --png strided.png   # needs attngen[plot]
  attngen show specs/packed_documents.yaml --n 357 --block 16 --docs 100,200,57
  attngen show specs/select/moba.yaml --n 2048 --seed 3     # a selection drawn for random q, k
  attngen show specs/select/reformer_lsh.yaml --n 2048 --seed 3   # bucket-sorted tiles per round
"""

EMPTY, PARTIAL, FULL = 0, 1, 2    # the codes of BlockMap.dense_classes()
GLYPHS = {FULL: "█", PARTIAL: "▒", EMPTY: "·"}
MAX_TILES = 1 << 24              # tile pairs we hold as one int8 map
MAX_DENSE_PAIRS = 1 << 24        # token pairs evaluated for the PNG's token mask
PNG_SIZE = (12, 6)               # inches at PNG_DPI: the PNG is 1200 × 600 pixels
PNG_DPI = 100
MASK_COLOURS = ("#f2f2f2", "#1f1f1f")                       # not allowed, allowed
TILE_COLOURS = {EMPTY: "#f2f2f2", PARTIAL: "#e8a33d", FULL: "#2b5d8a"}


def add_parser(subparsers):
    parser = add_command(subparsers, "show", help="draw which tiles are full, partial, empty",
                         description="Classify the tiles of the attention matrix (query tiles × key "
                                     "tiles of --block) as full █, partial ▒ or empty ·, as the "
                                     "kernels see them, and count each class.",
                         examples=EXAMPLES)
    parser.add_argument("spec", metavar="SPEC", help="spec YAML file")
    add_sizes(parser)
    add_docs(parser)
    parser.add_argument("--block", type=positive_int, default=64,
                        help="tile size for queries and keys (default 64)")
    parser.add_argument("--width", type=positive_int, default=64,
                        help="characters per row at most; larger maps are drawn coarser (default 64)")
    parser.add_argument("--seed", type=int, default=None,
                        help="select: specs: draw q, k from torch.randn with this seed and show the "
                             "tiles of the key blocks selected for kv head 0 (SPEC.md's rule); lsh: "
                             "specs: the tiles of each round's bucket-sorted rows that the kernels visit")
    parser.add_argument("--png", metavar="FILE", help="also draw the token mask and the tile classes "
                                                      "side by side into a PNG (needs matplotlib)")
    return parser


def run(args) -> int:
    spec = load(args.spec)
    nk = args.n if args.nk is None else args.nk
    segments = doc_segments(spec, args.docs, args.n, nk, args.q_offset)
    classes = tile_classes(spec, args.n, nk, args.block, args.q_offset, segments)
    if args.seed is not None and spec.lsh is not None:
        print(f"buckets drawn for q, k ~ torch.randn (seed {args.seed}), batch 0, query head 0; rows and "
              "keys sorted by bucket, as the kernels see them")
        for r, drawn in enumerate(drawn_lsh_rounds(spec, args.n, nk, args.block, args.q_offset, args.seed)):
            print(f"round {r}:")
            print(render(spec, drawn, n=args.n, nk=nk, block=args.block, width=args.width))
        return 0
    if args.seed is not None:
        classes = drawn_selection(spec, classes, args.n, nk, args.block, args.q_offset, segments, args.seed)
        print(f"selection drawn for q, k ~ torch.randn (seed {args.seed}), batch 0, kv head 0")
    print(render(spec, classes, n=args.n, nk=nk, block=args.block, width=args.width))
    if args.png:
        draw_png(spec, classes, args.png, n=args.n, nk=nk, q_offset=args.q_offset, segments=segments)
        print(f"wrote {args.png}")
    return 0


def tile_classes(spec: Spec, nq: int, nk: int, block: int, q_offset: int | None = None,
                 segments: dict | None = None) -> torch.Tensor:
    """int8 (query tiles, key tiles) from the block map: EMPTY 0, PARTIAL 1, FULL 2, as the kernels
    see them (a tile the map cannot prove full or empty is partial). Segments count as one."""
    tiles = -(-nq // block) * -(-nk // block)
    if tiles > MAX_TILES:
        raise ValueError(f"{tiles:,} tiles is more than {MAX_TILES:,} to draw: use a larger --block "
                         "or a smaller --n")
    segments = segments or (_one_segment(nq, nk) if spec.uses_segments else {})
    return block_map(spec, nq, nk, block, block, q_offset=q_offset, **segments).dense_classes()


def drawn_selection(spec: Spec, classes: torch.Tensor, nq: int, nk: int, block: int, q_offset, segments,
                    seed: int) -> torch.Tensor:
    """`classes` with the tiles of unselected key blocks emptied: the selection (SPEC.md, applied as
    the float64 reference applies it) of kv head 0 for q, k drawn from torch.randn(seed)."""
    from ..reference_select import selected_blocks
    from ..spec import resolve_q_offset
    if spec.select is None:
        raise CommandError(f"--seed draws a content-based selection; spec {spec.name!r} has no select:")
    size = spec.select.block
    if size % block:
        raise CommandError(f"--block {block} must divide the spec's select block ({size}): a tile "
                           "must lie inside one key block")
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, spec.group, nq, spec.head_dim, generator=gen)     # kv head 0's query heads
    k = torch.randn(1, 1, nk, spec.head_dim, generator=gen)
    q_offset = resolve_q_offset(nq, nk, q_offset)
    segments = segments or (_one_segment(nq, nk) if spec.uses_segments else {})
    candidates = block_map(spec, nq, nk, size, size, q_offset=q_offset, refine_budget=1 << 62,
                           **segments).dense_classes() != 0
    one_head = Spec(**{**{f: getattr(spec, f) for f in ("name", "head_dim", "causal", "mask", "select")},
                       "query_heads": spec.group, "kv_heads": 1})
    chosen = selected_blocks(one_head, q, k, candidates, q_offset, rows=size)[0, 0]       # (QB, KB)
    per = size // block
    keep = chosen.repeat_interleave(per, 0).repeat_interleave(per, 1)[:classes.shape[0], :classes.shape[1]]
    return torch.where(keep, classes, torch.zeros_like(classes))


def drawn_lsh_rounds(spec: Spec, nq: int, nk: int, block: int, q_offset, seed: int) -> list[torch.Tensor]:
    """Per round, int8 (query tiles, key tiles): the classes of the tiles the kernels visit over the
    bucket-sorted rows of one head (runtime/lsh.py) for q, k drawn from torch.randn(seed)."""
    from ..runtime.lsh import LshAttention
    from ..spec import resolve_q_offset
    one_head = Spec(name=spec.name, query_heads=1, kv_heads=1, head_dim=spec.head_dim, causal=spec.causal,
                    mask=spec.mask, lsh=spec.lsh)
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 1, nq, spec.head_dim, generator=gen), torch.randn(1, 1, nk, spec.head_dim, generator=gen)
    out = []
    for rnd in LshAttention(one_head, None).plan(q, k, resolve_q_offset(nq, nk, q_offset)):
        _, t, u, cls = rnd.tiles.classes(block, block)
        drawn = torch.zeros(-(-nq // block), -(-nk // block), dtype=torch.int8)
        drawn[t, u] = cls
        out.append(drawn)
    return out


def _one_segment(nq: int, nk: int) -> dict:
    """Segment ids of zeros: a picture has no call-time ids, so every pair is in one segment."""
    return {"seg_q": torch.zeros(nq, dtype=torch.int64), "seg_k": torch.zeros(nk, dtype=torch.int64)}


def _token_mask(spec: Spec, nq: int, nk: int, q_offset, segments: dict | None = None) -> torch.Tensor:
    segments = segments or (_one_segment(nq, nk) if spec.uses_segments else {})
    return spec.dense_mask(nq, nk, q_offset, **segments)


def _coarsen(classes: torch.Tensor, factor: int) -> torch.Tensor:
    """Cells of factor × factor tiles: full if all are full, empty if all are empty, else partial."""
    if factor == 1:
        return classes
    tq, tk = classes.shape
    rows, cols = -(-tq // factor), -(-tk // factor)
    full = torch.ones(rows * factor, cols * factor, dtype=torch.bool)
    empty = torch.ones_like(full)
    full[:tq, :tk] = classes == FULL
    empty[:tq, :tk] = classes == EMPTY
    full = full.view(rows, factor, cols, factor).all(3).all(1)
    empty = empty.view(rows, factor, cols, factor).all(3).all(1)
    out = torch.full((rows, cols), PARTIAL, dtype=torch.int8)
    out[full] = FULL
    out[empty] = EMPTY
    return out


def render(spec: Spec, classes: torch.Tensor, *, n: int, nk: int, block: int, width: int = 64) -> str:
    tq, tk = classes.shape
    counts = {c: int((classes == c).sum()) for c in (FULL, PARTIAL, EMPTY)}
    total = tq * tk
    visited = counts[FULL] + counts[PARTIAL]
    factor = -(-max(tq, tk) // width)
    lines = [f"{spec.name}: {tq} × {tk} tiles of {block} × {block} (n={n:,}, nk={nk:,})",
             f"{GLYPHS[FULL]} full {counts[FULL]:,}   {GLYPHS[PARTIAL]} partial {counts[PARTIAL]:,}   "
             f"{GLYPHS[EMPTY]} empty {counts[EMPTY]:,}   (visited {visited:,} of {total:,} = "
             f"{100 * visited / total:.3g}%)"]
    if factor > 1:
        lines.append(f"each character is {factor} × {factor} tiles (full or empty only if all are)")
    for row in _coarsen(classes, factor).tolist():
        lines.append("".join(GLYPHS[c] for c in row))
    return "\n".join(lines)


def draw_png(spec: Spec, classes: torch.Tensor, path: str, *, n: int, nk: int, q_offset,
             segments: dict | None = None) -> None:
    """The token mask (left) and the tile classes (right), PNG_SIZE × PNG_DPI pixels."""
    try:
        import matplotlib
    except ImportError:
        raise CommandError("--png needs matplotlib: pip install 'attngen[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    if n * nk > MAX_DENSE_PAIRS:
        raise ValueError(f"--png draws every token pair: n × nk = {n * nk:,} is more than "
                         f"{MAX_DENSE_PAIRS:,}; use a smaller --n")
    mask = _token_mask(spec, n, nk, q_offset, segments)
    fig, (left, right) = plt.subplots(1, 2, figsize=PNG_SIZE, dpi=PNG_DPI)
    # Fixed colour limits: a mask that allows every pair (or none) keeps its colour, where an
    # autoscaled single-valued image would be drawn in the lowest colour.
    left.imshow(mask.to(torch.int8).numpy(), cmap=ListedColormap(MASK_COLOURS), vmin=0, vmax=1,
                interpolation="nearest", aspect="auto")
    left.set(title=f"{spec.name}: token mask", xlabel="key j", ylabel="query row")
    left.legend(handles=[Patch(color=MASK_COLOURS[1], label="allowed"),
                         Patch(color=MASK_COLOURS[0], label="not allowed")],
                loc="upper right", framealpha=0.9)
    right.imshow(classes.numpy(), cmap=ListedColormap([TILE_COLOURS[c] for c in (EMPTY, PARTIAL, FULL)]), vmin=EMPTY, vmax=FULL,
                 interpolation="nearest", aspect="auto")
    counts = {c: int((classes == c).sum()) for c in (FULL, PARTIAL, EMPTY)}
    right.set(title="tiles as the kernels see them", xlabel="key tile", ylabel="query tile")
    right.legend(handles=[Patch(color=TILE_COLOURS[c], label=f"{word} {counts[c]:,}")
                          for c, word in ((FULL, "full"), (PARTIAL, "partial"), (EMPTY, "empty"))],
                 loc="upper right", framealpha=0.9)
    for axes in (left, right):                      # tiles and tokens are whole numbers
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, dpi=PNG_DPI)
    plt.close(fig)
