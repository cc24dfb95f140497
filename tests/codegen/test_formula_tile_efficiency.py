"""Tile efficiency 1.000 for input-free mask formulas: the kernel's own count of visited key tiles
per query tile equals the non-empty tiles of the block map, which is exact for them
(`attngen.analysis.tiles_formula`; no tile left unproven, so no tile is visited in vain)."""
import pytest

import attngen as A

from test_formula_kernels import RUNNABLE
from test_forward import shrunk, test_tiles_visited_equal_non_empty_tiles as visited_equal_non_empty

FORMULA_SPECS = [shrunk(s) for s in A.load_specs("specs/formulas")
                 if s.kind == "softmax" and not s.mask_needs_heads and s.uses_formulas
                 and not s.all_inputs and s.score is None and s.value_head_dim is None]
INPUT_FREE = [s for s in RUNNABLE if s.name != "formula_floats"]     # floats are outside the family


def test_the_shipped_input_free_formula_specs_are_found():
    assert [s.name for s in FORMULA_SPECS] == ["natten_2d"]


SHAPES = [(150, 211, None), (257, 200, 40)]
CASES = [pytest.param(s, *shape, id=f"{s.name}-{n}") for s in FORMULA_SPECS for n, shape in enumerate(SHAPES)]
CASES += [pytest.param(s, *SHAPES[n % 2], id=s.name) for n, s in enumerate(INPUT_FREE)]


@pytest.mark.parametrize("spec, nq, nk, q_offset", CASES)
def test_formula_tiles_visited_equal_non_empty_tiles(spec, nq, nk, q_offset):
    visited_equal_non_empty(spec, nq, nk, q_offset)
