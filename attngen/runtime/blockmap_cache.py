"""Block maps of static shapes, kept on disk when they are large.

Block maps depend on a call's lengths, offset and tile sizes, not on the spec alone, and most build
in about a millisecond; but a large one of a non-interval mask takes seconds (sparse_strided at
128K tokens: 1.5-3.7 s, 4 MB of lists; read back: 13-19 ms). `cached_block_map_lists` keeps those of at
least BLOCK_MAP_MIN_TILES tiles on disk, keyed by the spec's meaning, the shape, attngen's code and
the versions; segment ids are call-time data, so segments masks are never stored. A file is a
sha256 line, then `torch.save` of the four lists; a bad checksum is a `CacheWarning` and a rebuild.

Small maps (most masks, most lengths) are built every time: about a millisecond, less than a read.
"""
from __future__ import annotations

import io
import logging
import time
import warnings
from pathlib import Path

import torch

from ..analysis.blockmap import block_map
from ..spec import Spec, load_spec
from .cache import (LAYOUT, STATS, CacheWarning, CorruptEntry, _json_sha256, atomic_write, block_map_dir,
                    code_digest, framed, unframed, versions)

log = logging.getLogger("attngen")

BLOCK_MAP_MIN_TILES = 1 << 16        # e.g. 16K x 16K tokens at 64 x 64 tiles; smaller: ~1 ms to build


def block_map_file(spec: Spec, shape: dict) -> Path:
    key = _json_sha256({"spec": spec.canonical(), "shape": shape, "code": code_digest(),
                        **versions(), "layout": LAYOUT})
    return block_map_dir() / f"{spec.name}-{key[:32]}.pt"


def _read_block_map(path: Path) -> tuple | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    payload = unframed(data)
    try:
        if payload is None:
            raise CorruptEntry(f"its checksum does not match ({len(data)} bytes)")
        lists = torch.load(io.BytesIO(payload), weights_only=True)
        if not (isinstance(lists, list) and len(lists) == 4
                and all(isinstance(t, torch.Tensor) and t.dtype == torch.int32 for t in lists)):
            raise CorruptEntry("it does not hold four int32 lists")
    except (CorruptEntry, RuntimeError, ValueError, EOFError) as err:
        message = f"attngen cached block map {path} is corrupt ({err}); discarding and rebuilding it"
        warnings.warn(message, CacheWarning, stacklevel=3)
        log.warning(message)
        STATS["discarded"] += 1
        path.unlink(missing_ok=True)
        return None
    return tuple(lists)


def cached_block_map_lists(spec: Spec, nq: int, nk: int, block_m: int, block_n: int, *,
                           q_offset: int, transposed: bool = False, k_offset: int = 0,
                           total_nk: int | None = None) -> tuple:
    """(partial_ptr, partial_idx, full_ptr, full_idx) int32 on the CPU of `spec`'s block map
    (`transposed()`: rows are key tiles), read from the disk cache when the map is large.
    k_offset / total_nk: a chunk pair of a longer sequence (`block_map`)."""
    spec = load_spec(spec)
    if spec.uses_segments:
        raise ValueError(f"spec {spec.name!r} has a segments mask: its block map depends on the "
                         "segment ids of each call and is not cached")

    def build() -> tuple:
        bm = block_map(spec, nq, nk, block_m, block_n, q_offset=q_offset, k_offset=k_offset, total_nk=total_nk)
        return (bm.transposed() if transposed else bm).lists

    if -(-nq // block_m) * -(-nk // block_n) < BLOCK_MAP_MIN_TILES:
        return build()
    shape = {"nq": nq, "nk": nk, "q_offset": q_offset, "block_m": block_m, "block_n": block_n,
             "transposed": transposed}
    if k_offset or (total_nk is not None and total_nk != nk):      # a chunk pair: say which
        shape.update(k_offset=k_offset, total_nk=total_nk)
    path = block_map_file(spec, shape)
    lists = _read_block_map(path)
    if lists is not None:
        STATS["block_map_hits"] += 1
        return lists
    start = time.perf_counter()
    lists = build()
    seconds = time.perf_counter() - start
    payload = io.BytesIO()
    torch.save([t.contiguous() for t in lists], payload)
    try:
        atomic_write(path, framed(payload.getvalue()))
    except OSError as err:
        warnings.warn(f"attngen could not write its cache at {path} ({err})", CacheWarning, stacklevel=2)
    STATS["block_map_builds"] += 1
    log.info("block map %s %s built in %.1f ms, cached in %s", spec.name, shape, seconds * 1e3, path)
    return lists
