"""Turn generated Triton source into importable modules, once compiled and once interpreted.

Triton's ``@triton.jit`` reads the function's source from its file, so generated source is written
to a file named by its sha256 (written once, atomically) and imported from there. The same file is
imported twice when both are needed: with ``TRITON_INTERPRET=1`` set during the import, every
``@triton.jit`` in it (helpers included) becomes an interpreted function that runs on CPU tensors;
without it, a JIT function that compiles for the GPU.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from .. import env

_IMPORT_LOCK = threading.Lock()
_MODULES: dict[tuple[str, bool], ModuleType] = {}


def source_dir() -> Path:
    return env.cache_dir() / "sources"


def write_source(source: str) -> Path:
    """The path of a file holding `source`, written atomically if it is not there yet."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    folder = source_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"k_{digest[:32]}.py"
    if path.exists() and path.read_text() == source:
        return path
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(source)
    os.replace(tmp, path)
    return path


def load_source(source: str, *, interpret: bool) -> ModuleType:
    """Import generated `source` as a module; interpreted (CPU) or compiled (GPU) flavour."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    key = (digest, interpret)
    with _IMPORT_LOCK:
        if key in _MODULES:
            return _MODULES[key]
        path = write_source(source)
        name = f"attngen_kernels.k_{digest[:32]}_{'interp' if interpret else 'jit'}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            sys.modules[name] = module
            spec.loader.exec_module(module)
        finally:
            if previous is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = previous
        _MODULES[key] = module
        return module
