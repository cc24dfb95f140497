"""Generated decode kernels (split-KV against a KV cache) under Triton's interpreter.

Each sequence b of a batch is checked against the float64 reference on its own valid prefix: keys
0..cache_seqlens[b] - 1, queries at positions cache_seqlens[b] - Nq + t (q_offset = n - Nq). Outputs
and split workspaces start as NaN (the launcher poisons them under the interpreter), so an element
no kernel wrote fails. Lengths include 0 (output 0, lse -inf), 1, and lengths that are not
multiples of the page size.
"""
import dataclasses

import pytest
import sympy
import torch

import attngen as A
from attngen.analysis.configs import TileConfig
from attngen.analysis.lowering_decode import (MAX_SPLITS, MIN_TILES_PER_SPLIT, MIN_UTILISATION, SM_LIMITS,
                                              choose_num_splits, key_span, lower_decode, resident_ctas,
                                              row_block, sm_limits)
from attngen.checking import check_close
from attngen.codegen.emit import generate
from attngen.errors import CompileError, ShapeError
from attngen.runtime.decode import DecodeLauncher


def small(name, *, hq=8, hkv=1, d=32, **kw):
    return A.Spec(name=name, query_heads=hq, kv_heads=hkv, head_dim=d, **kw)


# Every predicate of SPEC.md but segments, GQA 8:1 / MQA / MHA, the score modifiers, an odd head dim.
SPECS = [
    small("dense_gqa", hq=8, hkv=2),
    small("causal_mqa", hq=6, hkv=1, causal=True),
    small("sliding_window", causal=True, mask=A.band(left=20)),
    small("band_two_sided", hq=4, hkv=2, mask=A.band(left=5, right=9)),
    small("block_local", hq=2, hkv=2, mask=A.blocks(24)),
    small("block_causal", causal=True, mask=A.blocks(40)),
    small("longformer", hq=4, hkv=2, mask=A.band(8) | A.global_tokens(3)),
    small("global_list", causal=True, mask=A.band(left=4) | A.global_tokens(tokens=[5, 70, 71])),
    small("bigbird", hq=2, hkv=2, mask=A.band(6) | A.global_tokens(2) | A.random(2, 16, seed=3)),
    small("strided", causal=True, mask=A.band(left=12) | A.stride(12)),
    small("fixed", causal=True, mask=A.blocks(16) | A.columns(16, 4)),
    small("negated", hq=4, hkv=2, causal=True, mask=~A.band(left=4, right=0)),
    small("softcap_d40", d=40, causal=True, softcap=5.0),
    small("alibi", hq=6, hkv=3, causal=True, alibi=True),
    small("everything_mods", hq=4, hkv=2, mask=A.band(30) | A.global_tokens(1), softcap=8.0,
          alibi=True, scale=0.3),
]
MIN_LENGTH = {"bigbird": 33}     # the random draw needs per_row (2) key blocks of 16


def launcher(spec) -> DecodeLauncher:
    return DecodeLauncher(generate(spec, "decode"))


def make_inputs(spec, batch, nq, capacity, dtype, *, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, spec.query_heads, nq, spec.head_dim, generator=g).to(dtype)
    k = torch.randn(batch, spec.kv_heads, capacity, spec.head_dim, generator=g).to(dtype)
    v = torch.randn(batch, spec.kv_heads, capacity, spec.head_dim, generator=g).to(dtype)
    return q, k, v


def paged(k, v, page_size, *, seed=0):
    """The same cache as pages (num_pages, page_size, Hkv, D) in a shuffled order, + block_table."""
    batch, hkv, capacity, d = k.shape
    per_seq = -(-capacity // page_size)
    pad = per_seq * page_size - capacity
    order = torch.randperm(batch * per_seq, generator=torch.Generator().manual_seed(seed))

    def pages(t):
        t = torch.nn.functional.pad(t, (0, 0, 0, pad)).reshape(batch, hkv, per_seq, page_size, d)
        t = t.permute(0, 2, 3, 1, 4).reshape(batch * per_seq, page_size, hkv, d)
        out = torch.full_like(t, float("nan"))          # unused slots would poison a wrong read
        out[order] = t
        return out

    table = order.reshape(batch, per_seq).to(torch.int32)
    return pages(k), pages(v), table


def check_decode(spec, out, lse, q, k, v, seqlens, dtype):
    nq = q.shape[2]
    assert out.dtype == dtype and lse.dtype == torch.float32
    for b, n in enumerate(seqlens.tolist()):
        if n == 0:
            assert torch.equal(out[b], torch.zeros_like(out[b])) and torch.isneginf(lse[b]).all()
            continue
        want_out, want_lse = A.reference(spec, q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                                         q_offset=n - nq)
        check_close(f"out[{b}] (n={n})", out[b:b + 1], want_out, dtype)
        check_close(f"lse[{b}] (n={n})", lse[b:b + 1], want_lse, dtype)


def lengths_for(spec, capacity, rng):
    low = MIN_LENGTH.get(spec.name, 1)
    return [0, max(1, low), rng.randrange(low, capacity), capacity]


@pytest.mark.parametrize("nq", [1, 5])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_predicate_contiguous_and_paged(spec, nq, rng):
    capacity = 150
    q, k, v = make_inputs(spec, 4, nq, capacity, torch.float32)
    seqlens = torch.tensor(lengths_for(spec, capacity, rng), dtype=torch.int32)
    run = launcher(spec)
    out, lse = run.decode(q, k, v, cache_seqlens=seqlens, num_splits=3)
    check_decode(spec, out, lse, q, k, v, seqlens, torch.float32)
    # Paged (page size 48: lengths are not multiples of it) holding the same data: same bits.
    kp, vp, table = paged(k, v, 48)
    out_p, lse_p = run.decode(q, kp, vp, cache_seqlens=seqlens, block_table=table, num_splits=3)
    assert torch.equal(out_p, out) and torch.equal(lse_p, lse)


# Default: whole pages per tile, a page-sized tile, runs of 16 in pages of 48, a tile inside a page.
PAGE_CASES = [(16, 64), (32, 32), (48, 32), (128, 32)]


@pytest.mark.parametrize("page_size, block_n", [
    pytest.param(p, n, id=f"page{p}-tile{n}", marks=() if (p, n) in PAGE_CASES else pytest.mark.slow)
    for p in (16, 32, 48, 64, 128) for n in (32, 64)])
def test_page_sizes(page_size, block_n):
    """Every kind of run of a tile (PAGE_RUN = gcd(page size, BLOCK_N)): several whole pages per
    tile (16, 32 at 64-key tiles), one page (BLOCK_N), a tile inside a page (64, 128 at 32-key
    tiles), and runs of a page size that neither divides nor is divided by the tile (48). Lengths
    are odd and cross pages; the paged result equals the contiguous one bit for bit."""
    spec = SPECS[0]                                     # dense_gqa, 8 query / 2 kv heads
    q, k, v = make_inputs(spec, 3, 2, 259, torch.float32)
    seqlens = torch.tensor([259, 97, 1], dtype=torch.int32)
    cfg = TileConfig(16, block_n, 4, 1)
    run = launcher(spec)
    out, lse = run.decode(q, k, v, cache_seqlens=seqlens, config=cfg, num_splits=2)
    check_decode(spec, out, lse, q, k, v, seqlens, torch.float32)
    kp, vp, table = paged(k, v, page_size, seed=page_size)
    out_p, lse_p = run.decode(q, kp, vp, cache_seqlens=seqlens, block_table=table, config=cfg, num_splits=2)
    assert torch.equal(out_p, out) and torch.equal(lse_p, lse)


def shrunk(spec):
    """A shipped spec with fewer heads (the same group ratio; MQA and odd MHA counts kept) and
    head_dim 32: the mask, causal, scale and modifiers are the file's."""
    if spec.kv_heads == 1:
        hkv, hq = 1, spec.query_heads
    elif spec.group == 1:
        hkv = hq = 6 if spec.alibi else 2         # ALiBi: a head count that is not a power of two
    else:
        hkv, hq = 2, 2 * spec.group
    return dataclasses.replace(spec, query_heads=hq, kv_heads=hkv, head_dim=32)


SHIPPED = [s for s in A.load_specs("specs") if s.kind == "softmax" and not s.uses_segments]


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda s: s.name)
def test_shipped_specs(spec, rng):
    spec = shrunk(spec)
    # Long enough to exercise each file's widths: windows of 4096, bands of 256, blocks of 128.
    widest = 4200 if spec.name in ("mistral_sliding_window", "gemma2_softcap") else 700
    low = 3 * 64 + 1 if spec.name == "bigbird" else 1
    seqlens = torch.tensor([widest, 0, rng.randrange(low, 400)], dtype=torch.int32)
    nq = 5 if spec.kv_heads > 1 else 1
    q, k, v = make_inputs(spec, 3, nq, widest, torch.float16)
    out, lse = A.compile(spec).decode(q, k, v, cache_seqlens=seqlens, return_lse=True)
    check_decode(spec, out, lse, q, k, v, seqlens, torch.float16)


def test_shipped_specs_cover_every_decodable_file():
    names = {s.name for s in SHIPPED}
    assert {"gqa", "mqa", "mistral_sliding_window", "bigbird", "sparse_strided"} <= names
    assert "packed_documents" not in names          # segments: refused (test_refusals)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("spec", [SPECS[2], SPECS[8], SPECS[14]], ids=lambda s: s.name)
def test_dtypes(spec, dtype, rng):
    capacity = 90
    q, k, v = make_inputs(spec, 3, 5, capacity, dtype)
    seqlens = torch.tensor(lengths_for(spec, capacity, rng)[1:], dtype=torch.int32)
    kp, vp, table = paged(k, v, 16)
    out, lse = launcher(spec).decode(q, kp, vp, cache_seqlens=seqlens, block_table=table, num_splits=2)
    check_decode(spec, out, lse, q, k, v, seqlens, dtype)


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[7]], ids=lambda s: s.name)
def test_merge_of_splits_equals_unsplit(spec):
    q, k, v = make_inputs(spec, 2, 5, 300, torch.float32)
    seqlens = torch.tensor([300, 129], dtype=torch.int32)
    run = launcher(spec)
    whole, whole_lse = run.decode(q, k, v, cache_seqlens=seqlens, num_splits=1)
    # 10 and 16 splits of 300 keys in 32-key tiles: one tile each or none.
    for splits in (2, 10, 16):
        out, lse = run.decode(q, k, v, cache_seqlens=seqlens, num_splits=splits)
        torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lse, whole_lse, rtol=1e-6, atol=1e-6)
    check_decode(spec, whole, whole_lse, q, k, v, seqlens, torch.float32)


def test_merge_against_reference_over_disjoint_key_sets():
    spec = small("dense", hq=4, hkv=2)
    q, k, v = make_inputs(spec, 2, 3, 50, torch.float64)
    parts = torch.randperm(50, generator=torch.Generator().manual_seed(1)).tensor_split([7, 30])
    outs, lses = zip(*(A.reference(spec, q, k[:, :, idx], v[:, :, idx]) for idx in parts))
    # The empty part (no key): out 0, lse -inf, as a kernel gives it.
    outs = [*outs, torch.zeros_like(outs[0])]
    lses = [*lses, torch.full_like(lses[0], float("-inf"))]
    out, lse = A.merge(outs, lses)
    want_out, want_lse = A.reference(spec, q, k, v)
    check_close("out", out, want_out, torch.float64)
    check_close("lse", lse, want_lse, torch.float64)
    # float32 parts, and rows no part saw: 0 and -inf, never NaN.
    none_out, none_lse = A.merge([torch.zeros(2, 3, 8)] * 2, [torch.full((2, 3), float("-inf"))] * 2)
    assert torch.equal(none_out, torch.zeros(2, 3, 8)) and torch.isneginf(none_lse).all()
    with pytest.raises(ShapeError, match="lses\\[1\\]"):
        A.merge([outs[0], outs[1]], [lses[0], lses[1][..., :1]])


def expected_reads(spec, seqlens, nq, block_n, group, block_m, row_tile):
    """(key tiles, keys) a program of `row_tile` must load: the tiles holding a key one of its rows
    may see, and those keys (the cache rows the mask allows)."""
    rows = range(row_tile * block_m, (row_tile + 1) * block_m)
    tokens = sorted({r // group for r in rows} & set(range(nq)))
    tiles = keys = 0
    for n in seqlens.tolist():
        if n == 0:
            continue
        allowed = spec.dense_mask(nq, n, n - nq)[tokens].any(0)
        tiles += sum(bool(allowed[start:start + block_n].any()) for start in range(0, n, block_n))
        keys += int(allowed.sum())
    return tiles, keys


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_bytes_read_equal_the_tiles_the_mask_allows(spec, rng):
    """The kernel's own count: per kv head (over all splits), the keys loaded are exactly the keys
    some row of the group may see, in exactly the tiles holding them, once per kv group."""
    capacity, nq = 200, 5
    q, k, v = make_inputs(spec, 3, nq, capacity, torch.float32)
    seqlens = torch.tensor(lengths_for(spec, capacity, rng)[1:], dtype=torch.int32)
    cfg = TileConfig(row_block(spec.group, nq, spec.head_dim, torch.float32), 16, 4, 1)
    kp, vp, table = paged(k, v, 32)
    _, _, counts = launcher(spec).decode(q, kp, vp, cache_seqlens=seqlens, block_table=table,
                                         num_splits=3, config=cfg, count_tiles=True)
    row_tiles = counts.shape[2]
    assert row_tiles == -(-spec.group * nq // cfg.block_m)
    if spec.group * nq <= 64:
        assert row_tiles == 1                          # the whole group reads K/V once
    per_kv_head = counts.view(3, spec.kv_heads, 3, row_tiles, 2).sum(dim=2)   # over splits
    for b in range(3):
        for rt in range(row_tiles):
            want = expected_reads(spec, seqlens[b:b + 1], nq, cfg.block_n, spec.group, cfg.block_m, rt)
            for h in range(spec.kv_heads):
                assert tuple(per_kv_head[b, h, rt].tolist()) == want, (b, h, rt)


def test_nq_16_across_row_tiles():
    """GQA 8:1 at D = 128 with 16 speculative tokens: 128 packed rows, two row tiles of 64 (the cap
    for D = 128). Each tile is right against the reference, and each reads exactly the keys its own
    rows may see: here K/V are read once per row tile, not once per group (docs/decode.md)."""
    spec = small("causal_window_d128", hq=8, hkv=1, d=128, causal=True, mask=A.band(left=50))
    nq, capacity = 16, 120
    q, k, v = make_inputs(spec, 3, nq, capacity, torch.float32)
    seqlens = torch.tensor([capacity, 9, 77], dtype=torch.int32)       # 9 < Nq: negative positions
    kp, vp, table = paged(k, v, 32)
    run = launcher(spec)
    out, lse, counts = run.decode(q, kp, vp, cache_seqlens=seqlens, block_table=table, num_splits=2,
                                  count_tiles=True)
    check_decode(spec, out, lse, q, k, v, seqlens, torch.float32)
    cfg = run.config(nq, torch.float32, q.device)
    assert cfg.block_m == 64 and counts.shape[2] == 2
    per_tile = counts.sum(dim=1)                                        # over splits
    for b in range(3):
        for rt in range(2):
            want = expected_reads(spec, seqlens[b:b + 1], nq, cfg.block_n, spec.group, cfg.block_m, rt)
            assert tuple(per_tile[b, rt].tolist()) == want, (b, rt)


def test_sliding_window_reads_only_the_window():
    spec = small("window", causal=True, mask=A.band(left=40))
    q, k, v = make_inputs(spec, 1, 1, 1000, torch.float16)
    cfg = TileConfig(16, 16, 4, 1)
    _, _, counts = launcher(spec).decode(q, k, v, cache_seqlens=torch.tensor([1000], dtype=torch.int32),
                                         config=cfg, num_splits=2, count_tiles=True)
    # Keys 959..999 (41 of 1000) in tiles 59..62.
    assert counts[..., 0].sum().item() == 4 and counts[..., 1].sum().item() == 41


@pytest.mark.parametrize("layout", ["bnhd", "contiguous"])
def test_strided_layouts(layout):
    """q and a contiguous cache as transposed views of (B, N, H, D) tensors (flash_attn's layout)."""
    spec = SPECS[6]                                     # longformer, 4 query / 2 kv heads
    q, k, v = make_inputs(spec, 2, 5, 70, torch.float32)
    if layout == "bnhd":
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
        assert not k.is_contiguous()
    seqlens = torch.tensor([70, 33], dtype=torch.int32)
    out, lse = launcher(spec).decode(q, k, v, cache_seqlens=seqlens, num_splits=2)
    check_decode(spec, out, lse, q, k, v, seqlens, torch.float32)


def test_full_cache_and_default_splits():
    spec = SPECS[1]
    q, k, v = make_inputs(spec, 1, 1, 600, torch.float32)
    attn = A.compile(spec)
    out = attn.decode(q, k, v)                                 # cache_seqlens None: every key
    want, _ = A.reference(spec, q, k, v)
    check_close("out", out, want, torch.float32)


H100 = dict(row_tiles=1, block_n=64, num_sms=132)


def test_split_heuristic():
    # Batch 1 of a 128K cache, 8 kv heads, 3 CTAs per SM: 396 slots; 40 splits are the fewest
    # above MIN_UTILISATION (320 CTAs, one wave, 81%).
    assert choose_num_splits(batch=1, kv_heads=8, key_span=131072, ctas_per_sm=3, **H100) == 40
    # Every resident slot busy without splitting (512 programs on 4 x 132 slots): no split.
    assert choose_num_splits(batch=64, kv_heads=8, key_span=131072, ctas_per_sm=4, **H100) == 1
    # Short caches: no split smaller than MIN_TILES_PER_SPLIT tiles.
    assert choose_num_splits(batch=1, kv_heads=8, key_span=512, **H100) == 512 // (64 * MIN_TILES_PER_SPLIT)
    # Lengths growing token by token keep the count within a power-of-two bucket.
    counts = {choose_num_splits(batch=2, kv_heads=4, key_span=n, **H100) for n in range(2049, 4097, 97)}
    assert len(counts) == 1


@pytest.mark.parametrize("ctas", [1, 2, 3, 4])
def test_split_count_is_continuous_in_batch(ctas):
    """Batch 1..96 x 8 kv heads at 8192 keys: every count lies in 1 .. key tiles / MIN_TILES_PER_SPLIT
    and keeps the resident slots of its waves busy: at least MIN_UTILISATION wherever some count
    can, and batch 17 (136 programs) splits as batch 16 does where 16 x 8 does not fill a wave."""
    slots = 132 * ctas
    tiles = 8192 // 64
    used = {}
    for batch in range(1, 97):
        splits = choose_num_splits(batch=batch, kv_heads=8, key_span=8192, ctas_per_sm=ctas, **H100)
        assert 1 <= splits <= min(tiles // MIN_TILES_PER_SPLIT, MAX_SPLITS)
        ctas_run = batch * 8 * splits
        used[batch] = ctas_run / (slots * -(-ctas_run // slots))
        reachable = max(batch * 8 * s / (slots * -(-batch * 8 * s // slots))
                        for s in range(1, tiles // MIN_TILES_PER_SPLIT + 1))
        assert used[batch] >= min(MIN_UTILISATION, reachable) - 1e-9, (batch, splits)
    if 17 * 8 < slots * MIN_UTILISATION:
        assert choose_num_splits(batch=17, kv_heads=8, key_span=8192, ctas_per_sm=ctas, **H100) > 1


def test_split_count_bounds():
    # Never more splits than key tiles, at least one, a single tile never split.
    for span in (1, 63, 64, 65, 300, 1 << 20):
        for batch in (1, 3, 1000):
            splits = choose_num_splits(batch=batch, kv_heads=1, key_span=span, ctas_per_sm=2, **H100)
            assert 1 <= splits <= max(1, -(-span // 64))
    assert choose_num_splits(batch=1, kv_heads=1, key_span=64, **H100) == 1
    assert choose_num_splits(batch=0, kv_heads=8, key_span=4096, **H100) == 1


def test_resident_ctas_from_resources():
    h100 = SM_LIMITS["sm_90"]
    # 138 registers (rounded to 144 per thread, 4608 per warp): 14 warps, 3 CTAs of 4 warps.
    assert resident_ctas(registers=138, shared=39936, num_warps=4, limits=h100) == 3
    assert resident_ctas(registers=106, shared=39936, num_warps=4, limits=h100) == 4
    # Shared memory binds: 228 KB / (100 KB + 1 KB) = 2.
    assert resident_ctas(registers=32, shared=100 * 1024, num_warps=4, limits=h100) == 2
    # Threads bind: 2048 / 256.
    assert resident_ctas(registers=16, shared=0, num_warps=8, limits=h100) == 8
    # A kernel that needs the whole SM still runs one CTA.
    assert resident_ctas(registers=255, shared=200 * 1024, num_warps=8, limits=SM_LIMITS["sm_80"]) == 1
    assert sm_limits("sm_89") == SM_LIMITS["sm_80"] and sm_limits("sm_100") == SM_LIMITS["sm_90"]


def test_lowering_chooses_ranges_or_scan():
    window = lower_decode(small("w", causal=True, mask=A.band(left=4096)))
    assert window.facts["iteration"] == "ranges" and window.facts["kernel"] == "decode"
    assert key_span(window, 5, 1 << 17) == 4096 + 5          # the window, not the 128K cache
    strided = lower_decode(SPECS[9])                           # causal & (band | stride)
    assert strided.facts["iteration"] == "scan"
    assert [str(sympy.sympify(b)) for b in strided.facts["bounds"]] == ["-oo", "i"]   # causal's part
    assert lower_decode(SPECS[8]).facts["iteration"] == "scan"
    assert [n.op for n in window.nodes()][-3:] == ["lse_merge", "store", "store"]


def test_refusals():
    with pytest.raises(CompileError, match="segments"):
        generate(small("docs", causal=True, mask=A.segments()), "decode")
    linear = A.Spec(name="lin", kind="linear", query_heads=2, kv_heads=2, head_dim=16,
                    feature_map=A.FeatureMap("elu1"))
    with pytest.raises(CompileError, match="softmax"):
        generate(linear, "decode")
    spec = SPECS[0]
    run = launcher(spec)
    q, k, v = make_inputs(spec, 2, 17, 40, torch.float32)
    with pytest.raises(ShapeError, match="Nq <= 16"):
        run.decode(q, k, v)
    q = q[:, :, :3]
    with pytest.raises(ShapeError, match="0..40"):
        run.decode(q, k, v, cache_seqlens=torch.tensor([41, 3], dtype=torch.int32))
    with pytest.raises(ShapeError, match="multiple of 16"):
        run.decode(q, torch.zeros(4, 24, 2, 32), torch.zeros(4, 24, 2, 32),
                   block_table=torch.zeros(2, 2, dtype=torch.int32))
    kp, vp, table = paged(k, v, 16)
    with pytest.raises(ShapeError, match="block_table names pages"):
        run.decode(q, kp, vp, block_table=table + 100)
    # Keys within a page are 32-bit offsets: a page spanning 2**31 elements is refused (meta tensors).
    huge = torch.empty_strided((2, 16, 2, 32), (1 << 28, 1 << 27, 32, 1), device="meta")
    with pytest.raises(ShapeError, match="k_cache has strides .* within 2\\*\\*31 elements"):
        run.decode(q.to("meta"), huge, huge, block_table=torch.zeros(2, 1, dtype=torch.int32, device="meta"))
    with pytest.raises(ShapeError, match="sequence 0 holds 10 keys"):
        launcher(SPECS[8]).decode(q[:, :2], k[:, :2], v[:, :2],
                                  cache_seqlens=torch.tensor([10, 40], dtype=torch.int32))


def test_emit_prints_both_kernels():
    source = A.emit(A.load_spec("specs/gqa.yaml"), kernel="decode")
    assert "def attngen_decode_gqa(" in source and "def attngen_decode_gqa_merge(" in source
    assert "GROUP = tl.constexpr(8)" in source
