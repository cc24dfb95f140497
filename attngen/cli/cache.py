"""``attngen cache list|clear [SPEC]``: what the on-disk kernel cache holds, and emptying it."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .common import add_command, human_bytes, load

EXAMPLES = """
  attngen cache list                     # every entry: spec, kernel kind, arch, key, size, age
  attngen cache list --json              # the same as a JSON list
  attngen cache clear mha                # the entries of the spec named mha
  attngen cache clear specs/mha.yaml     # the same, naming the spec by its file
  attngen cache clear                    # everything attngen keeps there (Triton's cache included)
"""


def add_parser(subparsers):
    parser = add_command(subparsers, "cache", help="list or clear the on-disk kernel cache",
                         description="The on-disk cache of generated kernels, under "
                                     "$ATTNGEN_CACHE_DIR (default ~/.cache/attngen). Entries are "
                                     "rebuilt on demand, so clearing is always safe. Docs: "
                                     "docs/runtime.md.",
                         examples=EXAMPLES)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="one line per entry: spec, kind, arch, key, size, age")
    listing.add_argument("--json", action="store_true", help="print a JSON list instead")
    clearing = actions.add_parser("clear", help="remove one spec's entries, or everything")
    clearing.add_argument("spec", metavar="SPEC", nargs="?", default=None,
                          help="a spec name or a spec YAML file (default: clear everything)")
    return parser


def age(seconds: float) -> str:
    """A short age for people: '42s', '7m', '3h', '12d'."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _list(args) -> int:
    from .. import env
    from ..runtime import cache

    entries = cache.list_entries()
    if args.json:
        print(json.dumps([{"spec": e.spec_name, "kind": e.kind, "arch": e.arch, "key": e.key,
                           "size": e.size, "created": e.created, "path": str(e.path),
                           "problem": e.problem} for e in entries], indent=2))
        return 0
    print(f"cache: {cache.root()}  (Triton's cache: {env.triton_cache_dir()})")
    if not entries:
        print("no entries")
        return 0
    now = time.time()
    width = max(4, *(len(e.spec_name) for e in entries))
    print(f"{'spec':<{width}}  {'kind':<10} {'arch':<11} {'key':<16}  {'size':>10}  age")
    for e in entries:
        note = f"  CORRUPT: {e.problem} (rebuilt on next use)" if e.problem else ""
        print(f"{e.spec_name:<{width}}  {e.kind:<10} {e.arch:<11} {e.key[:16]:<16}  "
              f"{human_bytes(e.size):>10}  {age(now - e.created)}{note}")
    total = sum(e.size for e in entries)
    print(f"{len(entries)} entries, {human_bytes(total)}")
    return 0


def _clear(args) -> int:
    from ..runtime import cache

    name = args.spec
    if name is not None and (name.endswith((".yaml", ".yml")) or Path(name).is_file()):
        name = load(name).name
    removed = cache.clear(name)
    what = f"spec {name!r}" if name is not None else "everything"
    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'} ({what}) from {cache.root()}")
    return 0


def run(args) -> int:
    return _list(args) if args.action == "list" else _clear(args)
