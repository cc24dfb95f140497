"""Warm calls do no compile-time work: no sympy, jinja2 or networkx code runs on a forward,
backward or decode call after the first (profiled with sys.setprofile, kernel launches stubbed)."""
import sys

import pytest
import torch

import attngen as A
from attngen.runtime import launcher

SYMBOLIC = ("sympy", "jinja2", "networkx")


def _package_of(frame) -> str | None:
    path = frame.f_code.co_filename.replace("\\", "/")
    for name in SYMBOLIC:
        if f"/{name}/" in path:
            return name
    return None


def symbolic_calls(run) -> list[str]:
    """`function (file:line)` of every Python call into sympy, jinja2 or networkx during `run()`."""
    seen = []

    def profile(frame, event, arg):
        if event == "call" and _package_of(frame):
            seen.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})")
    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return seen


@pytest.fixture
def stubbed_launch(monkeypatch):
    launched = []
    monkeypatch.setattr(launcher, "launch_kernel",
                        lambda kernel, grid, args, num_warps, num_stages: launched.append(kernel))
    return launched


@pytest.mark.parametrize("spec_file", ["mistral_sliding_window", "bigbird", "alibi", "linear_favor", "select/moba",
                                       "select/reformer_lsh"])
def test_warm_forward_backward_and_decode_run_nothing_symbolic(spec_file, stubbed_launch, torch_rng):
    attn = A.compile(f"specs/{spec_file}.yaml")
    spec = attn.spec
    q = torch.randn(2, spec.query_heads, 37, spec.head_dim, requires_grad=True)
    k = torch.randn(2, spec.kv_heads, 300, spec.head_dim, requires_grad=True)   # bigbird: >= 3 key blocks
    v = torch.randn_like(k, requires_grad=True)

    def forward_backward():
        attn(q, k, v).sum().backward()
    calls = [forward_backward]
    if spec.kind == "softmax":
        q1 = torch.randn(2, spec.query_heads, 1, spec.head_dim)
        k_cache = torch.randn(2, spec.kv_heads, 320, spec.head_dim)
        lengths = torch.tensor([320, 250], dtype=torch.int32)
        calls.append(lambda: attn.decode(q1, k_cache, k_cache, cache_seqlens=lengths))
    for call in calls:
        call()                                           # cold: generates, plans, builds tables
        launched = len(stubbed_launch)
        assert symbolic_calls(call) == []
        assert len(stubbed_launch) > launched            # the warm call did reach the launches


def test_the_profiler_sees_symbolic_work():
    import sympy
    assert symbolic_calls(lambda: sympy.Symbol("i") + 1)


def test_new_input_values_build_exact_lists_without_symbolic_work(stubbed_launch, monkeypatch, torch_rng):
    """A mask with scalar reads (prefix[b]) gets exact lists built per call from the values
    (analysis/tiles_params.py): a warm call with values never seen builds new lists, numerically."""
    from attngen.runtime import launch
    builds = []
    build = launch.build_set_lists
    monkeypatch.setattr(launch, "build_set_lists", lambda *a, **kw: builds.append(kw) or build(*a, **kw))
    attn = A.compile("specs/formulas/prefix_lm_per_sequence.yaml")
    spec = attn.spec
    q = torch.randn(3, spec.query_heads, 45, spec.head_dim, requires_grad=True)
    k = torch.randn(3, spec.kv_heads, 61, spec.head_dim, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)

    def call(prefix):
        return lambda: attn(q, k, v, prefix=torch.tensor(prefix, dtype=torch.int32)).sum().backward()
    call([0, 10, 20])()                                  # cold
    before = len(builds)
    assert symbolic_calls(call([5, 33, 60])) == []
    assert len(builds) > before, "new values built new lists (forward, and the backward's transposed ones)"
