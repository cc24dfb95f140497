"""Inputs a newcomer gets wrong are refused naming the tensor, field or folder, before any kernel
runs; the values just inside the limits still compute what the reference computes."""
from __future__ import annotations

import pytest
import torch
import yaml

import attngen
from attngen import ShapeError, Spec, SpecError, band, segments


def qkv(batch, n, *, heads=2, kv=1, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, n, d, generator=gen), torch.randn(batch, kv, n, d, generator=gen),
            torch.randn(batch, kv, n, d, generator=gen))


def test_2d_segment_ids_for_more_sequences_than_the_batch_are_refused():
    attn = attngen.compile(Spec(name="bad_in_segments", query_heads=2, kv_heads=1, head_dim=16,
                                causal=True, mask=segments()))
    q, k, v = qkv(1, 24)
    three = torch.arange(3).repeat_interleave(8).expand(3, 24).contiguous()     # 3 sequences
    one_row = torch.zeros(24, dtype=torch.int64)
    with pytest.raises(ShapeError, match=r"seg_q has shape \(3, 24\), expected \(24,\) or \(1, 24\)"):
        attn(q, k, v, seg_q=three, seg_k=one_row)
    with pytest.raises(ShapeError, match=r"seg_k has shape \(3, 24\).*B = 1"):
        attn(q, k, v, seg_q=one_row, seg_k=three)
    # The backward's own tables refuse them too (its launcher is reachable without the forward).
    out, lse, dout = torch.zeros_like(q), torch.zeros(1, 2, 24), torch.ones_like(q)
    with pytest.raises(ShapeError, match="seg_q has shape"):
        attn.launcher("bwd").backward(q, k, v, out, lse, dout, seg_q=three, seg_k=one_row)
    # The reference names it the same way.
    with pytest.raises(ShapeError, match="seg_q has shape"):
        attngen.reference(attn.spec, q, k, v, seg_q=three, seg_k=one_row)


def test_segment_ids_outside_int32_are_refused_not_wrapped():
    """The kernels read segment ids as int32: 2**32 + 1 would wrap to 1 and join document 1."""
    attn = attngen.compile(Spec(name="bad_in_segments", query_heads=2, kv_heads=1, head_dim=16,
                                causal=True, mask=segments()))
    q, k, v = qkv(1, 24)
    ids = torch.arange(3).repeat_interleave(8)
    wide = ids + (ids == 2) * 2**32
    with pytest.raises(ShapeError, match=r"seg_k holds ids 0\.\.4294967298, outside int32"):
        attn(q, k, v, seg_q=ids, seg_k=wide)
    lsh = attngen.compile(Spec(name="bad_in_segments_lsh", query_heads=2, kv_heads=1, head_dim=16, causal=True,
                               mask=segments(), lsh={"buckets": 4, "seed": 1}))
    with pytest.raises(ShapeError, match="seg_q holds ids .* outside int32"):
        lsh(q, k, v, seg_q=wide, seg_k=ids)


def test_band_widths_at_the_limit_compute_what_the_reference_computes():
    """2**30 is the widest side accepted: i ± 2**30 still fits the kernels' int32 positions (at
    2**31 - 1 the right side overflowed and every row came out empty)."""
    limit = attngen.spec.predicates.MAX_POSITION_INT
    spec = Spec(name="bad_in_wide_band", query_heads=2, kv_heads=1, head_dim=16,
                mask=band(left=limit, right=limit - 1))
    q, k, v = qkv(1, 37)
    want, _ = attngen.reference(spec, q, k, v)
    torch.testing.assert_close(attngen.compile(spec)(q, k, v), want.float(), atol=1e-4, rtol=1e-4)
    with pytest.raises(SpecError, match=r"right: must be <= 1,073,741,824"):
        band(right=limit + 1)


def test_load_takes_a_spec_object():
    spec = Spec(name="bad_in_load_object", query_heads=2, kv_heads=1, head_dim=16, causal=True)
    kernels = attngen.load(spec, prepare=False)
    assert list(kernels) == ["bad_in_load_object"]
    assert kernels.bad_in_load_object is attngen.compile(spec)


def test_load_refuses_an_empty_folder_and_what_is_not_a_path(tmp_path):
    (tmp_path / "notes.txt").write_text("no specs here")
    with pytest.raises(FileNotFoundError, match=f"no spec files .* in the folder {tmp_path}"):
        attngen.load(tmp_path)
    with pytest.raises(TypeError, match="a Spec, or the path of a YAML file or folder, got int"):
        attngen.load(42)
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(
        {"name": "bad_in_one_file", "heads": {"query": 2, "kv": 1}, "head_dim": 16}))
    assert list(attngen.load(tmp_path, prepare=False)) == ["bad_in_one_file"]
