"""Every environment variable attngen reads, in one place (documented in the README).

ATTNGEN_CACHE_DIR   where compiled kernels are cached (default: $XDG_CACHE_HOME/attngen or ~/.cache/attngen)
ATTNGEN_VERIFY      "1" runs the IR verifier between lowering passes (tests always do)
ATTNGEN_INTERPRET   "1" forces Triton's interpreter even for CUDA tensors (debugging)
ATTNGEN_AUTOTUNE    "1" times every spill-free tile configuration on a GPU (first call of each shape
                    class) and keeps the fastest, instead of taking the first spill-free one
ATTNGEN_TMA         "1" lets the forward read K and V through tensor descriptors (Hopper's TMA) on
                    sm_90 and later where the tensors allow it (runtime/tma.py); default: pointers
ATTNGEN_POISON      "1" fills outputs with NaN before the kernels run on a GPU too (the interpreter
                    always does), so that an element a kernel never writes shows up as NaN
ATTNGEN_SLOW        "1" runs the test cases marked slow
ATTNGEN_LOG         a level (debug, info, warning) at which the "attngen" logger prints to stderr;
                    unset: nothing is printed (records still reach handlers the application adds)
ATTNGEN_QUIET       "1" silences the progress lines (generating, compiling, interpreted calls) that
                    attngen prints on stderr when stderr is a terminal (progress.py)
TRITON_CACHE_DIR    Triton's own compile cache; attngen sets it to $ATTNGEN_CACHE_DIR/triton when
                    the runtime is imported, unless it is already set (`point_triton_cache`)
TRITON_DEFAULT_FP_FUSION  set to "1" (Triton's default through 3.9) unless the user set it
ATTNGEN_UPDATE_GOLDEN  "1" rewrites tests/golden/ from the current generator instead of comparing
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


def autotune() -> bool:
    return _flag("ATTNGEN_AUTOTUNE")


def tma() -> bool:
    return _flag("ATTNGEN_TMA")


def poison_outputs() -> bool:
    return _flag("ATTNGEN_POISON")


def run_slow_tests() -> bool:
    return _flag("ATTNGEN_SLOW")


def quiet() -> bool:
    return _flag("ATTNGEN_QUIET")


def log_level() -> str | None:
    """The level named by ATTNGEN_LOG ('DEBUG', 'INFO', ...), or None when unset."""
    value = os.environ.get("ATTNGEN_LOG", "").strip().upper()
    return value or None


def triton_cache_dir() -> Path:
    """Where Triton caches its compiled kernels: TRITON_CACHE_DIR, else inside attngen's cache."""
    explicit = os.environ.get("TRITON_CACHE_DIR")
    return Path(explicit).expanduser() if explicit else cache_dir() / "triton"


def point_triton_cache() -> Path:
    """Point Triton's cache inside attngen's (unless the user chose a place): called when the
    runtime is imported, before any kernel is compiled, since Triton reads the variable then."""
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache_dir() / "triton"))
    # Triton 3.9 warns on every compile while TRITON_DEFAULT_FP_FUSION is unset; attngen's kernels
    # are tested with fusion on (Triton's default through 3.9), so say so explicitly. A value the
    # user set is kept; older Triton ignores the variable.
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return triton_cache_dir()


def update_golden() -> bool:
    return _flag("ATTNGEN_UPDATE_GOLDEN")
