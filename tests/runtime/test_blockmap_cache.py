"""Large block maps of static shapes on disk: stored, read back, keyed by shape and direction,
never for segments or small maps, rebuilt with a warning when corrupt."""
from __future__ import annotations

import pytest
import torch

import attngen
from attngen.analysis.blockmap import block_map
from attngen.runtime import blockmap_cache, cache


def test_large_block_maps_are_stored_and_read_back(small_spec, monkeypatch, cache_dir):
    spec = attngen.load_spec(small_spec("bm_stored", causal=True, mask={"stride": {"every": 4}}))
    monkeypatch.setattr(blockmap_cache, "BLOCK_MAP_MIN_TILES", 4)
    first = blockmap_cache.cached_block_map_lists(spec, 100, 130, 16, 32, q_offset=30)
    bm = block_map(spec, 100, 130, 16, 32, q_offset=30)
    for got, want in zip(first, bm.lists):
        assert torch.equal(got, want.to(torch.int32))
    (stored,) = (cache_dir / "v1" / "blockmaps").glob("bm_stored-*.pt")
    monkeypatch.setattr(blockmap_cache, "block_map", lambda *a, **k: pytest.fail("rebuilt"))
    again = blockmap_cache.cached_block_map_lists(spec, 100, 130, 16, 32, q_offset=30)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert cache.STATS["block_map_builds"] == 1 and cache.STATS["block_map_hits"] == 1
    assert [(e.spec_name, e.kind, e.path) for e in cache.list_entries()] == [("bm_stored", "blockmap", stored)]
    assert cache.clear("bm_stored") == 1 and not stored.exists()
    assert not list((cache_dir / "v1" / "blockmaps").rglob("*.pt"))


def test_block_map_files_differ_by_shape_and_direction(small_spec, monkeypatch, cache_dir):
    spec = attngen.load_spec(small_spec("bm_shapes", mask={"stride": {"every": 3}}))
    monkeypatch.setattr(blockmap_cache, "BLOCK_MAP_MIN_TILES", 4)
    forward = blockmap_cache.cached_block_map_lists(spec, 64, 64, 16, 16, q_offset=0)
    by_key = blockmap_cache.cached_block_map_lists(spec, 64, 64, 16, 16, q_offset=0, transposed=True)
    blockmap_cache.cached_block_map_lists(spec, 64, 64, 16, 16, q_offset=5)
    assert len(list((cache_dir / "v1" / "blockmaps").glob("*.pt"))) == 3
    assert cache.STATS["block_map_builds"] == 3 and len(by_key[0]) == len(forward[0])


def test_small_and_segment_block_maps_are_not_stored(small_spec, cache_dir):
    spec = attngen.load_spec(small_spec("bm_small", mask={"stride": {"every": 3}}))
    blockmap_cache.cached_block_map_lists(spec, 64, 64, 16, 16, q_offset=0)
    assert not (cache_dir / "v1" / "blockmaps").exists()
    with pytest.raises(ValueError, match="segment ids"):
        blockmap_cache.cached_block_map_lists(attngen.load_spec(small_spec("bm_seg", mask={"segments": True})),
                              64, 64, 16, 16, q_offset=0)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
    pytest.param(lambda data: data[:70] + bytes([data[70] ^ 1]) + data[71:], id="bit-flip"),
    pytest.param(lambda data: b"", id="empty"),
])
def test_corrupt_block_map_is_rebuilt_with_a_warning(small_spec, monkeypatch, cache_dir, damage):
    spec = attngen.load_spec(small_spec("bm_corrupt", causal=True, mask={"stride": {"every": 4}}))
    monkeypatch.setattr(blockmap_cache, "BLOCK_MAP_MIN_TILES", 4)
    first = blockmap_cache.cached_block_map_lists(spec, 80, 80, 16, 16, q_offset=0)
    (path,) = (cache_dir / "v1" / "blockmaps").glob("*.pt")
    path.write_bytes(damage(path.read_bytes()))
    assert cache.list_entries()[0].problem is not None
    with pytest.warns(cache.CacheWarning, match="corrupt"):
        again = blockmap_cache.cached_block_map_lists(spec, 80, 80, 16, 16, q_offset=0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert cache.STATS["discarded"] == 1 and cache.STATS["block_map_builds"] == 2
    assert blockmap_cache.cached_block_map_lists(spec, 80, 80, 16, 16, q_offset=0)[1].tolist() == first[1].tolist()
    assert cache.STATS["block_map_hits"] == 1


def test_launchers_read_large_maps_from_disk(small_spec, monkeypatch, torch_rng):
    """Forward and backward of a list-walking spec store their maps (by query tile, by key tile)
    once; fresh launchers of the same spec (another process's, say) read them back, unchanged
    results."""
    from attngen.runtime.dispatch import AttentionKernels

    spec = attngen.load_spec(small_spec("bm_launch", causal=True, mask={"stride": {"every": 3}}))
    monkeypatch.setattr(blockmap_cache, "BLOCK_MAP_MIN_TILES", 4)
    q, k, v = (torch.randn(1, 2 if name == "q" else 1, 70, 16, generator=torch_rng) for name in "qkv")

    def run():
        kernels = AttentionKernels(spec)             # fresh launchers: nothing kept in memory
        out, lse = kernels.forward_impl(q, k, v)
        return out, kernels.backward_impl(q, k, v, out, lse, torch.ones_like(out))

    first = run()
    # by query tile (forward, and dQ where its tiles are the forward's: a hit) and by key tile (dK/dV)
    assert cache.STATS["block_map_builds"] == 2
    hits = cache.STATS["block_map_hits"]
    monkeypatch.setattr(blockmap_cache, "block_map", lambda *a, **k: pytest.fail("rebuilt"))
    second = run()
    assert cache.STATS["block_map_builds"] == 2 and cache.STATS["block_map_hits"] == hits + 3
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def test_shape_tables_keep_the_most_recent_shapes():
    from attngen.runtime.launch import ShapeTables

    tables, built = ShapeTables(capacity=2), []

    def build(key):
        built.append(key)
        return key * 10

    for key in (1, 2, 1, 3, 1, 2):
        assert tables.get_or_build(key, lambda key=key: build(key)) == key * 10
    assert built == [1, 2, 3, 2] and list(tables) == [1, 2]
