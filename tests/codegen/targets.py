"""Which GPU targets a compile-tier case runs on in the default suite.

Every generated kernel is compiled for sm_80 and sm_90 and checked for spills in the slow tier
(ATTNGEN_SLOW=1, which the README runs under Triton 3.6 and the newest Triton). The default suite
(CI: 2 cores, a 15-minute budget) compiles every kernel for sm_90, the target the kernel-speed work
reads, and for sm_80 the kernels of representative specs: closed-form key ranges with GQA (gqa),
block-map lists with random blocks (bigbird), a score formula reading learned inputs
(t5_relative_bias) and the linear kind (linear_elu1). Tile choices are made per target, so the
sm_80 cases of the other specs still run, in the slow tier.
"""
from __future__ import annotations

import pytest

TARGETS = ("sm_80", "sm_90")
SM80_BY_DEFAULT = frozenset({"gqa", "bigbird", "t5_relative_bias", "linear_elu1"})


def target_mark(target: str, name: str | None = None):
    """The marks of a (spec `name`, target) case: none for sm_90 or a representative spec, else slow."""
    return () if target == "sm_90" or name in SM80_BY_DEFAULT else pytest.mark.slow


def spec_targets(specs) -> list:
    """(spec, target) parameters over every spec and both targets, marked as the module says. A spec
    may be a Spec or a pytest.param of one."""
    out = []
    for spec in specs:
        inner = spec.values[0] if hasattr(spec, "values") else spec
        marks = list(getattr(spec, "marks", ()))
        for target in TARGETS:
            extra = target_mark(target, inner.name)
            out.append(pytest.param(inner, target, id=f"{inner.name}-{target}",
                                    marks=marks + ([extra] if extra else [])))
    return out


def targets(name: str | None = None) -> list:
    """The two targets as parameters for a one-spec test (`name`: its spec)."""
    return [pytest.param(t, id=t, marks=target_mark(t, name) or ()) for t in TARGETS]
