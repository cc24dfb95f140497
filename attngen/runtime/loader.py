"""Turn generated Triton source into an importable module, and run its kernels interpreted.

Triton's ``@triton.jit`` reads the function's source from its file, so generated source is imported
from a file, once per process: the kernel file of its cache entry when `cache.generated` found or
wrote one (see cache.py), else ``$ATTNGEN_CACHE_DIR/sources/k_<sha256>.py``, written atomically.
Importing this module points Triton's own cache inside attngen's (`env.point_triton_cache`), before
any kernel is compiled.

On CPU tensors a kernel runs under Triton's interpreter: `interpreted(kernel)[grid](...)`. Triton
turns ``@triton.jit`` functions into interpreted ones only when the interpreter was on at *import*
time, which would rule out compiling for GPUs in the same process; so instead, while an interpreted
launch runs, calls from it to other JIT functions (our helpers and Triton's own ``tl.zeros``,
``tl.max``, ...) are routed through the interpreter too.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

import numpy as np

from triton.runtime import interpreter as triton_interpreter
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from .. import env
from . import cache

env.point_triton_cache()

_IMPORT_LOCK = threading.Lock()
_MODULES: dict[str, ModuleType] = {}


def source_dir() -> Path:
    return env.cache_dir() / "sources"


def write_source(source: str) -> Path:
    """The path of a file holding `source`: its cache entry's kernel file, or one under
    sources/ written atomically if it is not there yet."""
    entry_file = cache.entry_file_for(source)
    if entry_file is not None and entry_file.is_file() and entry_file.read_text() == source:
        return entry_file
    digest = hashlib.sha256(source.encode()).hexdigest()
    path = source_dir() / f"k_{digest[:32]}.py"
    if path.exists() and path.read_text() == source:
        return path
    cache.atomic_write(path, source.encode())
    return path


def load_source(source: str) -> ModuleType:
    """Import generated `source` as a module (cached by the source's sha256)."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    with _IMPORT_LOCK:
        if digest in _MODULES:
            return _MODULES[digest]
        path = write_source(source)
        name = f"attngen_kernels.k_{digest[:32]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _MODULES[digest] = module
        return module


_INTERPRETED: dict = {}
_INTERPRET_LOCK = threading.RLock()


def _as_interpreted(fn: JITFunction) -> InterpretedFunction:
    # Keyed by identity: hashing a JITFunction computes its cache key, which fails mid-interpretation.
    entry = _INTERPRETED.get(id(fn))
    if entry is None or entry[0] is not fn:
        entry = _INTERPRETED[id(fn)] = (fn, InterpretedFunction(fn.fn))
    return entry[1]


def _language_namespaces() -> list:
    """The module and class namespaces the interpreter patches while it runs."""
    import triton.language as tl

    modules = [tl, tl.core, tl.math, tl.standard]
    classes = {id(v): v for m in modules for v in vars(m).values() if isinstance(v, type)}
    return modules + list(classes.values())


@contextlib.contextmanager
def _language_restored():
    """Undo every patch the interpreter leaves on triton.language. Its calls of nested JIT
    functions patch the language without restoring it (harmless when a whole process is
    interpreted, fatal to a later real compilation in the same process)."""
    namespaces = _language_namespaces()
    saved = [(ns, dict(vars(ns))) for ns in namespaces]
    try:
        yield
    finally:
        for ns, before in saved:
            # Names added to a *module* are the globals Triton's rewriter gives the functions it
            # rewrites and caches (interpreter_semantic, ...): they must stay. Names added to a
            # class are patches.
            if isinstance(ns, type):
                for name in [n for n in vars(ns) if n not in before]:
                    delattr(ns, name)
            for name, value in before.items():
                if vars(ns).get(name) is not value:
                    setattr(ns, name, value)


def _scalar_index(self) -> int:
    # The interpreter holds scalars in one-element 1-D arrays. Triton 3.6 converts them for
    # range() with int(array), which numpy >= 2.4 refuses; .item() takes any one-element array.
    return int(self.handle.data.item())


@contextlib.contextmanager
def _scalar_index_fixed():
    """While an interpreted launch runs, the interpreter's tensor.__index__ patch is ours."""
    scope = getattr(triton_interpreter, "_LangPatchScope", None)
    if scope is None:
        yield
        return
    original = scope.set_attr

    def set_attr(self, obj, name, value):
        original(self, obj, name, _scalar_index if name == "__index__" else value)

    scope.set_attr = set_attr
    try:
        yield
    finally:
        scope.set_attr = original


def float32_to_bfloat16_bits(data: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 rounded to nearest, ties to even (the GPU's ``cvt.rn.bf16.f32``), as the
    uint16 bit patterns the interpreter holds bfloat16 in. NaNs stay (quiet) NaNs."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    bits = data.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    out = rounded.astype(np.uint16)
    nan = np.isnan(data)
    if nan.any():
        out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out


@contextlib.contextmanager
def _bfloat16_rounded():
    """While an interpreted launch runs, float32 → bfloat16 casts (``.to(tl.bfloat16)``, stores
    into bfloat16 tensors) round to nearest even: Triton's interpreter truncates them, which a GPU
    never does. float16 casts go through numpy, which already rounds to nearest even."""
    builder = getattr(triton_interpreter, "InterpreterBuilder", None)
    original = getattr(builder, "cast_impl", None)
    if original is None:
        yield
        return
    import triton.language as tl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return triton_interpreter.TensorHandle(float32_to_bfloat16_bits(src.data), tl.bfloat16)
        return original(self, src, dst_type)

    builder.cast_impl = cast_impl
    try:
        yield
    finally:
        builder.cast_impl = original


@contextlib.contextmanager
def _jit_calls_interpreted():
    original = JITFunction.__call__

    def call(self, *args, **kwargs):          # a device-function call inside an interpreted kernel
        return _as_interpreted(self)(*args, **kwargs)

    JITFunction.__call__ = call
    try:
        with _language_restored(), _scalar_index_fixed(), _bfloat16_rounded():
            yield
    finally:
        JITFunction.__call__ = original


class interpreted:
    """``interpreted(kernel)[grid](*args, **kwargs)`` runs a JIT kernel under the interpreter."""

    def __init__(self, kernel: JITFunction):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, num_warps=None, num_stages=None, **kwargs):
            # Warps and stages mean nothing to the interpreter; the rest is the kernel's signature.
            with _INTERPRET_LOCK, _jit_calls_interpreted():
                return _as_interpreted(self.kernel)[grid](*args, **kwargs)
        return launch
