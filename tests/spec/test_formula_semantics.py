"""What a formula means: Python's semantics (floor `//` and `%`, chains, precedence), checked on
grids of positions against a Python lambda written beside each formula, through the sympy form that
kernels print; traced FlexAttention-style functions give the same formula and the same spec hash."""
from __future__ import annotations

import itertools

import pytest
import sympy
import torch

import attngen as A
from attngen.spec.formula_types import b as B_SYM, h as H_SYM
from attngen.spec.predicates import EvalContext, i as I_SYM, j as J_SYM

POSITIONS = range(-9, 10)        # negative query positions occur (Nq > Nk)
KEYS = range(0, 19)

# (formula, the same meaning as a Python function of scalar ints)
MASKS = [
    ("(i - j) // 3 == 0", lambda i, j: (i - j) // 3 == 0),
    ("(i - j) // -3 == 1", lambda i, j: (i - j) // -3 == 1),
    ("(i - j) % 4 == 1", lambda i, j: (i - j) % 4 == 1),
    ("(i - j) % -4 == -1", lambda i, j: (i - j) % -4 == -1),
    ("i % 5 >= j % 3", lambda i, j: i % 5 >= j % 3),
    ("-(i // 2) == j // -2", lambda i, j: -(i // 2) == j // -2),
    ("0 <= i - j < 4", lambda i, j: 0 <= i - j < 4),
    ("i - 3 <= j <= i + 1 != 5", lambda i, j: i - 3 <= j <= i + 1 != 5),
    ("abs(i - j) <= 2 or j % 7 == 0", lambda i, j: abs(i - j) <= 2 or j % 7 == 0),
    ("not (j > i) and not j == 3", lambda i, j: not (j > i) and not j == 3),
    ("~(j > i) & (j != 3)", lambda i, j: (not j > i) and j != 3),
    ("min(i, j) * 2 > max(i - 4, j // 2)", lambda i, j: min(i, j) * 2 > max(i - 4, j // 2)),
    ("where(i > 0, j <= i, j < 2)", lambda i, j: (j <= i) if i > 0 else (j < 2)),
    ("where(i > j, i - j, j - i) <= 3", lambda i, j: (i - j if i > j else j - i) <= 3),
    ("i / 2 > j - 3", lambda i, j: i / 2 > j - 3),
    ("(i - j) ** 2 <= 9.0", lambda i, j: (i - j) ** 2 <= 9.0),
    ("(i + 1) // 2 * 2 == j", lambda i, j: (i + 1) // 2 * 2 == j),
    ("i * 3 - 2 * j > -5", lambda i, j: i * 3 - 2 * j > -5),
    ("(j <= i) == (j % 2 == 0)", lambda i, j: (j <= i) == (j % 2 == 0)),
    ("(j <= i) != (i < 0)", lambda i, j: (j <= i) != (i < 0)),
    ("j < inf and i > -inf", lambda i, j: True),
    ("i - 2 * (i // 2) == i % 2", lambda i, j: True),
]


def grid():
    ii = torch.tensor(list(POSITIONS)).unsqueeze(-1)
    jj = torch.tensor(list(KEYS)).unsqueeze(0)
    return ii, jj


@pytest.mark.parametrize("text, python", MASKS, ids=[m[0] for m in MASKS])
def test_mask_means_what_python_means(text, python):
    formula = A.expr(text)
    ii, jj = grid()
    got = formula.evaluate(ii, jj, EvalContext(nq=len(POSITIONS), nk=len(KEYS), q_offset=0))
    want = torch.tensor([[bool(python(i, j)) for j in KEYS] for i in POSITIONS])
    assert torch.equal(got, want)
    # The sympy form itself (what kernels print), substituted exactly at every point.
    expr = formula.expr()
    for i, j in itertools.product(POSITIONS, KEYS):
        assert bool(expr.subs({I_SYM: i, J_SYM: j})) == bool(python(i, j)), (i, j)
    # The canonical text means the same.
    again = A.expr(formula.text)
    assert again == formula and torch.equal(again.evaluate(ii, jj, EvalContext(0, 0, 0)), want)


def test_floor_division_and_modulo_are_sympy_floor_and_mod():
    expr = A.expr("(i - j) // 4 == (i - j) % 3").expr()
    assert expr.atoms(sympy.floor) and expr.atoms(sympy.Mod)


def test_printer_prints_integer_formulas_and_refuses_the_rest_clearly():
    from attngen.codegen.printer import print_triton
    from attngen.errors import CompileError

    code = print_triton(A.expr("(i - j) // 3 == 0 and j % 16 < 4").expr(), query="q_pos", key="k_pos")
    assert "floor_div(" in code and "(k_pos % 16)" in code           # i - j may be negative; j is not
    # Float arithmetic, abs and where print (as float constants, tl.abs, tl.where) ...
    code = print_triton(A.expr("abs(i - j) <= 2 and i / 2 > j and where(i > j, i, j) > 2").expr(),
                        query="q_pos", key="k_pos")
    assert "tl.abs(q_pos - k_pos)" in code and "(0.5)*q_pos > k_pos" in code and "tl.where((q_pos > k_pos), q_pos, k_pos)" in code
    # ... names without a Triton name here and non-constant moduli do not.
    for text in ("j < h", "(i - j) % b == 0"):
        with pytest.raises(CompileError, match="has no Triton name|modulus"):
            print_triton(A.expr(text).expr(), query="q_pos", key="k_pos")


def test_heads_batch_and_inputs_per_pair():
    spec = A.Spec(name="p", query_heads=4, kv_heads=2, head_dim=8,
                  inputs={"prefix": {"shape": ["B"], "dtype": "int32"},
                          "window": {"shape": ["Hq"], "dtype": "int64"},
                          "keep": {"shape": ["Nk"], "dtype": "bool"}},
                  mask="(j <= i and i - j < window[h] or j < prefix[b]) and keep[j] and hk == h // 2")
    prefix = torch.tensor([2, 5], dtype=torch.int32)
    window = torch.tensor([1, 2, 3, 100])
    keep = torch.tensor([True] * 6 + [False] + [True] * 3)
    mask = spec.dense_mask(7, 10, batch=2, inputs={"prefix": prefix, "window": window, "keep": keep})
    assert mask.shape == (2, 4, 7, 10)
    for bb, hh, row, j in itertools.product(range(2), range(4), range(7), range(10)):
        i = row + 3
        want = ((j <= i and i - j < int(window[hh])) or j < int(prefix[bb])) and bool(keep[j])
        assert bool(mask[bb, hh, row, j]) == want


def test_out_of_range_reads_are_zero():
    spec = A.Spec(name="t", query_heads=2, kv_heads=2, head_dim=8,
                  inputs={"table": {"shape": [4], "dtype": "int32"}, "on": {"shape": [3], "dtype": "bool"}},
                  mask="table[i - j] == 0 or on[j - 5]")
    table = torch.tensor([1, 1, 1, 1], dtype=torch.int32)
    on = torch.tensor([True, True, True])
    mask = spec.dense_mask(6, 10, q_offset=0, inputs={"table": table, "on": on})
    for i, j in itertools.product(range(6), range(10)):
        inside = 0 <= i - j < 4
        assert bool(mask[0, 0, i, j]) == (not inside or 5 <= j < 8), (i, j)


# ---------------------------------------------------------------------------------------------
# Tracing
# ---------------------------------------------------------------------------------------------
def _specs(mask=None, score=None, **kw):
    return A.Spec(name="t", query_heads=4, kv_heads=2, head_dim=8, mask=mask, score=score, **kw)


TRACED_MASKS = [
    (lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, "i >= j"),
    (lambda b, h, i, j: (0 <= i - j) & (i - j < 128), "0 <= i - j < 128"),
    (lambda b, h, i, j: (j <= i) | (j % 16 == 0), "j <= i or j % 16 == 0"),
    (lambda b, h, i, j: ~(j > i) & (torch.abs(i - j) <= 4), "not j > i and abs(i - j) <= 4"),
    (lambda b, h, i, j: (i // 64 == j // 64) & (2 - j < i), "i // 64 == j // 64 and 2 - j < i"),
    (lambda b, h, i, j: torch.where(h % 2 == 0, j <= i, j >= i), "where(h % 2 == 0, j <= i, j >= i)"),
    (lambda b, h, i, j, prefix: (j <= i) | (j < prefix[b]), "j <= i or j < prefix[b]"),
    (lambda b, h, i, j, doc: (doc[b, i] == doc[b, j]) & (j <= i), "doc[b, i] == doc[b, j] and j <= i"),
]
INPUTS = {"prefix": {"shape": ["B"], "dtype": "int32"}, "doc": {"shape": ["B", "Nk"], "dtype": "int64"},
          "rel": {"shape": ["Hq", 65], "dtype": "float32", "grad": True},
          "cap": {"shape": ["Hq"], "dtype": "float32"}}


@pytest.mark.parametrize("fn, text", TRACED_MASKS, ids=[t for _, t in TRACED_MASKS])
def test_traced_mask_equals_the_string(fn, text):
    traced, written = _specs(A.mask_mod(fn), inputs=INPUTS), _specs(text, inputs=INPUTS)
    assert traced == written and traced.content_hash() == written.content_hash()
    assert traced.effective_mask.text == written.effective_mask.text


TRACED_SCORES = [
    (lambda s, b, h, i, j: 30.0 * torch.tanh(s / 30.0), "30.0 * tanh(s / 30.0)"),
    (lambda s, b, h, i, j, rel: s + rel[h, torch.clamp(i - j, -32, 32) + 32],
     "s + rel[h, min(max(i - j, -32), 32) + 32]"),
    (lambda s, b, h, i, j, rel: s + rel[h, torch.minimum(torch.maximum(i - j, torch.tensor(-32)), torch.tensor(32)) + 32],
     "s + rel[h, min(max(i - j, -32), 32) + 32]"),
    (lambda s, b, h, i, j, cap: cap[h] * torch.tanh(s / cap[h]), "cap[h] * tanh(s / cap[h])"),
    (lambda s, b, h, i, j: torch.where(abs(i - j) <= 8, s, -float("inf")), "where(abs(i - j) <= 8, s, -inf)"),
    (lambda s, b, h, i, j: s - 0.5 * torch.abs(i - j), "s - 0.5 * abs(i - j)"),
    (lambda s, b, h, i, j: s + torch.exp(-(i - j) ** 2 / 2.0), "s + exp(-(i - j) ** 2 / 2.0)"),
]


@pytest.mark.parametrize("fn, text", TRACED_SCORES, ids=[t for _, t in TRACED_SCORES])
def test_traced_score_equals_the_string(fn, text):
    traced, written = _specs(score=A.score_mod(fn), inputs=INPUTS), _specs(score=text, inputs=INPUTS)
    assert traced == written and traced.content_hash() == written.content_hash()


@pytest.mark.parametrize("fn, phrase", [
    (lambda b, h, i, j: 0 <= i - j < 4, "no truth value"),
    (lambda b, h, i, j: (j <= i) and (j > 0), "no truth value"),
    (lambda b, h, i, j: min(i, j) > 0, "no truth value"),
    (lambda b, h, i, j: torch.sin(i) > 0, "cannot be traced"),
    (lambda b, h, i, j: i[0] > 0, "only an input can be indexed"),
    (lambda b, h, i, j: torch.ones(3)[i] > 0, "is not a Python integer|cannot"),
])
def test_untraceable_functions_say_what_to_write(fn, phrase):
    with pytest.raises((TypeError, IndexError), match=phrase):
        A.mask_mod(fn)


def test_traced_formula_is_type_checked_like_text():
    with pytest.raises(A.SpecError, match="must give a boolean"):
        A.mask_mod(lambda b, h, i, j: i - j)
    with pytest.raises(A.SpecError, match="boolean is used as a number"):
        _specs(score=A.score_mod(lambda s, b, h, i, j: s * (i > j)))


def test_sympy_symbols_of_batch_and_heads():
    expr = A.expr("h % 2 == 0 and b < 3 and j <= i").expr()
    assert {H_SYM, B_SYM, I_SYM, J_SYM} == expr.free_symbols
