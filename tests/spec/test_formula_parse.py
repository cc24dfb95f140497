"""Formula text: the whitelisted grammar, its canonical text, and the refusals (field, piece, column).

Nothing here evaluates a formula as Python: the oracle for Python's meaning is written beside each
formula as a lambda (test_formula_semantics.py).
"""
from __future__ import annotations

import textwrap

import pytest
import yaml

import attngen as A
from attngen import SpecError, load_spec
from attngen.spec.formula_syntax import FormulaError, parse_formula, unparse

HEAD = "name: f\nheads: {query: 4, kv: 2}\nhead_dim: 16\n"
INPUTS = {"prefix": {"shape": ["B"], "dtype": "int32"}, "flags": {"shape": ["Nk"], "dtype": "bool"},
          "rel": {"shape": ["Hq", 9], "dtype": "float32"}}


def spec_with(field: str, text: str) -> A.Spec:
    return A.Spec(name="f", query_heads=4, kv_heads=2, head_dim=16, inputs=INPUTS, **{field: text})


@pytest.mark.parametrize("text, canonical", [
    ("j<=i", "j <= i"),
    ("0 <= i - j < 16", "i - j >= 0 and i - j < 16"),
    ("(j <= i) & (j % 16 == 0)", "j <= i and j % 16 == 0"),
    ("j <= i and j % 16 == 0", "j <= i and j % 16 == 0"),
    ("~(j > i)", "not j > i"),
    ("(i - j) // -3 == 0", "(i - j) // -3 == 0"),
    ("-(i - j) ** 2 < -4.5", "-(i - j) ** 2 < -4.5"),
    ("(-2) ** 2 < i", "(-2) ** 2 < i"),
    ("i > 0 or (j > 1 and h == 0)", "i > 0 or j > 1 and h == 0"),
    ("(i > 0 or j > 1) and h == 0", "(i > 0 or j > 1) and h == 0"),
    ("((j <= i) | (j < 2)) | (i < 3)", "j <= i or j < 2 or i < 3"),
    ("where(i > j, i - j, j - i) <= 3", "where(i > j, i - j, j - i) <= 3"),
    ("j < prefix[b]", "j < prefix[b]"),
    ("flags[j] == (j < 3)", "flags[j] == (j < 3)"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_canonical_text(text, canonical):
    node = parse_formula(text)
    assert unparse(node) == canonical
    assert parse_formula(canonical) == node                       # the canonical text is a fixpoint
    assert unparse(parse_formula(canonical)) == canonical


def test_spacing_and_word_forms_mean_and_hash_the_same():
    a = spec_with("mask", "(0<=i-j<16) & (j%4==0)")
    b = spec_with("mask", "i - j >= 0 and i - j < 16 and j % 4 == 0")
    assert a == b and a.content_hash() == b.content_hash()


def test_yaml_formula_item_equals_python_composition():
    yaml_spec = load_spec(HEAD + 'mask:\n  any: [{band: 6}, "j % 16 == 0"]\n')
    python = A.Spec(name="f", query_heads=4, kv_heads=2, head_dim=16, mask=A.band(6) | A.expr("j % 16 == 0"))
    assert yaml_spec == python and yaml_spec.content_hash() == python.content_hash()
    assert load_spec(python.to_dict()) == python


# ---------------------------------------------------------------------------------------------
# Refusals: (id, field, formula, piece, column, phrase)
# ---------------------------------------------------------------------------------------------
BAD = [
    ("precedence-trap", "mask", "abs(i - j) <= 1 & j <= i", "1 & j", 15, "write (abs(i - j) <= 1) & (j <= i)"),
    ("precedence-trap-or", "mask", "j <= i | j < 4", "i | j", 6, "write (j <= i) | (j < 4)"),
    ("int-and", "mask", "(i & j) == 0", "i", 2, "combine booleans"),
    ("bool-as-number", "mask", "(j <= i) + 1 > 0", "j <= i", 2, "boolean is used as a number"),
    ("bool-times", "score", "s * (i > j)", "i > j", 6, "boolean is used as a number"),
    ("bool-ordered", "mask", "(j <= i) < (i < 3)", "j <= i", 2, "booleans compare only"),
    ("mask-not-bool", "mask", "i - j", "i - j", 1, "must give a boolean"),
    ("score-is-bool", "score", "s > 0", "s > 0", 1, "must give a number"),
    ("unknown-name", "mask", "x < i", "x", 1, "unknown name 'x'"),
    ("unknown-function", "mask", "floor(i) < j", "floor", 1, "unknown function 'floor'"),
    ("s-in-mask", "mask", "s > 0", "s", 1, "only allowed in score"),
    ("tanh-in-mask", "mask", "tanh(i) > 0", "tanh(i)", 1, "only allowed in score"),
    ("wrong-rank-low", "mask", "j < rel[h]", "rel[h]", 5, "rank 2, indexed with 1 index"),
    ("wrong-rank-high", "mask", "j < prefix[b, h]", "prefix[b, h]", 5, "rank 1, indexed with 2"),
    ("input-unindexed", "mask", "j < prefix", "prefix", 5, "read it as prefix["),
    ("index-not-input", "mask", "j < i[0]", "i[0]", 5, "not a declared input"),
    ("float-index", "score", "s + rel[h, i / 2]", "i / 2", 12, "index must be an integer"),
    ("floordiv-float", "mask", "i // 2.5 == j", "2.5", 6, "takes integers"),
    ("mod-float", "score", "s % 2", "s", 1, "takes integers"),
    ("zero-division", "mask", "i // 0 == j", "i // 0", 1, "division by zero"),
    ("not-on-int", "mask", "~i == j", "i", 2, "needs a boolean"),
    ("where-mixed", "mask", "where(j < i, True, 1)", "where(j < i, True, 1)", 1, "both be booleans or both numbers"),
    ("where-cond-int", "score", "where(i, s, 0)", "i", 7, "needs a boolean"),
    ("min-arity", "mask", "min(i, j, 3) > 0", "min(i, j, 3)", 1, "takes 2 arguments"),
    ("keyword-arg", "mask", "max(i, j=1) > 0", "max(i, j=1)", 1, "keyword arguments"),
    ("attribute", "mask", "i.real < j", "i.real", 1, "attribute access"),
    ("dunder-import", "mask", "__import__('os').system('x') == 0", "__import__('os').system", 1, "only the formula functions"),
    ("lambda", "mask", "(lambda: 1)() == 1", "lambda: 1", 2, "only the formula functions"),
    ("bare-lambda", "mask", "lambda: j", "lambda: j", 1, "lambdas"),
    ("comprehension", "mask", "[j for j in i] == 0", "[j for j in i]", 1, "comprehensions"),
    ("generator", "mask", "min(j for j in i) > 0", "(j for j in i)", 4, "comprehensions"),
    ("f-string", "mask", "f'{i}' == 1", "f'{i}'", 1, "f-strings"),
    ("starred", "mask", "max(*i) > 0", "*i", 5, "starred"),
    ("walrus", "mask", "(x := i) > j", "x := i", 2, "assignment"),
    ("if-expression", "mask", "j if i else i", "j if i else i", 1, "where(c, a, b)"),
    ("string", "mask", "'a' == i", "'a'", 1, "strings"),
    ("none", "mask", "None == i", "None", 1, "NoneType"),
    ("xor", "mask", "i ^ j == 0", "i ^ j", 1, "operator ^"),
    ("shift", "mask", "i << 1 == j", "i << 1", 1, "operator <<"),
    ("is", "mask", "i is j", "i is j", 1, "is is not in the grammar"),
    ("in", "mask", "i in j", "i in j", 1, "in is not in the grammar"),
    ("slice", "mask", "prefix[0:2] == 0", "0:2", 8, "slices"),
    ("subscript-call", "mask", "abs(i)[0] == 0", "abs(i)[0]", 1, "only a declared input"),
    ("unary-plus", "mask", "+i == j", "+i", 1, "unary +"),
    ("syntax", "mask", "i <= ", "", 6, "not a valid expression"),
    ("empty", "mask", "   ", "", 0, "empty formula"),
    ("non-ascii", "mask", "i ≤ j", "≤", 3, "plain ASCII"),
    ("list", "mask", "[i] == j", "[i]", 1, "lists"),
    ("huge-int", "mask", "i < 99999999999999999999", "99999999999999999999", 5, "below 2**62"),
    ("log-zero", "score", "s + log(0)", "s + log(0)", 1, "undefined"),
]


@pytest.mark.parametrize("field, text, piece, column, phrase", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_formula_is_refused_with_field_piece_and_column(field, text, piece, column, phrase):
    with pytest.raises(SpecError) as info:
        spec_with(field, text)
    err = info.value
    assert err.field == field
    assert phrase in str(err)
    assert text in str(err) or not text.strip()
    if piece:
        assert isinstance(err, FormulaError)
        assert err.piece == piece and err.piece_column == column
        assert f"column {column}" in str(err)


def test_at_least_thirty_distinct_refusals():
    assert len({b[2] for b in BAD}) >= 30


def test_yaml_error_names_the_nested_field_and_line():
    text = HEAD + textwrap.dedent("""\
        mask:
          any:
            - band: 2
            - "abs(i - j) <= 1 & j <= i"
        """)
    with pytest.raises(FormulaError) as info:
        load_spec(text)
    err = info.value
    assert err.field == "mask.any[1]" and err.line == 7
    assert err.piece == "1 & j" and err.piece_column == 15
    assert "(abs(i - j) <= 1) & (j <= i)" in str(err)


def test_python_expr_names_its_field():
    with pytest.raises(FormulaError) as info:
        A.expr("i + j")
    assert info.value.field == "expr" and "must give a boolean" in str(info.value)


@pytest.mark.parametrize("text", [
    "__import__('pathlib').Path({p!r}).touch() == 0",
    "__import__('os').system('touch {p}') == 0",
    "open({p!r}, 'w') == 0",
    "[__import__('os').system('touch {p}') for x in i] == 0",
    "(lambda: __import__('os').system('touch {p}'))() == 0",
    "f\"{{__import__('os').system('touch {p}')}}\" == 0",
    "j < (__import__('os').system('touch {p}'))",
    "i.__class__.__bases__[0].__subclasses__() == 0",
])
def test_code_in_a_formula_is_refused_and_never_runs(text, tmp_path):
    target = tmp_path / "created"
    formula = text.format(p=str(target))
    for build in (lambda: A.expr(formula), lambda: spec_with("mask", formula),
                  lambda: load_spec(HEAD + yaml.safe_dump({"mask": formula}))):
        with pytest.raises(SpecError):
            build()
    assert not target.exists()
