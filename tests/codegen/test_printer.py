"""Predicates and bounds printed as Triton code: exact, strict, right for negative positions."""
import pytest
import sympy
import torch

import attngen as A
from attngen.codegen.printer import print_triton
from attngen.errors import CompileError
from attngen.spec.normalize import normalize
from attngen.spec.predicates import i, j

NAMES = dict(query="q_pos", key="k_pos", random_args={(2, 4, 1): ("rt", "rf", "rn")})


def evaluate_printed(code: str, ii, jj):
    """Run printed code on torch tensors, with Triton's semantics for the helpers: Triton's
    ``//`` and ``%`` truncate toward zero, and the printer only emits them on operands that are
    never negative (key positions), where torch's floor semantics agree."""
    def trunc_div(a, b):
        return torch.div(a, b, rounding_mode="trunc")

    env = {
        "q_pos": ii, "k_pos": jj,
        "floor_div": lambda a, b: torch.where(a >= 0, trunc_div(a, b), -trunc_div(b - 1 - a, b)),
        "floor_mod": lambda a, b: torch.where(torch.fmod(a, b) < 0, torch.fmod(a, b) + b, torch.fmod(a, b)),
        "tl": type("tl", (), {"maximum": staticmethod(torch.maximum), "minimum": staticmethod(torch.minimum)}),
    }
    return eval(code, env)


@pytest.mark.parametrize("pred", [
    A.causal() & (A.band(left=5) | A.stride(5)),
    A.causal() & (A.blocks(4) | A.columns(4, 1)),
    A.band(2) | A.global_tokens(2),
    A.band(left=1, right=3) | A.global_tokens(tokens=[3, 7]),
    ~A.band(2),
    A.blocks(3) & A.band(left=1),
], ids=lambda p: repr(p.to_dict())[:40])
def test_printed_predicate_matches_meaning_including_negative_positions(pred):
    p = normalize(pred)
    code = print_triton(p.expr(), **NAMES)
    ii = torch.arange(-9, 12)[:, None]
    jj = torch.arange(0, 20)[None, :]
    spec = A.Spec(name="t", query_heads=1, kv_heads=1, head_dim=16, mask=p)
    ctx = spec.eval_context(21, 20, -9)
    want = p.evaluate(ii, jj, ctx)
    got = evaluate_printed(code, ii, jj)
    assert torch.equal(got.expand_as(want), want), code


def test_random_and_segments_print_as_table_lookups():
    code = print_triton(normalize(A.random(2, 4, 1) & A.segments()).expr(), **NAMES)
    assert "random_hit(floor_div(q_pos, 4), (k_pos // 4), rt, rf, rn, 2)" in code
    assert "seg_q_rows == seg_k_cols" in code
    negated = print_triton(normalize(~A.random(2, 4, 1)).expr(), **NAMES)
    assert negated == "(random_hit(floor_div(q_pos, 4), (k_pos // 4), rt, rf, rn, 2) == 0)"


def test_printer_is_strict():
    with pytest.raises(CompileError):
        print_triton(sympy.sin(i) > 0, query="q_pos", key="k_pos")
    with pytest.raises(CompileError):
        print_triton(sympy.atan(i) > j, query="q_pos", key="k_pos")
    with pytest.raises(CompileError, match="no Triton name"):
        print_triton(j > 0, query="q_pos")
    with pytest.raises(CompileError, match="no table"):
        print_triton(normalize(A.random(3, 8, 0)).expr(), query="q_pos", key="k_pos")


def test_float_nodes_of_formulas():
    """Formulas' float arithmetic: constants, powers, abs, where, inf and the score functions, with
    integers converted before a float function; the score's symbols print as the caller names them."""
    from attngen.spec.formula_types import SYMBOLS
    spec = A.Spec(name="f", query_heads=2, kv_heads=1, head_dim=8,
                  score="where(hk == 0, s, -inf) + sqrt(abs(i - j) * 1.0) / 3 + (i - j) ** 2 * 0.5"
                        " - exp(s) ** -1 + log(i * i + 1) + tanh(s) * sigmoid(h * 1.0)")
    code = print_triton(spec.score.sympy_form, query="q_pos", key="k_pos",
                        symbols={SYMBOLS["s"]: "score", SYMBOLS["h"]: "query_head", SYMBOLS["hk"]: "kv_head"})
    for piece in ('tl.where((kv_head == 0), score, float("-inf"))', "tl.sqrt((tl.abs(q_pos - k_pos)).to(tl.float32))",
                  "0.5*((q_pos - k_pos) * (q_pos - k_pos))", "- tl.exp(-score)",
                  "tl.log((((q_pos) * (q_pos)) + 1).to(tl.float32))", "tl.sigmoid(1.0*query_head)*tanh(score)"):
        assert piece in code, (piece, code)
    with pytest.raises(CompileError, match="has no Triton name"):
        print_triton(spec.score.sympy_form, query="q_pos", key="k_pos")
