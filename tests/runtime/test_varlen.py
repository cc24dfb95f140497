"""`attn.varlen` (SPEC.md "Variable-length batches") under Triton's interpreter, against per-sequence
calls of the float64 reference: out, lse, dq, dk, dv (and the sink's gradient) for every mask
kind the varlen kernels run, lengths 0, 1, odd and very unequal, len_q != len_k, GQA/MQA, fp32 and
bf16, non-contiguous views; the work tables; bad input refused naming the tensor; refusals;
torch.compile(fullgraph=True) of a function calling it.

Outputs are poisoned with NaN before every launch under the interpreter, so an element no program
writes fails the check.
"""
from __future__ import annotations

import pytest
import torch

import attngen as A
from attngen.analysis.configs import TileConfig
from attngen.analysis.lowering_backward import BackwardConfig
from attngen.checking import GRAD_TOLERANCE, TOLERANCE, check_close
from attngen.errors import CompileError, ShapeError
from attngen.reference import _softmax_reference
from attngen.runtime import varlen_tables
from attngen.runtime.varlen_tables import VarlenLayout, work_tables

TILES = TileConfig(16, 16, 4, 1)
# Key-major and query-major tiles that differ: two block maps per length pair, three work tables.
BWD_TILES = BackwardConfig(TileConfig(16, 32, 4, 1), TileConfig(32, 16, 4, 1))

# (len_q per sequence, len_k per sequence): 0, 1, odd, very unequal; len_q != len_k both ways.
UNEQUAL = ([1, 0, 19, 70, 5], [1, 3, 19, 77, 0])
SAME = ([7, 40, 0, 33], [7, 40, 0, 33])


def spec_of(name, *, hq=2, hkv=1, d=16, **kw):
    return A.Spec(name=f"varlen_{name}", query_heads=hq, kv_heads=hkv, head_dim=d, **kw)


SPECS = {
    "causal": spec_of("causal", causal=True),
    "window": spec_of("window", causal=True, mask=A.band(left=20)),                 # sliding window
    "band_dense": spec_of("band_dense", hq=3, hkv=1, mask=A.band(left=9, right=4)),  # MQA, no causal
    "stride": spec_of("stride", causal=True, mask=A.band(left=8) | A.stride(8)),      # block-map lists
    "global_blocks": spec_of("global_blocks", hq=2, hkv=2, mask=A.blocks(24) | A.global_tokens(first=2)),
    "columns": spec_of("columns", causal=True, mask=A.columns(16, 3) | A.band(left=5)),
    "softcap_alibi": spec_of("softcap_alibi", causal=True, softcap=5.0, alibi=True),
    "dense": spec_of("dense", hq=2, hkv=2),
    "sink": spec_of("sink", causal=True, mask=A.band(left=20), sink=True),
    # drawn per sequence from its own lengths (one key block of 16 per query block, and the diagonal)
    "random": spec_of("random", mask=A.random(1, 16, 7) | A.band(left=3, right=3)),
}


def packed(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def make(spec, len_q, len_k, dtype, *, seed=0, strided=False):
    """q, k, v, dout packed; `strided`: non-contiguous (heads-major storage, transposed views)."""
    g = torch.Generator().manual_seed(seed)

    def t(n, heads, d):
        if strided:
            return torch.randn(heads, n, d, generator=g).to(dtype).transpose(0, 1)
        return torch.randn(n, heads, d, generator=g).to(dtype)
    q = t(sum(len_q), spec.query_heads, spec.head_dim)
    k = t(sum(len_k), spec.kv_heads, spec.head_dim)
    v = t(sum(len_k), spec.kv_heads, spec.v_head_dim)
    dout = t(sum(len_q), spec.query_heads, spec.v_head_dim)
    inputs = {"sink": torch.randn(spec.query_heads, generator=g) * 2.0} if spec.sink else {}
    sizes = {"B": len(len_q), "Hq": spec.query_heads, "Hkv": spec.kv_heads}
    for d in spec.inputs:           # formula inputs: B counts sequences; ints up to 30, floats small
        shape = [sizes.get(n, n) for n in d.shape]
        inputs[d.name] = (torch.randint(0, 30, shape, generator=g, dtype=getattr(torch, d.dtype))
                          if d.dtype.startswith("int") else torch.rand(*shape, generator=g) * 0.2)
    return q, k, v, dout, inputs


def batch_row(x: torch.Tensor, b: int) -> torch.Tensor:
    """A packed sequence (n, H, D) as batch row `b` of a (b + 1)-row batch (the rows before it are
    copies that take no gradient): the reference then sees `b` as the sequence's index."""
    row = x.transpose(0, 1)[None]
    return torch.cat([row.detach().expand(b, *row.shape[1:]), row]) if b else row


def reference_packed(spec, q, k, v, dout, len_q, len_k, inputs):
    batched = {d.name for d in spec.inputs if d.shape and d.shape[0] == "B"}

    def per_row(given, s):          # sequence s sits at batch row s: B-axis inputs up to it
        return {n: t[:s + 1] if n in batched else t for n, t in given.items()}

    """Per-sequence float64 reference (autograd for the gradients), packed like the kernels'."""
    cu_q, cu_k = packed(len_q).tolist(), packed(len_k).tolist()
    leaves = [t.detach().to(torch.float64).requires_grad_(True) for t in (q, k, v)]
    learned = {d.name for d in spec.all_inputs if d.grad}
    given = {n: t.detach().to(torch.float64).requires_grad_(True) if n in learned else t for n, t in inputs.items()}
    outs, lses = [], []
    for s in range(len(len_q)):
        rows, keys = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        if spec is SPECS["random"] and 0 in (len_q[s], len_k[s]):
            # (the reference refuses to draw key blocks among none; no pair: out 0, lse -inf)
            outs.append(torch.zeros(len_q[s], spec.query_heads, spec.v_head_dim, dtype=torch.float64))
            lses.append(torch.full((spec.query_heads, len_q[s]), float("-inf"), dtype=torch.float64))
            continue
        qs, ks, vs = (batch_row(leaves[0][rows], s), batch_row(leaves[1][keys], s), batch_row(leaves[2][keys], s))
        out, lse = _softmax_reference(spec, qs, ks.repeat_interleave(spec.group, 1),
                                      vs.repeat_interleave(spec.group, 1), None, None, None, per_row(given, s))
        outs.append(out[s].transpose(0, 1))
        lses.append(lse[s])
    if not outs:
        return (q.new_zeros((0, spec.query_heads, spec.v_head_dim), dtype=torch.float64),
                q.new_zeros((spec.query_heads, 0), dtype=torch.float64), [torch.zeros_like(x) for x in leaves])
    out, lse = torch.cat(outs), torch.cat(lses, dim=1)
    wrt = [*leaves, *(t for n, t in given.items() if n in learned)]
    grads = torch.autograd.grad(out, wrt, dout.to(torch.float64), allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wrt)]
    return out.detach(), lse.detach(), grads


def run_kernels(spec, q, k, v, dout, len_q, len_k, inputs):
    attn = A.compile(spec)
    cu_q, cu_k = packed(len_q), packed(len_k)
    out, lse = attn.launcher("varlen_fwd").forward(q, k, v, cu_q, cu_k, inputs=inputs, config=TILES)
    grads = attn.launcher("varlen_bwd").backward(q, k, v, out, lse, dout, cu_q, cu_k, inputs=inputs,
                                                 config=BWD_TILES)
    return out, lse, grads


def check_against_reference(spec, dtype, len_q, len_k, *, strided=False):
    q, k, v, dout, inputs = make(spec, len_q, len_k, dtype, strided=strided)
    out, lse, grads = run_kernels(spec, q, k, v, dout, len_q, len_k, inputs)
    want_out, want_lse, want_grads = reference_packed(spec, q, k, v, dout, len_q, len_k, inputs)
    assert out.shape == (q.shape[0], spec.query_heads, spec.v_head_dim) and out.dtype == dtype
    assert lse.shape == (spec.query_heads, q.shape[0]) and lse.dtype == torch.float32
    errors = {"out": check_close("out", out, want_out, dtype),
              "lse": check_close("lse", lse, want_lse, torch.float32 if dtype == torch.float32 else dtype)}
    names = ("dq", "dk", "dv", *(f"d{n}" for n in inputs))
    for name, got, want, like in zip(names, grads, want_grads, (q, k, v, *inputs.values())):
        assert got.shape == like.shape and got.stride() == like.stride(), f"{name}: {got.shape} {got.stride()}"
        errors[name] = check_close(name, got, want, dtype, table=GRAD_TOLERANCE)
    return errors


# -- against the reference -------------------------------------------------------------------
# The rest of the matrix runs with ATTNGEN_SLOW=1 (each case takes about 12 s on 2 cores).
FAST = ("window", "stride", "global_blocks", "softcap_alibi", "sink", "random")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in SPECS])
def test_unequal_lengths_fp32(name):
    check_against_reference(SPECS[name], torch.float32, *UNEQUAL)


@pytest.mark.parametrize("name", ["stride", *(pytest.param(n, marks=pytest.mark.slow) for n in ("causal", "sink"))])
def test_bf16(name):
    check_against_reference(SPECS[name], torch.bfloat16, *UNEQUAL)


@pytest.mark.parametrize("name", ["window", "global_blocks"])
def test_equal_lengths_non_contiguous(name):
    check_against_reference(SPECS[name], torch.float32, *SAME, strided=True)


def test_empty_batch_and_all_empty_sequences():
    spec = SPECS["causal"]
    for len_q, len_k in (([], []), ([0, 0], [0, 0]), ([0, 3], [2, 0])):
        check_against_reference(spec, torch.float32, len_q, len_k)


def test_rows_without_keys_give_zero_and_minus_inf():
    """A sequence with queries and no key, and rows a window leaves empty (len_q > len_k)."""
    spec = SPECS["window"]
    q, k, v, _, _ = make(spec, [5, 40], [0, 9], torch.float32)
    out, lse = A.compile(spec).varlen(q, k, v, packed([5, 40]), packed([0, 9]), return_lse=True)
    assert torch.all(out[:5] == 0) and torch.all(lse[:, :5] == float("-inf"))
    assert torch.all(out[5:36] == 0) and torch.all(lse[:, 5:36] == float("-inf"))   # rows before key 0
    assert not torch.isnan(out).any() and torch.isfinite(lse[:, 36:]).all()


def test_formula_reading_the_batch():
    """`b` is the sequence's index."""
    spec = spec_of("formula_b", causal=True, mask=A.expr("i - j <= 3 * b + 2"))
    check_against_reference(spec, torch.float32, [9, 20, 1], [9, 25, 4])


def test_formula_inputs_per_sequence():
    """Inputs with a B axis are per sequence (`prefix[b]`), others shared (`slope[h]`); both in the
    mask and the score, forward and backward."""
    spec = A.load_spec({"name": "varlen_prefix_slope", "heads": {"query": 2, "kv": 1}, "head_dim": 16,
                        "inputs": {"prefix": {"shape": ["B"], "dtype": "int32"},
                                   "slope": {"shape": ["Hq"], "dtype": "float32"}},
                        "mask": "j <= i or j < prefix[b]", "score": "s - slope[h] * abs(i - j)"})
    check_against_reference(spec, torch.float32, [9, 20, 1, 33], [9, 25, 4, 40])


def test_learned_inputs_are_refused_with_the_reason():
    spec = A.load_spec({"name": "varlen_learned", "heads": {"query": 2, "kv": 1}, "head_dim": 16,
                        "inputs": {"slope": {"shape": ["Hq"], "dtype": "float32", "grad": True}},
                        "score": "s - slope[h] * abs(i - j)"})
    q, k, v, _, inputs = make(spec, [3, 4], [3, 4], torch.float32)
    with pytest.raises(CompileError, match="gradient of the input 'slope'"):
        A.compile(spec).varlen(q, k, v, packed([3, 4]), packed([3, 4]), **inputs)


# -- the operator ----------------------------------------------------------------------------
def test_operator_autograd_and_default_tiles():
    """attn.varlen through torch.ops.attngen.<name>_varlen, backward by autograd, default tiles."""
    spec = SPECS["window"]
    len_q, len_k = [3, 0, 45], [6, 2, 45]
    q, k, v, dout, _ = make(spec, len_q, len_k, torch.float32, seed=3)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse = A.compile(spec).varlen(*leaves, packed(len_q), packed(len_k), max_seqlen_q=45, max_seqlen_k=45,
                                      return_lse=True)
    out.backward(dout)
    want_out, want_lse, want_grads = reference_packed(spec, q, k, v, dout, len_q, len_k, {})
    check_close("out", out, want_out, torch.float32)
    check_close("lse", lse, want_lse, torch.float32)
    for name, leaf, want in zip(("dq", "dk", "dv"), leaves, want_grads):
        check_close(name, leaf.grad, want, torch.float32, table=GRAD_TOLERANCE)


def test_torch_compile_fullgraph():
    spec = SPECS["stride"]
    attn = A.compile(spec)
    len_q, len_k = [5, 30], [9, 30]
    q, k, v, dout, _ = make(spec, len_q, len_k, torch.float32, seed=4)
    cu_q, cu_k = packed(len_q), packed(len_k)

    def loss(q, k, v):
        return (attn.varlen(q, k, v, cu_q, cu_k) * dout).sum()

    results = []
    for fn in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        value = fn(*leaves)
        value.backward()
        results.append((value.detach(), *(leaf.grad for leaf in leaves)))
    for eager, compiled in zip(*results):
        assert torch.equal(eager, compiled)


# -- the work tables -------------------------------------------------------------------------
def test_work_table_covers_every_tile_once_heaviest_first():
    spec = SPECS["stride"]
    layout = VarlenLayout(tuple(packed(UNEQUAL[0]).tolist()), tuple(packed(UNEQUAL[1]).tolist()))
    tables = work_tables(spec, layout, 16, 32, key_major=False, with_lists=True, device="cpu")
    entries = [tuple(r) for r in tables.work[:, :2].tolist()]
    assert sorted(entries) == sorted((s, t) for s, n in enumerate(UNEQUAL[0]) for t in range(-(-n // 16)))
    assert entries[0] == (3, 4)               # the sequence with the most keys, its last tile first
    by_key = work_tables(spec, layout, 16, 32, key_major=True, with_lists=True, device="cpu")
    assert sorted(tuple(r) for r in by_key.work[:, :2].tolist()) == sorted(
        (s, t) for s, n in enumerate(UNEQUAL[1]) for t in range(-(-n // 32)))


def test_block_maps_shared_between_equal_lengths(monkeypatch):
    built = []
    real = varlen_tables.cached_block_map_lists
    monkeypatch.setattr(varlen_tables, "cached_block_map_lists",
                        lambda spec, nq, nk, *a, **kw: built.append((nq, nk)) or real(spec, nq, nk, *a, **kw))
    lengths = [33, 5, 33, 33, 5, 0]
    layout = VarlenLayout(tuple(packed(lengths).tolist()), tuple(packed(lengths).tolist()))
    work_tables(SPECS["stride"], layout, 16, 16, key_major=False, with_lists=True, device="cpu")
    assert sorted(built) == [(5, 5), (33, 33)]


# -- refused ---------------------------------------------------------------------------------
def good_call():
    spec = SPECS["causal"]
    q, k, v, _, _ = make(spec, [3, 4], [5, 4], torch.float32)
    return A.compile(spec), q, k, v, packed([3, 4]), packed([5, 4])


@pytest.mark.parametrize("change, match", [
    (lambda a: {**a, "cu_seqlens_q": a["cu_seqlens_q"].long()}, "cu_seqlens_q has dtype torch.int64"),
    (lambda a: {**a, "cu_seqlens_k": a["cu_seqlens_k"][None]}, r"cu_seqlens_k has shape \(1, 3\)"),
    (lambda a: {**a, "cu_seqlens_q": torch.tensor([0, 5, 8], dtype=torch.int32)}, "cu_seqlens_q ends at 8"),
    (lambda a: {**a, "cu_seqlens_k": torch.tensor([0, 2, 5, 9], dtype=torch.int32)}, "cu_seqlens_k has 4 entries"),
    (lambda a: {**a, "cu_seqlens_k": torch.tensor([0, 6, 9], dtype=torch.int32)}, None),    # fine
    (lambda a: {**a, "cu_seqlens_q": torch.tensor([1, 3, 7], dtype=torch.int32)}, "cu_seqlens_q starts at 1"),
    (lambda a: {**a, "cu_seqlens_k": torch.tensor([0, 10, 9], dtype=torch.int32)},
     "cu_seqlens_k decreases at sequence 1"),
    (lambda a: {**a, "cu_seqlens_k": torch.tensor([0, 9, 9], dtype=torch.int32)}, None),     # a key-less sequence
    (lambda a: {**a, "cu_seqlens_q": [0, 3, 7]}, "cu_seqlens_q must be a torch.Tensor"),
    (lambda a: {**a, "q": a["q"][None]}, r"q has shape \(1, 7, 2, 16\)"),
    (lambda a: {**a, "k": a["k"][:, :, :8]}, r"k has shape \(9, 1, 8\)"),
    (lambda a: {**a, "v": a["v"][:8]}, "v has 8 rows"),
    (lambda a: {**a, "max_seqlen_q": 3}, "max_seqlen_q=3"),
])
def test_bad_input_names_the_tensor(change, match):
    attn, q, k, v, cu_q, cu_k = good_call()
    args = change(dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k))
    if match is None:
        attn.varlen(**args)
        return
    with pytest.raises(ShapeError, match=match):
        attn.varlen(**args)


@pytest.mark.parametrize("spec, match", [
    (spec_of("segments", mask=A.segments()), "segments mask"),
    (A.Spec(name="varlen_linear", query_heads=2, kv_heads=2, head_dim=16, kind="linear",
            feature_map=A.FeatureMap("elu1")), "kind: linear"),
], ids=["segments", "linear"])
def test_refused_specs_say_why(spec, match):
    q, k, v, _, _ = make(spec, [3], [3], torch.float32)
    with pytest.raises(CompileError, match=match):
        A.compile(spec).varlen(q, k, v, packed([3]), packed([3]))
