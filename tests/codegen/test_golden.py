"""Golden copies of the generated kernels of the shipped specs.

A refactor that changes no behaviour shows no kernel diff; a change that does shows the diff here,
in review. Regenerate with ATTNGEN_UPDATE_GOLDEN=1 after reading the diff.
"""
from pathlib import Path

import pytest

import attngen as A
from attngen import env
from attngen.codegen.emit import generate

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CASES = [(s, kind) for s in A.load_specs("specs")
         for kind in ("fwd", "bwd") + (("decode",) if s.kind == "softmax" and not s.uses_segments else ())]


@pytest.mark.parametrize("spec, kind", CASES, ids=lambda x: getattr(x, "name", x))
def test_generated_source_matches_golden(spec, kind):
    try:
        source = generate(spec, kind).source
    except ValueError as exc:          # a kind not generated yet for this spec
        pytest.fail(f"{spec.name} {kind}: {exc}")
    path = GOLDEN / f"{spec.name}.{kind}.py.golden"   # not .py: generated data, not project source
    if env.update_golden():
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(source)
    assert path.exists(), f"no golden copy {path.name}: run with ATTNGEN_UPDATE_GOLDEN=1"
    assert source == path.read_text(), f"{path.name} differs from the generator's output"
