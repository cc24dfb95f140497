"""Fixtures shared by every test tier. Kernel-specific fixtures live next to their tests."""
from __future__ import annotations

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
