"""Checks of the generated kernels against the float64 reference, on any device.

    check_softmax(spec, nq, nk, dtype, device, seed)   out, lse, dq, dk, dv   (public autograd API)
    check_linear(spec, nq, nk, dtype, device, seed)    out, dq, dk, dv
    check_decode(spec, nq, capacity, dtype, device, seed)   out, lse of a contiguous and a paged cache

On CUDA tensors they run the compiled kernels (`tests/gpu/test_gpu_kernels.py`, marked gpu) and
refuse to run if anything would route them to Triton's interpreter; on CPU tensors the same code runs
under the interpreter at tiny sizes (`tests/gpu/test_gpu_helpers.py`), which proves the checking code
where no GPU is lent. Judgement is `attngen.checking` (one tolerance table, NaN never passes); the
truth is the package's float64 reference (`attngen.reference` for outputs; torch autograd through
the same dense float64 computation for gradients, `reference_gradients`).

Every output the launchers allocate starts as NaN (`poisoned_outputs`, ATTNGEN_POISON=1): on a GPU
`torch.empty` may hand back memory that holds an earlier correct result, which would hide an element
the kernel never wrote.
"""
from __future__ import annotations

import contextlib
import os
from functools import lru_cache

import torch

import attngen as A
from attngen.checking import GRAD_TOLERANCE, check_close
from attngen.runtime import launch_backward
from attngen.runtime.launch import architecture
from attngen.runtime import linear
from attngen.spec import Random

LAYOUTS = ("bhnd", "bnhd")


# -- the conditions of a run --------------------------------------------------------------------
def expect_compiled(device: torch.device) -> None:
    """On CUDA the kernels must run compiled: fail where ATTNGEN_INTERPRET or TRITON_INTERPRET would
    send them to the interpreter (a GPU test that passed there would prove nothing about the GPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    if os.environ.get("TRITON_INTERPRET", "").strip() not in ("", "0"):
        raise AssertionError("TRITON_INTERPRET is set: the GPU tier must run compiled kernels")
    if architecture(device) is None:
        raise AssertionError("ATTNGEN_INTERPRET is set: CUDA tensors would run under the interpreter")


@contextlib.contextmanager
def poisoned_outputs():
    """While active, the launchers fill every output, gradient and split-KV workspace with NaN before
    their kernels run, on a GPU too (ATTNGEN_POISON=1; the interpreter always does)."""
    before = os.environ.get("ATTNGEN_POISON")
    os.environ["ATTNGEN_POISON"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["ATTNGEN_POISON"]
        else:
            os.environ["ATTNGEN_POISON"] = before


@lru_cache(maxsize=None)
def compiled(spec: A.Spec):
    """One CompiledAttention per spec and process: its launchers keep their tile choices."""
    return A.compile(spec)


# -- inputs ---------------------------------------------------------------------------------------
def generator(seed: int, device) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def draw(gen: torch.Generator, batch: int, heads: int, n: int, head_dim: int, dtype, layout: str = "bhnd"):
    """Standard normal (B, H, N, D) in `dtype` on the generator's device. "bnhd": a transposed view
    of a (B, N, H, D) tensor (not contiguous; kernels must take its strides as they are)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} must be one of {LAYOUTS}")
    if layout == "bnhd":
        t = torch.randn(batch, n, heads, head_dim, generator=gen, device=gen.device).to(dtype)
        return t.transpose(1, 2)
    return torch.randn(batch, heads, n, head_dim, generator=gen, device=gen.device).to(dtype)


def segment_ids(spec: A.Spec, batch: int, nq: int, nk: int, gen: torch.Generator) -> dict:
    """Packed documents for a segments spec (else {}): sorted ids per sequence, documents of random
    lengths; the query rows are the last nq tokens of the key sequence (bottom-right alignment)."""
    if not spec.uses_segments:
        return {}
    docs = max(2, nk // 150)
    seg_k = torch.sort(torch.randint(0, docs, (batch, nk), generator=gen, device=gen.device), dim=1).values
    seg_q = seg_k[:, nk - nq:] if nq <= nk else torch.randint(0, docs, (batch, nq), generator=gen,
                                                               device=gen.device)
    return {"seg_q": seg_q, "seg_k": seg_k}


def qkv_dout(spec: A.Spec, batch: int, nq: int, nk: int, dtype, gen, layout: str):
    heads_and_lengths = ((spec.query_heads, nq), (spec.kv_heads, nk), (spec.kv_heads, nk), (spec.query_heads, nq))
    return [draw(gen, batch, h, n, spec.head_dim, dtype, layout) for h, n in heads_and_lengths]


# -- the float64 truth ------------------------------------------------------------------------------
def reference_gradients(spec: A.Spec, q, k, v, dout, **call):
    """float64 (dq, dk, dv) by torch autograd through the float64 reference (K and V repeated per
    query head inside the graph, so dK and dV sum over each group). No kernel is involved: these are
    the package's reference-precision paths for float64 inputs."""
    q, k, v, dout = (t.detach().to(torch.float64) for t in (q, k, v, dout))
    if spec.kind == "linear":
        return linear.reference_gradients(spec, q, k, v, dout, call.get("q_offset"))
    return launch_backward.reference_gradients(spec, q, k, v, dout, **call)


def check_gradients(grads, wants, inputs, dtype) -> dict:
    errors = {}
    for name, got, want, x in zip(("dq", "dk", "dv"), grads, wants, inputs):
        assert got.shape == x.shape and got.dtype == x.dtype, f"{name}: {tuple(got.shape)} {got.dtype}"
        errors[name] = check_close(name, got, want, dtype, table=GRAD_TOLERANCE)
    return errors


def check_empty_rows(out, lse, want_lse) -> int:
    """Rows whose mask allows no key: out exactly 0 and lse -inf (SPEC.md), never NaN."""
    empty = torch.isneginf(want_lse.to(lse.device))
    assert torch.equal(torch.isneginf(lse), empty), "lse is -inf exactly where no key is allowed"
    assert torch.all(out[empty] == 0), "rows with no allowed key must be 0"
    return int(empty.sum())


# -- the checks ------------------------------------------------------------------------------------
def check_softmax(spec: A.Spec, nq: int, nk: int, dtype, device, seed: int, *, batch: int = 1,
                  layout: str = "bhnd", q_offset: int | None = None, backward: bool = True) -> dict:
    """Forward (out, lse) and backward (dq, dk, dv) through the public API (`attngen.compile(spec)`
    and torch autograd) on `device`, each named tensor against the float64 reference.
    Returns {name: relative error, "empty_rows": rows that allow no key}."""
    device = torch.device(device)
    expect_compiled(device)
    gen = generator(seed, device)
    q, k, v, dout = qkv_dout(spec, batch, nq, nk, dtype, gen, layout)
    call = dict(q_offset=q_offset, **segment_ids(spec, batch, nq, nk, gen))
    leaves = [t.detach().requires_grad_(backward) for t in (q, k, v)]
    with poisoned_outputs():
        out, lse = compiled(spec)(*leaves, return_lse=True, **call)
    assert out.dtype == dtype and out.device == device and lse.dtype == torch.float32
    want_out, want_lse = A.reference(spec, q, k, v, **call)
    errors = {"out": check_close("out", out, want_out, dtype), "lse": check_close("lse", lse, want_lse, dtype)}
    errors["empty_rows"] = check_empty_rows(out, lse, want_lse)
    if backward:
        with poisoned_outputs():
            grads = torch.autograd.grad(out, leaves, dout)
        errors |= check_gradients(grads, reference_gradients(spec, q, k, v, dout, **call), (q, k, v), dtype)
    return errors


def check_linear(spec: A.Spec, nq: int, nk: int, dtype, device, seed: int, *, batch: int = 1,
                 layout: str = "bhnd", q_offset: int | None = None) -> dict:
    """A linear spec's out, dq, dk, dv through the public API against the float64 reference."""
    device = torch.device(device)
    expect_compiled(device)
    gen = generator(seed, device)
    q, k, v, dout = qkv_dout(spec, batch, nq, nk, dtype, gen, layout)
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    with poisoned_outputs():
        out = compiled(spec)(*leaves, q_offset=q_offset)
    assert out.dtype == dtype and out.device == device
    want_out, _ = A.reference(spec, q, k, v, q_offset=q_offset)
    errors = {"out": check_close("out", out, want_out, dtype)}
    with poisoned_outputs():
        grads = torch.autograd.grad(out, leaves, dout)
    wants = reference_gradients(spec, q, k, v, dout, q_offset=q_offset)
    return errors | check_gradients(grads, wants, (q, k, v), dtype)


# -- decoding ---------------------------------------------------------------------------------------
def shortest_sequence(spec: A.Spec) -> int:
    """The fewest keys a sequence may hold: a random mask needs per_row key blocks to draw from."""
    needs = [(p.per_row - 1) * p.block + 1 for p in spec.effective_mask.walk() if isinstance(p, Random)]
    return max(needs, default=1)


def sequence_lengths(spec: A.Spec, batch: int, capacity: int, gen: torch.Generator) -> list[int]:
    """A full cache, an empty one, the shortest allowed, then random lengths in between."""
    low = shortest_sequence(spec)
    fixed = [capacity, 0, low]
    between = torch.randint(low, capacity + 1, (max(batch - 3, 0),), generator=gen, device=gen.device)
    return (fixed + between.tolist())[:batch]


def to_pages(k, v, page_size: int, gen: torch.Generator):
    """The same cache as pages (num_pages, page_size, Hkv, D) in a shuffled order, one spare page,
    slots past each sequence's end NaN (a read there poisons the result), and the block table."""
    batch, hkv, capacity, d = k.shape
    per_seq = -(-capacity // page_size)
    pages = batch * per_seq + 1
    order = torch.randperm(pages, generator=gen, device=gen.device)[:batch * per_seq]

    def pool(t):
        t = torch.nn.functional.pad(t, (0, 0, 0, per_seq * page_size - capacity), value=float("nan"))
        t = t.reshape(batch, hkv, per_seq, page_size, d).permute(0, 2, 3, 1, 4)
        out = torch.full((pages, page_size, hkv, d), float("nan"), dtype=t.dtype, device=t.device)
        out[order] = t.reshape(batch * per_seq, page_size, hkv, d)
        return out

    return pool(k), pool(v), order.reshape(batch, per_seq).to(torch.int32)


def check_decode_result(spec: A.Spec, out, lse, q, k, v, lengths: list[int], dtype, what: str) -> dict:
    """Each sequence on its own valid prefix: keys 0..n-1, queries at positions n - Nq + t."""
    nq = q.shape[2]
    assert out.dtype == dtype and lse.dtype == torch.float32 and out.shape == q.shape
    worst = {"out": 0.0, "lse": 0.0}
    for b, n in enumerate(lengths):
        if n == 0:          # no key at all (the reference refuses an empty random draw): 0 and -inf
            assert torch.all(out[b] == 0) and torch.isneginf(lse[b]).all(), f"{what}: empty sequence {b}"
            continue
        want_out, want_lse = A.reference(spec, q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], q_offset=n - nq)
        for name, got, want in (("out", out[b:b + 1], want_out), ("lse", lse[b:b + 1], want_lse)):
            err = check_close(f"{what} {name}[{b}] (length {n})", got, want, dtype)
            worst[name] = max(worst[name], err)
        check_empty_rows(out[b:b + 1], lse[b:b + 1], want_lse)
    return worst


def check_decode(spec: A.Spec, nq: int, capacity: int, dtype, device, seed: int, *, batch: int = 4,
                 layout: str = "bhnd", page_size: int = 48) -> dict:
    """`attngen.compile(spec).decode` against a contiguous cache (`layout`) and against the same
    cache as shuffled pages, default split count, per sequence against the float64 reference."""
    device = torch.device(device)
    expect_compiled(device)
    gen = generator(seed, device)
    q = draw(gen, batch, spec.query_heads, nq, spec.head_dim, dtype)
    k, v = (draw(gen, batch, spec.kv_heads, capacity, spec.head_dim, dtype, layout) for _ in range(2))
    lengths = sequence_lengths(spec, batch, capacity, gen)
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    k_pages, v_pages, table = to_pages(k, v, page_size, gen)
    attn = compiled(spec)
    errors = {}
    for what, caches, extra in (("contiguous", (k, v), {}), ("paged", (k_pages, v_pages), {"block_table": table})):
        with poisoned_outputs():
            out, lse = attn.decode(q, *caches, cache_seqlens=seqlens, return_lse=True, **extra)
        for name, err in check_decode_result(spec, out, lse, q, k, v, lengths, dtype, what).items():
            errors[f"{what} {name}"] = err
    return errors
