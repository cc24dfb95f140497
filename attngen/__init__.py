"""attngen: a compiler for attention.

    spec (parse, validate) → IR (graph, passes) → analysis (block maps, costs)
    → codegen (jinja2 templates) → runtime (cache, torch ops, autograd) → CLI

The public API is re-exported here; every stage lives in its own subpackage.
"""
from .api import compile, emit
from .errors import CompileError, ShapeError, SpecError
from .reference import reference
from .spec import (FeatureMap, Predicate, Spec, band, blocks, causal, columns, global_tokens, load_spec,
                   load_specs, random, segments, stride)

from .version import __version__

__all__ = [
    "CompileError", "FeatureMap", "compile", "emit", "Predicate", "ShapeError", "Spec", "SpecError", "band", "blocks",
    "causal", "columns", "global_tokens", "load_spec", "load_specs", "random", "reference", "segments",
    "stride", "__version__",
]
