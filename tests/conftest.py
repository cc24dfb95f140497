"""Fixtures shared by every test tier. Kernel-specific fixtures live next to their tests."""
from __future__ import annotations

import os
import random
import zlib

import pytest
import torch


def _seed_of(request) -> int:
    # A fixed seed per test: reruns draw the same numbers, different tests draw different ones.
    return zlib.crc32(request.node.nodeid.encode())


@pytest.fixture
def rng(request) -> random.Random:
    """A Python generator seeded from the test's id (for drawing shapes, trees, parameters)."""
    return random.Random(_seed_of(request))


@pytest.fixture
def torch_rng(request) -> torch.Generator:
    """A CPU torch generator seeded from the test's id (for drawing tensors)."""
    return torch.Generator().manual_seed(_seed_of(request))


# The IR verifier runs between lowering passes in every test (SPEC: "always in tests").
os.environ["ATTNGEN_VERIFY"] = "1"


def pytest_collection_modifyitems(config, items):
    """Cases marked slow run only with ATTNGEN_SLOW=1 (CI runs the rest; see README)."""
    from attngen import env

    if env.run_slow_tests():
        return
    skip = pytest.mark.skip(reason="slow: set ATTNGEN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
