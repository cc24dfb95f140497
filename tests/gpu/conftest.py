"""The gpu tier (tests/gpu/test_gpu_kernels.py, marked gpu) and the CPU proofs of its helpers.

    python -m pytest -q -m gpu tests/gpu        # on a CUDA machine: compiled kernels vs float64
    python -m pytest -q tests/gpu               # anywhere: helpers on CPU; the gpu tier skips

`benchmarks/gpu_session.sh` runs the gpu tier first on a lent machine.
"""
from __future__ import annotations

import os

import pytest
import torch


def pytest_terminal_summary(terminalreporter):
    """Say where the gpu tier ran, so that a log shows which device and versions produced it (a
    report header would be hidden by -q)."""
    import triton

    where = "no CUDA device: the gpu tier is skipped"
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        where = f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    flags = {name: os.environ[name] for name in ("ATTNGEN_INTERPRET", "TRITON_INTERPRET", "ATTNGEN_AUTOTUNE")
             if name in os.environ}
    terminalreporter.write_line(f"attngen gpu tier: {where}; torch {torch.__version__}, "
                                f"triton {triton.__version__}; env {flags}")


@pytest.fixture
def seed(rng) -> int:
    """A seed drawn from the test's id (tests/conftest.py): fresh inputs per case, the same on rerun."""
    return rng.randrange(2 ** 31)
