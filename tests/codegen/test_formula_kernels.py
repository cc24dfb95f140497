"""Mask formulas through the generated kernels (Triton's interpreter) against the float64
reference, and the refusal of what the kernels cannot run yet (CompileError, never a wrong run)."""
import pytest
import torch

import attngen as A
from attngen.analysis.blockmap import block_map

from test_forward import check_forward
from test_backward import check_gradients, tensors


def small(name, **kw):
    return A.Spec(name=name, query_heads=4, kv_heads=2, head_dim=32, **kw)


RUNNABLE = [
    small("formula_dilated", mask="(i - j) % 3 == 0 and j <= i"),
    small("formula_or_band", mask=A.band(6) | A.expr("j % 16 == 0")),
    small("formula_2d", mask="i // 8 - j // 8 <= 1 and j // 8 - i // 8 <= 1 and i % 8 - j % 8 <= 2"),
    small("formula_not", causal=True, mask=~A.expr("0 <= i - j < 5")),
    # Floats, abs, where and powers in a mask: printed as float arithmetic.
    small("formula_floats", mask="abs(i - j) * 0.5 <= 3 or where(j % 7 == 0, (i - j) ** 2, 99) < 50"),
]


@pytest.mark.parametrize("spec", RUNNABLE, ids=lambda s: s.name)
@pytest.mark.parametrize("shape", [(37, 70, None), (45, 30, 4)], ids=lambda s: f"nq{s[0]}-nk{s[1]}-off{s[2]}")
def test_input_free_formula_forward(spec, shape):
    nq, nk, q_offset = shape
    check_forward(spec, nq, nk, torch.float32, q_offset)


def test_input_free_formula_backward(torch_rng):
    spec = RUNNABLE[0]
    q, k, v, dout = tensors(spec, 29, 41, torch_rng)
    check_gradients(spec, q, k, v, dout)


@pytest.mark.parametrize("spec", RUNNABLE, ids=lambda s: s.name)
def test_block_map_of_a_formula_equals_brute_force(spec):
    bm = block_map(spec, 70, 90, 16, 16, q_offset=3)
    dense = spec.dense_mask(70, 90, 3)
    tiles = torch.nn.functional.pad(dense, (0, 6, 0, 10)).reshape(5, 16, 6, 16).transpose(1, 2)
    valid = torch.nn.functional.pad(torch.ones(70, 90, dtype=torch.bool), (0, 6, 0, 10)).reshape(5, 16, 6, 16).transpose(1, 2)
    full = (tiles | ~valid).all(-1).all(-1)
    some = tiles.any(-1).any(-1)
    want = torch.where(full, 2, torch.where(some, 1, 0)).to(torch.int8)
    assert torch.equal(bm.dense_classes(), want) and bm.unresolved == 0


REFUSED = [
    (small("mod_by_input", inputs={"p": {"shape": ["B"], "dtype": "int32"}}, mask="(i - j) % p[b] == 0"),
     "modulus must be a positive constant"),
    (small("div_by_head", mask="i // (h + 1) == j // (h + 1)"), "not an integer division by a positive constant"),
]


@pytest.mark.parametrize("spec, phrase", REFUSED, ids=lambda x: getattr(x, "name", None))
def test_kernels_refuse_what_they_cannot_run(spec, phrase):
    with pytest.raises(A.CompileError, match=phrase):
        A.emit(spec)
    q = torch.randn(1, 4, 8, 32)
    kv = torch.randn(1, 2, 8, 32)
    sizes = {"B": 1, "Hq": 4, "Hkv": 2, "Nq": 8, "Nk": 8}
    inputs = {d.name: torch.zeros(d.sizes(sizes), dtype=getattr(torch, d.dtype)) for d in spec.all_inputs}
    with pytest.raises(A.CompileError, match="do not support"):
        A.compile(spec)(q, kv, kv[..., : spec.v_head_dim].contiguous(), **inputs)
