"""Stage 1 of the pipeline: the spec language (parse, validate, predicates, normalisation)."""
from .formula import Formula, ScoreFormula, expr
from .formula_trace import mask_mod, score_mod
from .inputs import InputDecl
from .parse import load_spec, load_specs, parse_mask, spec_from_dict, spec_from_yaml
from .predicates import (All_, Any_, Band, Blocks, Causal, Columns, EvalContext, Everything, GlobalTokens,
                         Not_, Nothing, Predicate, Random, Segments, Stride, band, blocks, causal,
                         columns, global_tokens, random, segments, stride)
from .lsh import Lsh, kernel_spec
from .spec import FeatureMap, Select, Spec, alibi_slopes, resolve_k_offset, resolve_q_offset

__all__ = [
    "Formula", "InputDecl", "ScoreFormula", "expr", "mask_mod", "score_mod",
    "All_", "Any_", "Band", "Blocks", "Causal", "Columns", "EvalContext", "Everything", "FeatureMap",
    "GlobalTokens", "Lsh", "Not_", "Nothing", "Predicate", "Random", "Segments", "Select", "Spec", "Stride",
    "alibi_slopes", "band", "blocks", "causal", "columns", "global_tokens", "kernel_spec", "load_spec", "load_specs",
    "parse_mask", "random", "resolve_k_offset", "resolve_q_offset", "segments", "spec_from_dict",
    "spec_from_yaml", "stride",
]
