"""`load_spec`: YAML file, YAML text or dict → validated `Spec`.

Every refusal is a `SpecError` naming the field path (``mask.any[1].band.left``) and the value; for
YAML the error also names the file (when there is one), line and column of that field.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import NO_VALUE, SpecError
from . import predicates as P
from .formula import Formula, ScoreFormula
from .spec import FeatureMap, Spec

TOP_KEYS = ("name", "heads", "head_dim", "kind", "causal", "mask", "scale", "softcap", "alibi",
            "feature_map", "eps", "inputs", "score", "sink", "select", "lsh")
MASK_KEYS = ("causal", "band", "stride", "columns", "global", "blocks", "random", "segments",
             "any", "all", "not")


def _join(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _check_keys(path: str, value: dict, allowed, required=()):
    for key in value:
        if key not in allowed:
            raise SpecError(_join(path, key), value[key],
                            f"unknown key {key!r} (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in value:
            raise SpecError(_join(path, key), None, "is required")


def _mapping(path: str, value, what: str) -> dict:
    if not isinstance(value, dict):
        raise SpecError(path, value, f"must be a mapping ({what})")
    return value


def _build(path: str, make, *args, **kwargs):
    """Call a validating constructor, placing its errors under `path`."""
    try:
        return make(*args, **kwargs)
    except SpecError as err:
        raise err.under(path) from None


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
def _band(path, value):
    if isinstance(value, dict):
        _check_keys(path, value, ("left", "right"))
        return _build(path, P.Band, value.get("left"), value.get("right"))
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, value, "must be a width (integer) or a mapping with left/right")
    return _build(path, P.Band, value, value)


def _stride(path, value):
    value = _mapping(path, value, "every: s")
    _check_keys(path, value, ("every",), required=("every",))
    return _build(path, P.Stride, value["every"])


def _columns(path, value):
    value = _mapping(path, value, "every: s, width: c")
    _check_keys(path, value, ("every", "width"), required=("every", "width"))
    return _build(path, P.Columns, value["every"], value["width"])


def _global(path, value):
    value = _mapping(path, value, "first: g, or tokens: [..]")
    _check_keys(path, value, ("first", "tokens"))
    tokens = value.get("tokens")
    if tokens is not None and not isinstance(tokens, list):
        raise SpecError(_join(path, "tokens"), tokens, "must be a list of token positions")
    return _build(path, P.GlobalTokens, value.get("first"), None if tokens is None else tuple(tokens))


def _blocks(path, value):
    value = _mapping(path, value, "size: b")
    _check_keys(path, value, ("size",), required=("size",))
    return _build(path, P.Blocks, value["size"])


def _random(path, value):
    value = _mapping(path, value, "per_row: r, block: R, seed: s")
    _check_keys(path, value, ("per_row", "block", "seed"), required=("per_row", "block"))
    return _build(path, P.Random, value["per_row"], value["block"], value.get("seed", 0))


def _flag(path, value, make):
    if value is not True:
        raise SpecError(path, value, "must be true (leave the key out otherwise)")
    return make()


def _combination(path, value, combine):
    if not isinstance(value, list) or not value:
        raise SpecError(path, value, "must be a non-empty list of masks")
    return combine(tuple(parse_mask(part, _join(path, n)) for n, part in enumerate(value)))


LEAF_PARSERS = {
    "band": _band, "stride": _stride, "columns": _columns, "global": _global, "blocks": _blocks,
    "random": _random,
    "causal": lambda path, v: _flag(path, v, P.Causal),
    "segments": lambda path, v: _flag(path, v, P.Segments),
    "any": lambda path, v: _combination(path, v, P.Any_),
    "all": lambda path, v: _combination(path, v, P.All_),
    "not": lambda path, v: P.Not_(parse_mask(v, path)),
}


def parse_mask(value, path: str = "mask") -> P.Predicate:
    """A mask in YAML form (one key: a predicate or any/all/not) → predicate."""
    if isinstance(value, P.Predicate):
        return value
    if isinstance(value, str):                     # a formula (SPEC.md, "Expressions")
        return _build(path, Formula.parse, value)
    if not isinstance(value, dict) or len(value) != 1:
        raise SpecError(path, value, f"must be a mapping with exactly one of: {', '.join(MASK_KEYS)}")
    (key, inner), = value.items()
    if key not in LEAF_PARSERS:
        raise SpecError(_join(path, key), inner, f"unknown mask {key!r} (allowed: {', '.join(MASK_KEYS)})")
    return LEAF_PARSERS[key](_join(path, key), inner)


# --------------------------------------------------------------------------------------------
# Whole specs
# --------------------------------------------------------------------------------------------
def _heads(value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    value = _mapping("heads", value, "query: Hq, kv: Hkv")
    _check_keys("heads", value, ("query", "kv"), required=("query",))
    return value["query"], value.get("kv", value["query"])


def _feature_map(value) -> FeatureMap | None:
    if value is None:
        return None
    if isinstance(value, str):
        return FeatureMap(value)
    value = _mapping("feature_map", value, "name: favor, features: m, seed: s")
    _check_keys("feature_map", value, ("name", "features", "seed"), required=("name",))
    return FeatureMap(value["name"], value.get("features"), value.get("seed", 0))


def spec_from_dict(data: dict) -> Spec:
    data = _mapping("", data, "a spec")
    _check_keys("", data, TOP_KEYS, required=("heads", "head_dim"))
    query, kv = _heads(data["heads"])
    mask = parse_mask(data["mask"]) if data.get("mask") is not None else None
    score = _build("score", ScoreFormula.parse, data["score"]) if data.get("score") is not None else None
    return Spec(name=data.get("name", "attention"), query_heads=query, kv_heads=kv,
                head_dim=data["head_dim"], kind=data.get("kind", "softmax"),
                causal=data.get("causal", False), mask=mask, scale=data.get("scale"),
                softcap=data.get("softcap"), alibi=data.get("alibi", False),
                feature_map=_feature_map(data.get("feature_map")), eps=data.get("eps"),
                inputs=data.get("inputs") or (), score=score, sink=data.get("sink", False),
                select=data.get("select"), lsh=data.get("lsh"))


# --------------------------------------------------------------------------------------------
# YAML with locations
# --------------------------------------------------------------------------------------------
def _locations(node, path="", out=None) -> dict:
    """Field path → (line, column), 1-based, for every node of a composed YAML document.

    Also refuses duplicate keys, which PyYAML would otherwise resolve silently to the last one.
    """
    out = {} if out is None else out
    # A mapping's value keeps the place of its key (set by the caller): that is where people look.
    out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            child = _join(path, key)
            if key in seen:
                raise SpecError(child, key, "is given twice").located(
                    None, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            seen.add(key)
            out[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if isinstance(value_node, (yaml.MappingNode, yaml.SequenceNode)):
                _locations(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for n, item in enumerate(node.value):
            _locations(item, _join(path, n), out)
    return out


def _locate(err: SpecError, where: dict, source: str | None) -> SpecError:
    path = err.field
    while path not in where and path:
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    line, column = where.get(path, (None, None))
    return err.located(source, line, column)


def spec_from_yaml(text: str, source: str | None = None) -> Spec:
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError("", NO_VALUE, f"is not valid YAML ({getattr(exc, 'problem', exc)})",
                        source=source, line=mark.line + 1 if mark else None,
                        column=mark.column + 1 if mark else None) from None
    if node is None:
        raise SpecError("", NO_VALUE, "is empty", source=source)
    try:
        where = _locations(node)
        return spec_from_dict(data)
    except SpecError as err:
        if err.line is not None:
            raise err.located(source, err.line, err.column) from None
        raise _locate(err, where, source) from None


def load_spec(x) -> Spec:
    """A `Spec` from a path to a YAML file, YAML text, a dict, or a Spec (returned as is)."""
    if isinstance(x, Spec):
        return x
    if isinstance(x, dict):
        return spec_from_dict(x)
    if isinstance(x, Path) or (isinstance(x, str) and "\n" not in x and x.endswith((".yaml", ".yml"))):
        path = Path(x)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder, not a spec file (load_specs and "
                                    "`attngen check` read every spec of a folder)")
        if not path.is_file():
            raise FileNotFoundError(f"spec file not found: {path}")
        return spec_from_yaml(path.read_text(), source=str(path))
    if isinstance(x, str):
        return spec_from_yaml(x)
    raise TypeError(f"load_spec takes a path, YAML text, a dict or a Spec, not {type(x).__name__}")


def load_specs(path) -> list[Spec]:
    """Every spec of a YAML file or of the *.yaml / *.yml files of a folder, sorted by file name."""
    path = Path(path)
    if path.is_dir():
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        return [load_spec(f) for f in files]
    return [load_spec(path)]
