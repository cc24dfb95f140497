"""`attngen.load`: compile every spec of a YAML file or folder, at import time if you like.

    kernels = attngen.load("specs/")          # in a model's module: ready when it is imported
    out = kernels.gqa(q, k, v)                # or torch.ops.attngen.gqa(q, k, v, q_offset, None, None)

Each spec becomes a `CompiledAttention` (ops.py): a torch operator with a fake implementation and
autograd, whose kernels come from the disk cache (cache.py). The first load of a spec lowers and
generates it; a later load, in any process, reads it back from the cache without lowering.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from ..spec import Spec, load_spec
from .ops import CompiledAttention, register

log = logging.getLogger("attngen.runtime")


class Kernels:
    """The operators of a load, by spec name: ``kernels.mha``, ``kernels["mha"]``, iteration."""

    def __init__(self, ops: dict[str, CompiledAttention]):
        self.__dict__.update(ops)
        self._names = tuple(ops)

    def __getitem__(self, name: str) -> CompiledAttention:
        if name not in self._names:
            raise KeyError(f"no spec named {name!r} was loaded; loaded: {', '.join(self._names)}")
        return self.__dict__[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name) -> bool:
        return name in self._names

    def items(self):
        return [(name, self.__dict__[name]) for name in self._names]

    def __repr__(self) -> str:
        return f"Kernels({', '.join(self._names)})"


def spec_files(path) -> list[Path]:
    """The YAML file itself, or a folder's *.yaml / *.yml files sorted by name (at least one)."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"attngen.load takes a Spec, or the path of a YAML file or folder, got "
                        f"{type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        if not files:
            raise FileNotFoundError(f"no spec files (*.yaml, *.yml) in the folder {path}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"no spec file or folder at {path}")
    return [path]


def load(path, *, prepare: bool = True) -> Kernels:
    """Compile every spec of a YAML file or folder, or one `Spec`; returns their operators by spec
    name.

    `prepare=False` registers the operators and defers generating kernels to their first call.
    Two files of one folder may not give different specs the same name.
    """
    start = time.perf_counter()
    ops: dict[str, CompiledAttention] = {}
    origin: dict[str, Path] = {}
    for file in [path] if isinstance(path, Spec) else spec_files(path):
        spec = load_spec(file)
        if spec.name in ops:
            if ops[spec.name].spec != spec:
                raise ValueError(f"{file} and {origin[spec.name]} both define a spec named "
                                 f"{spec.name!r}, with different meanings; rename one")
            continue
        op = register(spec)
        if prepare:
            op.prepare()
        ops[spec.name], origin[spec.name] = op, file
    log.info("loaded %d spec(s) from %s in %.1f ms", len(ops), getattr(path, "name", path),
             (time.perf_counter() - start) * 1e3)
    return Kernels(ops)
