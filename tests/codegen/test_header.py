"""The comment block at the top of every generated softmax source says what its kernels do.

The glossary is per kernel kind: every `name = tl.program_id(axis)` in a kernel of the source has
a glossary line for `name` that gives that axis. The tile-configuration table lines up whatever
the length of its keys (`dkdv sm_90/half`, `sm_90/16-bit/128r`).
"""
from __future__ import annotations

import ast
import re

import pytest

import attngen as A
from attngen.codegen.emit import generate

CASES = [(s, kind) for s in A.load_specs("specs") if s.kind == "softmax"
         for kind in ("fwd", "bwd") + (() if s.uses_segments else ("decode",))]
CONFIG = re.compile(r"\d+x\d+/\d+/\d+")


def header(source: str) -> list[str]:
    lines = source.splitlines()
    return lines[:lines.index("import triton")]


def program_ids(source: str) -> dict[str, set[int]]:
    """{name: axes} of the `name = tl.program_id(axis)` assignments in the source's functions."""
    ids: dict[str, set[int]] = {}
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "program_id"):
            ids.setdefault(node.targets[0].id, set()).add(node.value.args[0].value)
    return ids


LSH = A.load_spec("specs/select/reformer_lsh.yaml")


@pytest.mark.parametrize("spec, kind", CASES + [(LSH, "lsh")], ids=lambda x: getattr(x, "name", x))
def test_glossary_gives_every_program_id(spec, kind):
    source = generate(spec, kind).source
    lines = header(source)
    glossary = lines[next(n for n, line in enumerate(lines) if line.startswith("# Glossary")):]
    ids = program_ids(source)
    assert ids, f"{spec.name} {kind}: no program ids found"
    for name, axes in ids.items():
        entry = [line for line in glossary if re.match(rf"#   {name}\s", line)]
        assert len(entry) == 1, f"{spec.name} {kind}: glossary lines for {name}: {entry}"
        for axis in axes:
            assert f"program id {axis}" in entry[0], f"{spec.name} {kind}: {entry[0]!r}, axis {axis}"


@pytest.mark.parametrize("spec, kind", CASES, ids=lambda x: getattr(x, "name", x))
def test_tile_configurations_line_up(spec, kind):
    rows = [line for line in header(generate(spec, kind).source) if CONFIG.search(line)]
    assert rows
    starts = {CONFIG.search(line).start() for line in rows}
    assert len(starts) == 1, f"{spec.name} {kind}: columns at {sorted(starts)}:\n" + "\n".join(rows)
    column = starts.pop()
    for line in rows:
        key = line[len("#   "):column]          # the key, then at least two spaces
        assert key.endswith("  ") and not key.startswith(" "), f"{spec.name} {kind}: {line!r}"
