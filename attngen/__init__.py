"""attngen: a compiler for attention.

    spec (parse, validate) → IR (graph, passes) → analysis (block maps, costs)
    → codegen (jinja2 templates) → runtime (cache, torch ops, autograd) → CLI

The public API is re-exported here; every stage lives in its own subpackage.
"""
import importlib

from .errors import CompileError, ShapeError, SpecError
from .reference import reference        # eager: the submodule of the same name would shadow it
from .spec import (FeatureMap, Predicate, Spec, band, blocks, causal, columns, expr, global_tokens,
                   load_spec, load_specs, mask_mod, random, score_mod, segments, stride)
from .version import __version__

# The compiler pulls in Triton, networkx, jinja2 and the code generator (about a second on a small
# machine): `import attngen` stays light for the spec tools and the CLI's analysis commands, and
# loads these on first use. Name → the module that defines it.
_LAZY = {"compile": "api", "emit": "api", "load": "runtime.registry", "block_map": "analysis.blockmap",
         "merge": "runtime.merge"}

__all__ = [
    "CompileError", "FeatureMap", "block_map", "compile", "emit", "Predicate", "ShapeError", "Spec", "SpecError", "band", "blocks",
    "causal", "columns", "expr", "global_tokens", "mask_mod", "score_mod", "load", "load_spec", "load_specs", "merge", "random", "reference", "segments",
    "stride", "__version__",
]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'attngen' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value             # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
