"""attngen: a compiler for attention.

    spec (parse, validate) → IR (graph, passes) → analysis (block maps, costs)
    → codegen (jinja2 templates) → runtime (cache, torch ops, autograd) → CLI

The public API is re-exported here; every stage lives in its own subpackage.
"""
from .api import compile, emit, load
from .errors import CompileError, ShapeError, SpecError
from .reference import reference
from .spec import (FeatureMap, Predicate, Spec, band, blocks, causal, columns, global_tokens, load_spec,
                   load_specs, random, segments, stride)

from .version import __version__

__all__ = [
    "CompileError", "FeatureMap", "block_map", "compile", "emit", "Predicate", "ShapeError", "Spec", "SpecError", "band", "blocks",
    "causal", "columns", "global_tokens", "load", "load_spec", "load_specs", "merge", "random", "reference", "segments",
    "stride", "__version__",
]


def __getattr__(name):
    # The compiler pulls in Triton and the code generator; `import attngen` stays light for the
    # spec tools and the CLI's analysis commands, and loads them on first use.
    if name in ("compile", "emit"):
        from . import api
        return getattr(api, name)
    if name == "block_map":
        from .analysis.blockmap import block_map
        return block_map
    if name == "merge":
        from .runtime.merge import merge
        return merge
    raise AttributeError(f"module 'attngen' has no attribute {name!r}")
