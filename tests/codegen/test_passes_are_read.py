"""Every lowering pass changes something downstream reads: lowering without it changes the
generated source (its IR-hash line aside) or makes generation fail. A pass that only annotates
the IR is documentation in the wrong place (STYLE.md, lesson 16)."""
import pytest

import attngen as A
from attngen.analysis.lowering import FORWARD_PASSES
from attngen.analysis.lowering_backward import BACKWARD_PASSES
from attngen.analysis.lowering_decode import DECODE_PASSES
from attngen.analysis.lowering_linear import LINEAR_PASSES
from attngen.codegen.plan import forward_values
from attngen.codegen.plan_backward import backward_values
from attngen.codegen.plan_decode import decode_values
from attngen.codegen.plan_linear import linear_values
from attngen.codegen.render import render
from attngen.ir import decode as ir_decode, linear as ir_linear, softmax as ir_softmax, softmax_backward
from attngen.ir.passes import run_passes

SOFTMAX_SPECS = [
    A.Spec(name="plain", query_heads=2, kv_heads=1, head_dim=16),
    A.Spec(name="window", query_heads=2, kv_heads=1, head_dim=16, causal=True, mask=A.band(left=7),
           softcap=20.0, alibi=True),
    A.Spec(name="union", query_heads=2, kv_heads=2, head_dim=16, mask=A.band(3) | A.global_tokens(2)),
]
LINEAR_SPECS = [A.Spec(name=f"lin_{fm}_{causal}", query_heads=2, kv_heads=1, head_dim=16, kind="linear",
                       feature_map=A.FeatureMap(fm), causal=causal)
                for fm in ("elu1", "favor") for causal in (False, True)]


def _softmax(build, values, template):
    def generate(spec, passes):
        return render(template, **values(run_passes(build(spec), passes, check=False), kernel_name="k"))
    return generate


def _linear(kernel):
    build = {"fwd": ir_linear.build_forward, "bwd": ir_linear.build_backward}[kernel]

    def generate(spec, passes):
        return render(f"linear_{kernel}.py.jinja", **linear_values(run_passes(build(spec), passes, check=False)))
    return generate


LOWERINGS = {
    "fwd": (FORWARD_PASSES, _softmax(ir_softmax.build_forward, forward_values, "fwd.py.jinja"), SOFTMAX_SPECS),
    "bwd": (BACKWARD_PASSES, _softmax(softmax_backward.build_backward, backward_values, "bwd.py.jinja"),
            SOFTMAX_SPECS),
    "decode": (DECODE_PASSES, _softmax(ir_decode.build_decode, decode_values, "decode.py.jinja"),
               SOFTMAX_SPECS),
    "linear_fwd": (LINEAR_PASSES, _linear("fwd"), LINEAR_SPECS),
    "linear_bwd": (LINEAR_PASSES, _linear("bwd"), LINEAR_SPECS),
}
CASES = [pytest.param(kind, p, id=f"{kind}-{p.__name__}") for kind, (passes, _, _) in LOWERINGS.items()
         for p in passes]


def _without_hash(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if "IR content hash" not in line)


@pytest.mark.parametrize("kind, dropped", CASES)
def test_dropping_a_pass_changes_what_is_generated(kind, dropped):
    passes, generate, specs = LOWERINGS[kind]
    rest = tuple(p for p in passes if p is not dropped)
    for spec in specs:
        full = _without_hash(generate(spec, passes))
        try:
            partial = _without_hash(generate(spec, rest))
        except Exception:               # generation needs what the pass writes
            return
        if partial != full:
            return
    pytest.fail(f"{kind}: lowering without {dropped.__name__} generates the same kernels for every "
                f"spec tried: nothing reads what it writes")
