"""Generated forward kernels under Triton's interpreter against the float64 reference.

Every case draws fresh random inputs at odd sizes; outputs start as NaN (the launcher poisons them
under the interpreter), so an element the kernel forgot to write fails.
"""
from dataclasses import astuple, replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import attngen as A
from attngen.analysis.blockmap import block_map
from attngen.analysis.configs import INTERPRETER_CONFIG, TileConfig
from attngen.checking import TOLERANCE, check_close
from attngen.errors import ShapeError

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def small(name, *, hq=4, hkv=2, d=32, **kw):
    return A.Spec(name=name, query_heads=hq, kv_heads=hkv, head_dim=d, **kw)


# Every predicate and combinator of SPEC.md, at widths that make tiles full, partial and empty.
SPECS = [
    small("dense"),
    small("causal_mqa", hq=4, hkv=1, causal=True),
    small("sliding_window", causal=True, mask=A.band(left=20)),
    small("band_asym", mask=A.band(left=5, right=9)),
    small("block_local", mask=A.blocks(24)),
    small("block_causal", causal=True, mask=A.blocks(40)),
    small("longformer", mask=A.band(8) | A.global_tokens(3)),
    small("global_list", causal=True, mask=A.band(left=4) | A.global_tokens(tokens=[5, 70, 71])),
    small("bigbird", mask=A.band(6) | A.global_tokens(2) | A.random(2, 16, seed=3)),
    small("strided", causal=True, mask=A.band(left=12) | A.stride(12)),
    small("fixed", causal=True, mask=A.blocks(16) | A.columns(16, 4)),
    small("negated", causal=True, mask=~A.band(left=4, right=0)),
    small("packed_docs", causal=True, mask=A.segments()),
    small("softcap", causal=True, softcap=5.0),
    small("alibi", hq=6, hkv=3, causal=True, alibi=True),
    small("everything_mods", mask=A.band(30) | A.global_tokens(1), softcap=8.0, alibi=True, scale=0.3),
]
SHAPES = [(77, 190, None), (100, 60, None), (64, 96, 5), (33, 33, -7)]


def inputs(spec, nq, nk, dtype, *, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, spec.query_heads, nq, spec.head_dim, generator=g).to(dtype)
    k = torch.randn(batch, spec.kv_heads, nk, spec.head_dim, generator=g).to(dtype)
    v = torch.randn(batch, spec.kv_heads, nk, spec.head_dim, generator=g).to(dtype)
    return q, k, v


def segments_for(spec, nq, nk, batch=2, seed=0):
    if not spec.uses_segments:
        return {}
    g = torch.Generator().manual_seed(seed)
    # Packed documents: sorted ids; the query rows are the last nq tokens of the key sequence.
    seg_k = torch.sort(torch.randint(0, 4, (batch, nk), generator=g), dim=1).values
    seg_q = seg_k[:, nk - nq:] if nq <= nk else torch.randint(0, 4, (batch, nq), generator=g)
    return {"seg_q": seg_q, "seg_k": seg_k}


def check_forward(spec, nq, nk, dtype, q_offset=None, *, batch=2, layout=None, config=None):
    q, k, v = inputs(spec, nq, nk, dtype, batch=batch)
    if layout == "bnhd":   # transposed views of (B, N, H, D) tensors: no copy, any strides
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
        assert not q.is_contiguous()
    segs = segments_for(spec, nq, nk, batch)
    launcher = A.compile(spec).launcher()
    out, lse = launcher.forward(q, k, v, q_offset=q_offset, config=config, **segs)
    want_out, want_lse = A.reference(spec, q, k, v, q_offset=q_offset, **segs)
    assert out.dtype == dtype and lse.dtype == torch.float32
    check_close("out", out, want_out, dtype)
    check_close("lse", lse, want_lse, dtype)
    return out, lse


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"nq{s[0]}-nk{s[1]}-off{s[2]}")
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_predicate_fp32(spec, shape):
    check_forward(spec, *shape[:2], torch.float32, shape[2])


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("spec", [SPECS[2], SPECS[8], SPECS[12], SPECS[15]], ids=lambda s: s.name)
def test_half_precision(spec, dtype):
    check_forward(spec, 77, 190, dtype)


def shrunk(spec):
    """A shipped spec with its mask and head dim but few heads (keeping the group size)."""
    group = min(spec.group, 4)
    return A.Spec(name=spec.name, query_heads=group, kv_heads=1, head_dim=spec.head_dim,
                  mask=spec.effective_mask if not isinstance(spec.effective_mask, A.spec.Everything) else None,
                  softcap=spec.softcap, alibi=spec.alibi, scale=spec.scale)


SHIPPED = [s for s in A.load_specs("specs") if s.kind == "softmax"]


# Every shipped spec at both odd sizes in float32, and in each 16-bit dtype at one of them (sampled:
# the 16-bit paths differ from float32 only in the loads and the dot, checked on every mask above).
SHIPPED_CASES = [(77, 190, torch.float32), (257, 257, torch.float32), (77, 190, torch.float16),
                 (257, 257, torch.bfloat16)]


@pytest.mark.parametrize("nq, nk, dtype", SHIPPED_CASES, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("spec", SHIPPED, ids=lambda s: s.name)
def test_shipped_specs(spec, nq, nk, dtype):
    check_forward(shrunk(spec), nq, nk, dtype, batch=1)


@pytest.mark.parametrize("spec", [SPECS[6], SPECS[9], SPECS[12]], ids=lambda s: s.name)
def test_non_contiguous_bnhd_views(spec):
    check_forward(spec, 45, 70, torch.float16, layout="bnhd")


@pytest.mark.parametrize("head_dim, dtype", [(d, torch.float32) for d in (16, 80, 96, 112, 160, 192, 256)]
                         + [(80, torch.float16), (112, torch.bfloat16), (192, torch.float16)],
                         ids=lambda x: str(x).replace("torch.", ""))
def test_head_dims_are_padded_internally(head_dim, dtype):
    spec = small(f"d{head_dim}", hq=2, hkv=1, d=head_dim, causal=True, mask=A.band(left=9))
    check_forward(spec, 37, 41, dtype, batch=1)


def test_rows_with_no_allowed_key_give_zero_and_minus_inf():
    spec = small("causal", causal=True, mask=A.band(left=3))
    out, lse = check_forward(spec, 50, 20, torch.float16)   # rows 0..29 sit before key 0
    assert torch.all(out[:, :, :30] == 0) and torch.all(lse[:, :, :30] == float("-inf"))
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()


def test_tile_sizes_do_not_change_the_meaning():
    spec = SPECS[8]
    for cfg in (TileConfig(16, 16, 4, 1), TileConfig(16, 64, 4, 1), TileConfig(64, 32, 4, 1)):
        check_forward(spec, 77, 150, torch.float32, config=cfg)


@pytest.mark.parametrize("nq, nk, q_offset", [(150, 211, None), (257, 200, 40)],
                         ids=["150x211", "257x200-off40"])
@pytest.mark.parametrize("spec", SPECS + [shrunk(s) for s in SHIPPED], ids=lambda s: s.name)
def test_tiles_visited_equal_non_empty_tiles(spec, nq, nk, q_offset):
    """Tile efficiency 1.0: the kernel's own count of visited key tiles per query tile equals the
    number of non-empty tiles of the exact block map."""
    batch = 1
    q, k, v = inputs(spec, nq, nk, torch.float32, batch=batch)
    segs = segments_for(spec, nq, nk, batch)
    launcher = A.compile(spec).launcher()
    *_, counts = launcher.forward(q, k, v, q_offset=q_offset, count_tiles=True, **segs)
    cfg = INTERPRETER_CONFIG
    bm = block_map(spec, nq, nk, cfg.block_m, cfg.block_n, q_offset=q_offset, **segs)
    assert bm.unresolved == 0
    non_empty = torch.tensor([len(p) + len(f) for p, f in map(bm.tiles_of, range(bm.geometry.num_q_tiles))])
    visited = counts.view(batch * spec.query_heads, -1)
    assert torch.equal(visited, non_empty.expand_as(visited).to(visited.dtype)), (visited[0], non_empty)


def test_decoding_alignment_and_explicit_offset():
    spec = SPECS[2]
    check_forward(spec, 1, 190, torch.float32)          # one new token against a cache
    check_forward(spec, 5, 190, torch.float32, 100)     # a chunk placed mid-sequence


def test_bad_inputs_are_refused_with_the_tensor_named():
    spec = SPECS[0]
    attn = A.compile(spec)
    q, k, v = inputs(spec, 8, 8, torch.float32)
    with pytest.raises(ShapeError, match="k has dtype"):
        attn(q, k.half(), v)
    with pytest.raises(ShapeError, match="q has dtype torch.float64"):
        A.compile(spec).launcher().forward(q.double(), k.double(), v.double())
    with pytest.raises(ShapeError, match=r"q has shape \(2, 3, 8, 32\)"):
        attn(q[:, :3], k, v)
    with pytest.raises(ShapeError, match="no segments mask"):
        attn(q, k, v, seg_q=torch.zeros(8, dtype=torch.int64), seg_k=torch.zeros(8, dtype=torch.int64))
    with pytest.raises(ShapeError, match="segments"):
        A.compile(SPECS[12])(q, k, v)


def test_empty_key_sequence():
    spec = SPECS[0]
    q, k, v = inputs(spec, 5, 0, torch.float32)
    out, lse = A.compile(spec)(q, k, v, return_lse=True)
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))


LEAVES = st.sampled_from([
    A.band(left=3), A.band(right=5), A.band(2), A.stride(5), A.columns(7, 2), A.global_tokens(2),
    A.global_tokens(tokens=[4, 19]), A.blocks(9), A.random(1, 8, seed=5), A.causal(),
])
TREES = st.recursive(LEAVES, lambda sub: st.one_of(
    st.builds(lambda a, b: a | b, sub, sub), st.builds(lambda a, b: a & b, sub, sub),
    st.builds(lambda a: ~a, sub)), max_leaves=4)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=TREES, nq=st.integers(1, 70), nk=st.integers(1, 70), offset=st.integers(-20, 20))
def test_random_specs(mask, nq, nk, offset):
    try:
        spec = small("random_spec", hq=2, hkv=1, d=16, mask=mask)
    except A.SpecError:      # a tree that allows no pair at all is refused at load
        return
    try:
        spec.eval_context(nq, nk, offset)
    except A.SpecError:      # per_row larger than the key blocks at this size
        return
    check_forward(spec, nq, nk, torch.float32, offset, batch=1)


def test_tolerance_table_is_the_contract():
    assert TOLERANCE[torch.float32] == 1e-4
    assert TOLERANCE[torch.float16] == TOLERANCE[torch.bfloat16] == 1e-2


# -- the autotune hook (ATTNGEN_AUTOTUNE=1 on a GPU), its selection logic with an injected timer ----
def _usage(spills: int):
    from attngen.codegen.aot import ResourceUsage
    return ResourceUsage(registers=128, shared=0, local=spills, stack=0)


def test_fastest_without_spills_never_times_a_spilling_config():
    from attngen.runtime.launch import fastest_without_spills
    a, b, c, d = (TileConfig(m, 16, 4, 1) for m in (128, 64, 32, 16))
    usage = {a: _usage(64), b: _usage(0), c: _usage(0), d: _usage(0)}
    times = {a: 0.1, b: 3.0, c: 1.0, d: 1.0}
    timed = []
    def time_of(cfg):
        timed.append(cfg)
        return times[cfg]
    pick = fastest_without_spills([a, b, c, d], usage.__getitem__, time_of)
    assert pick == c and timed == [b, c, d]        # a spills: never timed; c and d tie: the earlier
    all_spill = {a: _usage(64), b: _usage(8), c: _usage(32), d: _usage(16)}
    timed.clear()
    assert fastest_without_spills([a, b, c, d], all_spill.__getitem__, timed.append) == b and not timed


def test_autotune_times_each_candidate_once_per_shape_class(monkeypatch):
    """The launcher's wiring, on the CPU: a pretend sm_90 device, fake resource usage, and a timer
    that runs the launch it is given (recording the configuration) and returns a time for it."""
    from attngen.analysis.configs import candidate_configs
    from attngen.runtime import launch, launcher as launcher_module

    spec = SPECS[2]
    launcher = launch.SoftmaxLauncher(A.compile(spec).launcher().generated)
    q, k, v = inputs(spec, 100, 300, torch.float16, batch=1)
    candidates = candidate_configs(spec.head_dim, torch.float16, "sm_90")
    spilling, fastest = candidates[0], candidates[2]
    monkeypatch.setattr(launch, "architecture", lambda device: "sm_90")
    monkeypatch.setattr(launcher_module, "resource_usage", lambda compiled: compiled)
    monkeypatch.setattr(launcher_module, "warm_kernel", lambda kernel, grid, args, warps, stages: _usage(
        64 if (args["BLOCK_M"], args["BLOCK_N"], warps, stages) == astuple(spilling)[:4] else 0))
    launched = []
    launcher.forward = lambda *args, config, **kw: launched.append((config, kw["q_offset"]))
    timer_calls = []

    def timer(run):
        run()
        timer_calls.append(launched[-1][0])
        return 1.0 if launched[-1][0] == fastest else 2.0
    launcher.timer = timer

    call = dict(q_offset=200, seg_q=None, seg_k=None)
    monkeypatch.delenv("ATTNGEN_AUTOTUNE", raising=False)
    assert launcher.tuned_config(q, k, v, **call) == candidates[1] and not timer_calls   # first spill-free
    monkeypatch.setenv("ATTNGEN_AUTOTUNE", "1")
    assert launcher.tuned_config(q, k, v, **call) == fastest
    # sm_90 and tensors a descriptor can read: the TMA variants are timed too (runtime/tma.py)
    timed = list(candidates[1:]) + [replace(c, tma=True) for c in candidates[1:]]
    assert timer_calls == timed and {o for _, o in launched} == {200}
    # nq 100 -> 120 and nk 300 -> 500 stay in the buckets 128 and 512: no retuning.
    q2, k2, v2 = inputs(spec, 120, 500, torch.float16, batch=1)
    assert launcher.tuned_config(q2, k2, v2, **call) == fastest and len(timer_calls) == len(timed)
    # Another length bucket, or another dtype, is another shape class.
    q3, k3, v3 = inputs(spec, 300, 500, torch.float16, batch=1)
    launcher.tuned_config(q3, k3, v3, **call)
    assert len(timer_calls) == 2 * len(timed)
    launcher.tuned_config(*(t.to(torch.bfloat16) for t in (q, k, v)), **call)
    assert len(timer_calls) == 3 * len(timed)


def test_length_buckets_are_powers_of_two():
    from attngen.runtime.launch import length_bucket
    assert [length_bucket(n) for n in (0, 1, 2, 3, 64, 65, 1000, 1024)] == [1, 1, 2, 4, 64, 128, 1024, 1024]


def test_gpu_launch_runs_the_kernel_its_configuration_search_compiled(monkeypatch):
    """On a GPU the search compiles each candidate with the call's own arguments (Triton's JIT
    warmup, the launch's specialisation) and the launch then runs the first spill-free one with the
    same arguments: the kernel judged is the kernel launched. Wiring checked on the CPU with a
    pretend sm_90 device and fake compiled kernels."""
    from attngen.analysis.configs import candidate_configs
    from attngen.runtime import launch, launcher as launcher_module

    spec = SPECS[2]
    launcher = launch.SoftmaxLauncher(A.compile(spec).launcher().generated)
    q, k, v = inputs(spec, 100, 300, torch.float16, batch=1)
    candidates = candidate_configs(spec.head_dim, torch.float16, "sm_90")
    monkeypatch.setattr(launch, "architecture", lambda device: "sm_90")
    monkeypatch.setattr(launcher_module, "resource_usage", lambda compiled: compiled)
    warmed, launched = [], []

    def warm(kernel, grid, args, warps, stages):
        warmed.append((kernel, grid, dict(args), warps, stages))
        return _usage(64 if len(warmed) == 1 else 0)            # the first candidate spills
    monkeypatch.setattr(launcher_module, "warm_kernel", warm)
    monkeypatch.setattr(launcher_module, "launch_kernel",
                        lambda kernel, grid, args, warps, stages: launched.append((kernel, grid, dict(args), warps, stages)))
    monkeypatch.delenv("ATTNGEN_AUTOTUNE", raising=False)
    launcher.forward(q, k, v, q_offset=200)
    assert [(w[2]["BLOCK_M"], w[2]["BLOCK_N"], w[3], w[4]) for w in warmed] == [astuple(c)[:4] for c in candidates[:2]]
    (kernel, grid, args, warps, stages), = launched
    chosen = warmed[1]
    assert kernel is chosen[0] and grid == chosen[1] and (warps, stages) == chosen[3:]
    same = {name: value for name, value in args.items() if not isinstance(value, torch.Tensor) or name in "qkv"}
    assert same == {name: chosen[2][name] for name in same} and args["q_offset"] == 200
    assert set(args) == set(launcher.signatures["fwd"].names)
    launcher.forward(q, k, v, q_offset=200)                         # decided: nothing compiles again
    assert len(warmed) == 2 and len(launched) == 2


@pytest.mark.parametrize("kind", ["bwd", "decode"])
def test_gpu_backward_and_decode_launch_what_their_search_compiled(kind, monkeypatch):
    """As for the forward: per kernel that has tile candidates, the search compiles with the
    call's own arguments and the launch runs the first spill-free candidate with those arguments
    (pretend sm_90 device, fake compiled kernels; the first candidate of each kernel spills)."""
    from attngen.runtime import decode, launch_backward, launcher as launcher_module

    spec = SPECS[2]
    attn = A.compile(spec)
    monkeypatch.setattr(launch_backward if kind == "bwd" else decode, "architecture", lambda device: "sm_90")
    monkeypatch.setattr(launcher_module, "resource_usage", lambda compiled: compiled)
    warmed, launched = [], []

    def warm(kernel, grid, args, warps, stages):
        first = not any(w[0] is kernel for w in warmed)
        warmed.append((kernel, grid, dict(args), warps, stages))
        return _usage(64 if first else 0)
    monkeypatch.setattr(launcher_module, "warm_kernel", warm)
    monkeypatch.setattr(launcher_module, "launch_kernel",
                        lambda kernel, grid, args, warps, stages: launched.append((kernel, grid, dict(args), warps, stages)))
    if kind == "bwd":
        q, k, v = inputs(spec, 100, 300, torch.float16, batch=1)
        attn.launcher("bwd").backward(q, k, v, q, torch.zeros(q.shape[:3]), torch.ones_like(q))
        searched = ("dkdv", "dq")
    else:
        q = torch.randn(2, spec.query_heads, 1, spec.head_dim, dtype=torch.float16)
        cache = torch.randn(2, spec.kv_heads, 300, spec.head_dim, dtype=torch.float16)
        attn.launcher("decode").decode(q, cache, cache, cache_seqlens=torch.tensor([300, 17], dtype=torch.int32))
        searched = ("decode",)
    names = attn.launcher(kind).signatures
    for role in searched:
        kernel = attn.launcher(kind).jit_function(role)
        tries = [w for w in warmed if w[0] is kernel]
        runs = [r for r in launched if r[0] is kernel]
        assert len(tries) == 2 and len(runs) == 1, role          # the first spilled, the second is used
        (_, grid, args, warps, stages), chosen = runs[0], tries[1]
        assert (grid, warps, stages) == (chosen[1], chosen[3], chosen[4])
        plain = [n for n in names[role].names if not isinstance(args[n], torch.Tensor)]
        assert {n: args[n] for n in plain} == {n: chosen[2][n] for n in plain}
        assert set(args) == set(names[role].names)


@pytest.mark.parametrize("spec, shape", [(SPECS[0], (50, 33, None)), (SPECS[2], (77, 190, None)),
                                         (SPECS[6], (64, 96, 5))], ids=lambda x: getattr(x, "name", str(x)))
def test_tma_path_matches_the_reference(spec, shape):
    """The opt-in TMA path (tensor descriptors; rows past nk and padded head-dim columns read 0)
    at odd sizes, interval and block-map iteration, under the interpreter."""
    nq, nk, q_offset = shape
    check_forward(spec, nq, nk, torch.float16, q_offset, config=TileConfig(32, 32, 4, 1, tma=True))


def test_tma_refusal_names_the_reason(caplog):
    from attngen.runtime.tma import tma_refusal

    k = torch.zeros(2, 2, 40, 32, dtype=torch.float16)
    assert tma_refusal("sm_90", ("k", k)) is None and tma_refusal(None, ("k", k)) is None
    assert "sm_90 and later" in tma_refusal("sm_80", ("k", k))
    assert "head-dim stride 2" in tma_refusal("sm_90", ("k", k[..., ::2]))
    odd = torch.zeros(2, 2, 40, 20, dtype=torch.float16)                  # rows of 40 bytes
    assert "v's sequence stride is 40 bytes" in tma_refusal("sm_90", ("k", k), ("v", odd))
    # Asked for anyway, the forward takes the pointer path, says why, and is right.
    spec = small("dense_d20", d=20)
    with caplog.at_level("WARNING", logger="attngen"):
        check_forward(spec, 50, 33, torch.float16, config=TileConfig(32, 32, 4, 1, tma=True))
    assert "on the pointer path: k's head stride is 1320 bytes" in caplog.text


def test_tma_configurations_are_opt_in_and_timed_when_autotuning(monkeypatch):
    from attngen.runtime.tma import with_tma

    pointer = [TileConfig(128, 64, 8, 3), TileConfig(64, 64, 4, 2)]
    monkeypatch.delenv("ATTNGEN_TMA", raising=False)
    assert with_tma(pointer, None, autotune=False) == pointer                # default: pointers
    timed = with_tma(pointer, None, autotune=True)                            # timing decides
    assert timed[:2] == pointer and [c.tma for c in timed[2:]] == [True, True]
    monkeypatch.setenv("ATTNGEN_TMA", "1")
    assert [c.tma for c in with_tma(pointer, None, autotune=False)] == [True, True, False, False]
    assert with_tma(pointer, "k has head-dim stride 2", autotune=True) == pointer
