"""``attngen check SPEC...``: validate spec files and print a one-screen summary of each."""
from __future__ import annotations

import sys
from pathlib import Path

from ..analysis.cost import kv_bytes_per_token, linear_state_bytes, sliding_window
from ..errors import SpecError
from ..spec import Spec
from .common import add_command, heads_line, human_bytes, load
from .formula import readable_mask

EXAMPLES = """
  attngen check specs/mistral_sliding_window.yaml
  attngen check specs/                 # every *.yaml / *.yml of a folder
  attngen check a.yaml b.yaml          # exit status 2 if any of them is refused
"""


def add_parser(subparsers):
    parser = add_command(subparsers, "check", help="validate specs and summarise them",
                         description="Validate each spec file and print what it means: heads and "
                                     "grouping, head_dim, scale, modifiers, KV cache per token and "
                                     "the normalised mask as a formula in i (query) and j (key).",
                         examples=EXAMPLES)
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="spec YAML files or folders of them")
    return parser


def _files(paths: list[str]) -> list[Path]:
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not found:
                raise FileNotFoundError(f"no *.yaml or *.yml spec files in {path}")
            out.extend(found)
        else:
            out.append(path)
    return out


def run(args) -> int:
    status = 0
    for n, path in enumerate(_files(args.specs)):
        try:
            spec = load(str(path))
        except (SpecError, OSError) as err:
            print(f"attngen: error: {err}", file=sys.stderr)
            status = 2
            continue
        if n:
            print()
        print(summary(spec, path))
    return status


def summary(spec: Spec, path: Path | None = None) -> str:
    """The lines `check` prints for one valid spec."""
    rows = [("kind", spec.kind), ("heads", heads_line(spec)), ("head_dim", str(spec.head_dim)),
            ("scale", _scale(spec)), ("modifiers", _modifiers(spec)), ("kv cache", _kv_cache(spec)),
            ("mask", readable_mask(spec.effective_mask)),
            *([("select", f"top {spec.select.top} key blocks of {spec.select.block} per query block and kv "
                          "head, by mean(q) . mean(k), plus its own blocks")] if spec.select is not None else []),
            *([("lsh", f"{spec.lsh.buckets} buckets, {spec.lsh.rounds} round{'s' * (spec.lsh.rounds > 1)}, seed "
                       f"{spec.lsh.seed}: a pair also needs q and k in one bucket in some round")]
              if spec.lsh is not None else []),
            ("content hash", spec.content_hash()[:16])]
    head = f"{spec.name}" + (f"  ({path})" if path is not None else "") + ": ok"
    return "\n".join([head] + [f"  {key:<13} {value}" for key, value in rows])


def _scale(spec: Spec) -> str:
    if spec.kind == "linear":
        return "not applied" if spec.scale is None else f"{spec.scale:g}"
    if spec.scale is None:
        return f"{spec.softmax_scale:.6g} (1/sqrt({spec.head_dim}), the default)"
    return f"{spec.scale:g}"


def _modifiers(spec: Spec) -> str:
    if spec.kind == "linear":
        fm = spec.feature_map
        features = f", {spec.num_features} features, seed {fm.seed}" if fm.name == "favor" else ""
        return f"feature map {fm.name}{features}; eps {spec.eps:g}"
    parts = []
    if spec.softcap is not None:
        parts.append(f"softcap {spec.softcap:g} (c * tanh(s / c))")
    if spec.alibi:
        parts.append(f"alibi (geometric slopes for {spec.query_heads} heads)")
    return ", ".join(parts) or "none"


def _kv_cache(spec: Spec) -> str:
    if spec.kind == "linear":
        size = linear_state_bytes(spec)
        return (f"fixed state of {size:,} bytes ({human_bytes(size)}) per layer and sequence (float32: "
                f"{spec.kv_heads} kv heads × ({spec.num_features}×{spec.head_dim} + {spec.num_features}))")
    size = kv_bytes_per_token(spec)
    text = (f"{size:,} bytes per token per layer in float16/bfloat16 "
            f"(2 × {spec.kv_heads} kv heads × {spec.head_dim} × 2 bytes)")
    window = sliding_window(spec)
    if window is not None:
        text += f"; sliding window: at most {window + 1} tokens"
    return text
