"""Bad specs are refused when loaded, with a message naming the field path, the value and, for
YAML, the file and line. Each case is a whole YAML document: the line is where the bad field is."""
from __future__ import annotations

import textwrap

import pytest
import torch

from attngen import SpecError, band, columns, global_tokens, load_spec, random, reference, stride

HEAD = "name: bad\nheads: {query: 4, kv: 2}\nhead_dim: 16\n"      # lines 1-3 of most cases
LINEAR_HEAD = HEAD + "kind: linear\n"                               # lines 1-4


def case(case_id, body, field, value, line, *, head=HEAD, reason=None):
    """A bad spec: `body` follows `head`; the error must name `field`, `value` (part of its repr in
    the message) and `line` (1-based, in the whole document; 1 for a missing field); `reason` is
    an extra phrase the message must hold."""
    text = head + textwrap.dedent(body).lstrip("\n")
    return pytest.param(text, field, value, line, reason, id=case_id)


CASES = [
    # -- unknown keys ---------------------------------------------------------------------------
    case("unknown-top-level-key", "window: 3\n", "window", "3", 4, reason="unknown key"),
    case("unknown-key-in-heads", "", "heads.kvs", "2", 2,
         head="name: bad\nheads: {query: 4, kvs: 2}\nhead_dim: 16\n"),
    case("unknown-key-in-band", "mask:\n  band: {left: 1, lefty: 2}\n", "mask.band.lefty", "2", 5),
    case("unknown-mask-kind", "mask:\n  window: 3\n", "mask.window", "3", 5, reason="unknown mask"),
    case("unknown-key-deep-in-any", """
         mask:
           any:
             - band: 2
             - stride: {every: 2, offset: 1}
         """, "mask.any[1].stride.offset", "1", 7),
    case("unknown-key-in-feature-map", "feature_map: {name: favor, feature: 3}\n",
         "feature_map.feature", "3", 5, head=LINEAR_HEAD),
    # -- wrong types ----------------------------------------------------------------------------
    case("head-dim-is-a-string", "", "head_dim", "'64'", 3,
         head="name: bad\nheads: 4\nhead_dim: '64'\n", reason="integer"),
    case("head-dim-is-a-bool", "", "head_dim", "True", 3, head="name: bad\nheads: 4\nhead_dim: true\n"),
    case("query-heads-is-a-string", "", "heads.query", "'eight'", 2,
         head="name: bad\nheads: {query: eight}\nhead_dim: 16\n"),
    case("band-left-is-a-string", "mask:\n  band: {left: '3'}\n", "mask.band.left", "'3'", 5),
    case("blocks-size-is-a-bool", "mask:\n  blocks: {size: true}\n", "mask.blocks.size", "True", 5),
    case("heads-is-a-list", "", "heads", "[8, 8]", 2, head="name: bad\nheads: [8, 8]\nhead_dim: 16\n"),
    case("mask-is-a-list", "mask:\n  - band: 3\n", "mask", "[{'band': 3}]", 4),
    case("stride-is-not-a-mapping", "mask:\n  stride: 4\n", "mask.stride", "4", 5),
    case("causal-is-a-string", "causal: 'yes'\n", "causal", "'yes'", 4),
    case("alibi-is-an-int", "alibi: 1\n", "alibi", "1", 4),
    case("kind-is-unknown", "kind: flash\n", "kind", "'flash'", 4),
    case("feature-map-name-is-a-list", "feature_map: {name: [elu1]}\n", "feature_map.name",
         "['elu1']", 5, head=LINEAR_HEAD),
    # -- heads and head_dim ---------------------------------------------------------------------
    case("query-heads-not-a-multiple-of-kv", "", "heads", "'kv': 3", 2,
         head="name: bad\nheads: {query: 8, kv: 3}\nhead_dim: 16\n", reason="Hq % Hkv"),
    case("head-dim-0", "", "head_dim", "0", 3, head="name: bad\nheads: 4\nhead_dim: 0\n"),
    case("head-dim-257", "", "head_dim", "257", 3, head="name: bad\nheads: 4\nhead_dim: 257\n"),
    case("missing-head-dim", "", "head_dim", "None", 1, head="name: bad\nheads: 4\n",
         reason="required"),
    # -- mask parameters ------------------------------------------------------------------------
    case("negative-band-left-in-any", """
         mask:
           any:
             - stride: {every: 4}
             - band: {left: -3, right: 1}
         """, "mask.any[1].band.left", "-3", 7),
    case("negative-band-width", "mask:\n  band: -2\n", "mask.band.left", "-2", 5),
    case("negative-band-right", "mask:\n  band: {right: -1}\n", "mask.band.right", "-1", 5),
    case("band-with-no-side", "mask:\n  band: {}\n", "mask.band", "{}", 5, reason="left, right"),
    case("stride-every-0", "mask:\n  stride: {every: 0}\n", "mask.stride.every", "0", 5),
    case("stride-every-negative", "mask:\n  stride: {every: -4}\n", "mask.stride.every", "-4", 5),
    case("columns-every-0", "mask:\n  columns: {every: 0, width: 1}\n", "mask.columns.every", "0", 5),
    case("columns-width-above-every", "mask:\n  columns: {every: 4, width: 5}\n",
         "mask.columns.width", "5", 5, reason="every (4)"),
    case("columns-width-0", "mask:\n  columns: {every: 4, width: 0}\n", "mask.columns.width", "0", 5),
    case("global-duplicate-tokens", "mask:\n  global: {tokens: [3, 1, 3]}\n", "mask.global.tokens",
         "[3, 1, 3]", 5, reason="duplicate positions [3]"),
    case("global-negative-token", "mask:\n  global: {tokens: [0, -1]}\n", "mask.global.tokens[1]",
         "-1", 5),
    case("global-first-and-tokens", "mask:\n  global: {first: 2, tokens: [5]}\n", "mask.global",
         "'tokens': (5,)", 5, reason="exactly one of first, tokens"),
    case("global-neither-first-nor-tokens", "mask:\n  global: {}\n", "mask.global", "'first': None",
         5, reason="exactly one of first, tokens"),
    case("random-per-row-0", "mask:\n  random: {per_row: 0, block: 4}\n", "mask.random.per_row",
         "0", 5),
    case("random-seed-above-64-bits", "mask:\n  random: {per_row: 1, block: 4, seed: 18446744073709551616}\n",
         "mask.random.seed", "18446744073709551616", 5, reason="2**64"),
    case("random-without-block", "mask:\n  random: {per_row: 2}\n", "mask.random.block", "None", 5,
         reason="required"),
    case("segments-false", "mask:\n  segments: false\n", "mask.segments", "False", 5),
    case("empty-any", "mask:\n  any: []\n", "mask.any", "[]", 5, reason="non-empty"),
    case("empty-all", "mask:\n  all: []\n", "mask.all", "[]", 5, reason="non-empty"),
    case("not-of-a-number", "mask:\n  not: 3\n", "mask.not", "3", 5),
    case("not-of-a-list", "mask:\n  not: [band: 1]\n", "mask.not", "[{'band': 1}]", 5),
    case("mask-with-two-predicates", "mask: {band: 1, stride: {every: 2}}\n", "mask", "'band': 1", 4,
         reason="exactly one"),
    case("mask-allowing-nothing", "mask:\n  not: {stride: {every: 1}}\n", "mask",
         "{'not': {'stride': {'every': 1}}}", 4, reason="allows no"),
    case("mask-and-its-complement", """
         mask:
           all:
             - blocks: {size: 8}
             - not: {blocks: {size: 8}}
         """, "mask", "{'not': {'blocks': {'size': 8}}}", 4, reason="allows no"),
    case("band-left-past-int64", "mask:\n  band: {left: 99999999999999999999}\n", "mask.band.left",
         "99999999999999999999", 5, reason="2**30"),
    case("band-right-past-int32-positions", "mask:\n  band: {right: 2147483647}\n",
         "mask.band.right", "2147483647", 5, reason="int32"),
    case("blocks-size-past-int32-positions", "mask:\n  any: [blocks: {size: 1073741825}, band: 1]\n",
         "mask.any[0].blocks.size", "1073741825", 5, reason="2**30"),
    case("global-token-past-int32-positions", "mask:\n  global: {tokens: [0, 4294967296]}\n",
         "mask.global.tokens[1]", "4294967296", 5),
    # -- kinds and their options ----------------------------------------------------------------
    case("linear-with-a-mask", "feature_map: elu1\nmask: {band: 4}\n", "mask", "'band'", 6,
         head=LINEAR_HEAD, reason="not allowed on kind: linear"),
    case("linear-with-softcap", "feature_map: elu1\nsoftcap: 30.0\n", "softcap", "30.0", 6,
         head=LINEAR_HEAD, reason="softmax only"),
    case("linear-with-alibi", "feature_map: elu1\nalibi: true\n", "alibi", "True", 6,
         head=LINEAR_HEAD, reason="softmax only"),
    case("linear-without-feature-map", "causal: true\n", "feature_map", "None", 1,
         head=LINEAR_HEAD, reason="required"),
    case("feature-map-identity", "feature_map: identity\n", "feature_map", "'identity'", 5,
         head=LINEAR_HEAD, reason="negative"),
    case("feature-map-elu", "feature_map: elu\n", "feature_map", "'elu'", 5, head=LINEAR_HEAD,
         reason="negative"),
    case("feature-map-none", "feature_map: none\n", "feature_map", "'none'", 5, head=LINEAR_HEAD,
         reason="negative"),
    case("feature-map-unknown", "feature_map: softmax\n", "feature_map", "'softmax'", 5,
         head=LINEAR_HEAD, reason="elu1, relu, favor"),
    case("favor-features-0", "feature_map: {name: favor, features: 0}\n", "feature_map.features",
         "0", 5, head=LINEAR_HEAD),
    case("features-on-elu1", "feature_map: {name: elu1, features: 8}\n", "feature_map.features",
         "8", 5, head=LINEAR_HEAD, reason="favor only"),
    case("softmax-with-feature-map", "feature_map: elu1\n", "feature_map", "'elu1'", 4,
         reason="kind: linear only"),
    case("softmax-with-eps", "eps: 1.0e-6\n", "eps", "1e-06", 4, reason="kind: linear only"),
    # -- numbers --------------------------------------------------------------------------------
    case("scale-0", "scale: 0\n", "scale", "0", 4, reason="> 0"),
    case("scale-negative", "scale: -0.5\n", "scale", "-0.5", 4),
    case("scale-nan", "scale: .nan\n", "scale", "nan", 4, reason="finite"),
    case("scale-infinite", "scale: .inf\n", "scale", "inf", 4, reason="finite"),
    case("scale-is-a-string", "scale: '0.1'\n", "scale", "'0.1'", 4, reason="number"),
    case("softcap-0", "softcap: 0.0\n", "softcap", "0.0", 4),
    case("softcap-negative", "softcap: -50\n", "softcap", "-50", 4),
    # -- names ----------------------------------------------------------------------------------
    case("name-with-a-dash", "", "name", "'my-spec'", 1, head="name: my-spec\nheads: 4\nhead_dim: 16\n",
         reason="identifier"),
    case("name-starting-with-a-digit", "", "name", "'1st'", 1,
         head="name: 1st\nheads: 4\nhead_dim: 16\n"),
    case("name-empty", "", "name", "''", 1, head="name: ''\nheads: 4\nhead_dim: 16\n"),
]


def _check(err: SpecError, field, value, line, reason):
    message = str(err)
    assert err.field == field, message
    assert f"{field}:" in message, message
    assert value in message.split(", got ", 1)[-1], message
    if reason is not None:
        assert reason in message, message
    assert err.line == line, message


@pytest.mark.parametrize("text, field, value, line, reason", CASES)
def test_refused_from_yaml_text(text, field, value, line, reason):
    with pytest.raises(SpecError) as info:
        load_spec(text)
    _check(info.value, field, value, line, reason)
    assert str(info.value).startswith(f"<yaml>:{line}:"), str(info.value)


@pytest.mark.parametrize("text, field, value, line, reason", CASES)
def test_refused_from_a_file_with_its_name_and_line(text, field, value, line, reason, tmp_path):
    path = tmp_path / "variant.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    _check(info.value, field, value, line, reason)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}:{line}:"), str(info.value)


def test_there_are_at_least_30_distinct_cases():
    texts = [c.values[0] for c in CASES]
    assert len(set(texts)) == len(texts) >= 30


def test_column_points_at_the_key(tmp_path):
    path = tmp_path / "col.yaml"
    path.write_text(HEAD + "mask:\n  any:\n    - band: 2\n    - band: {left: 1,  right: -7}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.field == "mask.any[1].band.right"
    assert (info.value.line, info.value.column) == (7, 24)


# -- YAML that is not a spec at all -----------------------------------------------------------
def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(HEAD + "mask:\n  band: [1, 2\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}:"), message
    assert "not valid YAML" in message
    assert info.value.line is not None and info.value.line >= 5, message


def test_invalid_yaml_text_has_a_line():
    with pytest.raises(SpecError) as info:
        load_spec("name: x\nheads: 4\nhead_dim: 16\n  bad indent: 3\n")
    assert "not valid YAML" in str(info.value) and info.value.line == 4


@pytest.mark.parametrize("text, field, line", [
    pytest.param(HEAD + "head_dim: 32\n", "head_dim", 4, id="top-level"),
    pytest.param(HEAD + "mask:\n  band: {left: 1, left: 2}\n", "mask.band.left", 5, id="nested"),
])
def test_duplicate_yaml_keys_are_refused(text, field, line, tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert info.value.field == field and info.value.line == line, message
    assert "twice" in message and message.startswith(f"{path}:{line}:"), message


def test_empty_yaml_is_refused(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    with pytest.raises(SpecError, match="empty"):
        load_spec(path)


def test_errors_from_a_dict_have_no_location():
    with pytest.raises(SpecError) as info:
        load_spec({"heads": 4, "head_dim": 16, "mask": {"any": [{"band": 2}, {"band": -3}]}})
    assert info.value.field == "mask.any[1].band.left" and info.value.value == -3
    assert info.value.line is None and info.value.source is None
    assert str(info.value).startswith("mask.any[1].band.left: ")


# -- refused at call time: the number of key blocks is only known then ----------------------------
RANDOM_SPEC = HEAD + "mask:\n  any:\n    - band: 1\n    - random: {per_row: 4, block: 4, seed: 1}\n"


def test_per_row_above_the_key_blocks_is_refused_by_dense_mask():
    spec = load_spec(RANDOM_SPEC)
    assert spec.dense_mask(8, 16).shape == (8, 16)           # 4 key blocks: fine
    with pytest.raises(SpecError) as info:
        spec.dense_mask(8, 12)                               # 3 key blocks < per_row 4
    message = str(info.value)
    assert info.value.field == "mask.any[1].random.per_row" and info.value.value == 4, message
    assert "3" in message and "nk=12" in message, message


def test_per_row_above_the_key_blocks_is_refused_by_reference():
    spec = load_spec(RANDOM_SPEC)
    q = torch.zeros(1, 4, 8, 16)
    k = torch.zeros(1, 2, 13, 16)                            # ceil(13 / 4) = 4 blocks: fine
    reference(spec, q, k, k)
    with pytest.raises(SpecError, match="per_row"):
        reference(spec, q, k[:, :, :12], k[:, :, :12])


# -- the Python builders validate the same way ----------------------------------------------------
@pytest.mark.parametrize("build, field, value", [
    pytest.param(lambda: band(-1), "left", -1, id="band-negative"),
    pytest.param(lambda: band(3, left=1), "band", 3, id="band-width-and-left"),
    pytest.param(lambda: stride(0), "every", 0, id="stride-0"),
    pytest.param(lambda: columns(4, 5), "width", 5, id="columns-width-above-every"),
    pytest.param(lambda: global_tokens(tokens=[2, 2]), "tokens", [2, 2], id="global-duplicates"),
    pytest.param(lambda: random(2, 0), "block", 0, id="random-block-0"),
])
def test_python_builders_refuse_bad_parameters(build, field, value):
    with pytest.raises(SpecError) as info:
        build()
    assert info.value.field == field and info.value.value == value, str(info.value)
