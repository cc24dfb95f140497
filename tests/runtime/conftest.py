"""Runtime tests run against a fresh, empty cache folder each (ATTNGEN_CACHE_DIR), with the IR
verifier on. Operators are registered process-wide, so each test names its specs uniquely."""
from __future__ import annotations

import pytest

from attngen.runtime import cache


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "attngen-cache"
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(folder))
    monkeypatch.setenv("ATTNGEN_VERIFY", "1")
    cache.STATS.clear()
    return folder


@pytest.fixture
def small_spec():
    """small_spec(name, **fields): a spec dict small enough for the interpreter (2 query heads
    sharing 1 kv head of 16)."""
    def make(name: str, **fields) -> dict:
        return {"name": name, "heads": {"query": 2, "kv": 1}, "head_dim": 16, **fields}
    return make
