"""Every environment variable attngen reads, in one place (documented in the README).

ATTNGEN_CACHE_DIR   where compiled kernels are cached (default: $XDG_CACHE_HOME/attngen or ~/.cache/attngen)
ATTNGEN_VERIFY      "1" runs the IR verifier between lowering passes (tests always do)
ATTNGEN_INTERPRET   "1" forces Triton's interpreter even for CUDA tensors (debugging)
ATTNGEN_SLOW        "1" runs the test cases marked slow
"""
from __future__ import annotations

import os
from pathlib import Path


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    explicit = os.environ.get("ATTNGEN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attngen"


def verify_ir() -> bool:
    return _flag("ATTNGEN_VERIFY")


def force_interpreter() -> bool:
    return _flag("ATTNGEN_INTERPRET")


def run_slow_tests() -> bool:
    return _flag("ATTNGEN_SLOW")
