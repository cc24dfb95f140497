"""What the subcommands share: loading specs, argument types, and printing sizes for people."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..spec import Spec, load_spec

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class CommandError(Exception):
    """A command cannot go on (a missing optional package, a missing compiler entry point); the
    message says what to do. Printed as one ``attngen: error:`` line, exit status 2."""


def add_command(subparsers, name: str, *, help: str, description: str, examples: str):
    """A subcommand parser whose help ends with its examples."""
    return subparsers.add_parser(name, help=help, description=description,
                                 epilog="examples:\n" + examples.strip("\n"),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_sizes(parser, *, n_required: bool = True, n_default: int | None = None) -> None:
    """--n / --nk / --q-offset, as every size-taking command spells them."""
    parser.add_argument("--n", type=positive_int, required=n_required, default=n_default,
                        help="number of queries" + (f" (default {n_default})" if n_default else ""))
    parser.add_argument("--nk", type=positive_int, default=None,
                        help="number of keys (default: --n)")
    parser.add_argument("--q-offset", type=int, default=None,
                        help="position of the first query (default nk - n: the last query lines "
                             "up with the last key)")


def add_docs(parser) -> None:
    parser.add_argument("--docs", type=doc_lengths, metavar="L1,L2,..",
                        help="packed documents: their lengths in tokens, summing to nk (the keys), "
                             "for a spec with a segments mask (default: one document)")


def doc_lengths(text: str) -> list[int]:
    """'100,200,57' → [100, 200, 57]."""
    try:
        lengths = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of lengths") from None
    if any(length < 1 for length in lengths):
        raise argparse.ArgumentTypeError(f"document lengths must be >= 1, got {text!r}")
    return lengths


def doc_segments(spec: Spec, lengths: list[int] | None, n: int, nk: int, q_offset: int | None) -> dict:
    """seg_q/seg_k for documents of these lengths packed into the nk keys (the queries are the
    positions q_offset + row, as SPEC.md aligns them); {} without --docs."""
    if lengths is None:
        return {}
    if not spec.uses_segments:
        raise ValueError(f"--docs: spec {spec.name!r} has no segments mask (add `segments: true`)")
    if sum(lengths) != nk:
        raise ValueError(f"--docs: the lengths sum to {sum(lengths):,}, expected nk = {nk:,}")
    seg_k = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    offset = nk - n if q_offset is None else q_offset
    if offset < 0 or offset + n > nk:
        raise ValueError(f"--docs: queries at positions {offset}..{offset + n - 1} are not all keys "
                         f"0..{nk - 1}, so they belong to no document")
    return {"seg_q": seg_k[offset:offset + n], "seg_k": seg_k}


def load(path: str) -> Spec:
    """The spec of a YAML file; FileNotFoundError and SpecError say which file."""
    return load_spec(Path(path))


def dtype_of(name: str) -> torch.dtype:
    return DTYPES[name]


def human_bytes(count: float) -> str:
    """Binary units, as memory is sold: 2147483648 → '2.00 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_count(count: float, unit: str = "") -> str:
    """Decimal units, as FLOPs are counted: 1.5e12 → '1.50 T'."""
    for prefix in ("", "k", "M", "G", "T", "P", "E"):
        if abs(count) < 1000 or prefix == "E":
            return f"{count:.0f} {prefix}{unit}".rstrip() if prefix == "" else f"{count:.2f} {prefix}{unit}"
        count /= 1000
    raise AssertionError("unreachable")


def heads_line(spec: Spec) -> str:
    """'32 query, 8 kv: GQA-8 (8 kv heads, 4 query heads each)'. GQA-G counts the kv heads (the
    groups), as the GQA paper does and as the worked KV-cache examples (GQA-4: 256 MiB) read."""
    grouping = spec.grouping
    if grouping == "GQA":
        grouping = f"GQA-{spec.kv_heads} ({spec.kv_heads} kv heads, {spec.group} query heads each)"
    elif grouping == "MQA":
        grouping = f"MQA ({spec.group} query heads share one kv head)"
    return f"{spec.query_heads} query, {spec.kv_heads} kv: {grouping}"
