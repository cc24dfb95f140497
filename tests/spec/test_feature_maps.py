"""The meaning of the linear feature maps: favor's draw, its stabilisers, the linear reference."""
from __future__ import annotations

import math

import pytest
import torch

import attngen as A
from attngen.checking import relative_error
from attngen.reference import reference
from attngen.spec.feature_maps import favor_features, orthogonal_gaussian


def favor_spec(m=32, seed=0, *, causal=False, head_dim=16, heads=(2, 2), eps=None):
    return A.Spec(name="f", kind="linear", query_heads=heads[0], kv_heads=heads[1], head_dim=head_dim,
                  causal=causal, feature_map=A.FeatureMap("favor", m, seed), eps=eps)


def test_draw_is_fixed_by_seed_and_shaped_m_by_d():
    w = favor_features(favor_spec(40, seed=3))
    assert w.shape == (40, 16) and w.dtype == torch.float64
    assert torch.equal(w, favor_features(favor_spec(40, seed=3)))
    assert not torch.allclose(w, favor_features(favor_spec(40, seed=4)))
    # The first m rows of a larger draw are not promised; the draw depends on (m, D, seed) only.
    assert torch.equal(w, orthogonal_gaussian(40, 16, seed=3))


def test_draw_rows_are_orthogonal_within_a_block_with_chi_norms():
    w = orthogonal_gaussian(40, 16, seed=1)            # blocks of 16, 16, 8 rows
    for block in (w[:16], w[16:32], w[32:]):
        gram = block @ block.T
        off = gram - torch.diag(gram.diagonal())
        assert off.abs().max() < 1e-10 * gram.diagonal().max()
    norms = w.norm(dim=1)
    # chi(16): mean sqrt(2) Γ(8.5) / Γ(8) ≈ 3.94; 40 draws stay well inside 2..6.
    assert (norms > 2).all() and (norms < 6).all()


def test_draw_needs_a_favor_spec():
    spec = A.Spec(name="e", kind="linear", query_heads=1, kv_heads=1, head_dim=8, feature_map=A.FeatureMap("elu1"))
    with pytest.raises(ValueError, match="not favor"):
        favor_features(spec)


def dense_linear(spec, q, k, v, q_offset):
    """Row by row, straight from the definition in attngen.spec.feature_maps (quadratic)."""
    w = favor_features(spec)
    m, d = w.shape
    x_q, x_k = q * d ** -0.25, k * d ** -0.25
    u_q, u_k = x_q @ w.T, x_k @ w.T
    out = torch.zeros_like(q)
    nq, nk = q.shape[0], k.shape[0]
    for r in range(nq):
        seen = [j for j in range(nk) if j <= r + q_offset]
        if not seen:
            continue
        row_max = u_k[seen].max()                      # M_r: visible keys only
        phi_q = torch.exp(u_q[r] - (x_q[r] @ x_q[r]) / 2 - u_q[r].max()) / math.sqrt(m)
        phi_k = torch.exp(u_k[seen] - (x_k[seen] ** 2).sum(-1, keepdim=True) / 2 - row_max) / math.sqrt(m)
        out[r] = (phi_q @ (phi_k.T @ v[seen])) / (phi_q @ phi_k.sum(0) + spec.eps)
    return out


@pytest.mark.parametrize("q_offset", [-3, 0, 5, None])
def test_causal_favor_reference_is_the_row_by_row_definition(q_offset, torch_rng):
    spec = favor_spec(24, seed=2, causal=True, eps=1e-3, heads=(1, 1))   # a large eps shows its place
    q, k, v = (torch.randn(1, 1, n, 16, generator=torch_rng, dtype=torch.float64) * 1.5 for n in (11, 13, 13))
    got, _ = reference(spec, q, k, v, q_offset=q_offset)
    offset = 13 - 11 if q_offset is None else q_offset
    want = dense_linear(spec, q[0, 0], k[0, 0], v[0, 0], offset)
    assert relative_error(got[0, 0], want) < 1e-12


@pytest.mark.parametrize("key, factor", [
    pytest.param(69, 6.0, id="last-key-x6"),
    pytest.param(69, 300.0, id="last-key-x300-beyond-float64-exp-range"),
    pytest.param(40, 300.0, id="mid-chunk-key-x300"),
])
def test_causal_stabiliser_does_not_leak_later_keys(key, factor, torch_rng):
    # A much larger key raises every later row's maximum M_r; the rows before it must not move,
    # not by one bit, in the reference and in the kernel (70 positions: three interpreter chunks
    # of 32, the changed key inside one), and nothing may become NaN.
    spec = favor_spec(16, seed=0, causal=True, eps=1e-2)
    q, k, v = (torch.randn(1, 2, 70, 16, generator=torch_rng) for _ in range(3))
    k2 = k.clone()
    k2[:, :, key] *= factor
    for run in (lambda *t: reference(spec, *t)[0], A.compile(spec)):
        a, b = run(q, k, v), run(q, k2, v)
        assert not b.isnan().any()
        assert torch.equal(a[:, :, :key], b[:, :, :key])
        assert not torch.allclose(a[:, :, key:], b[:, :, key:])


def test_non_causal_stabiliser_is_one_maximum_over_all_keys(torch_rng):
    spec = favor_spec(16, seed=0, causal=False, eps=1e-2, heads=(1, 1))
    q, k, v = (torch.randn(1, 1, 9, 16, generator=torch_rng, dtype=torch.float64) for _ in range(3))
    got, _ = reference(spec, q, k, v)
    want = dense_linear(spec, q[0, 0], k[0, 0], v[0, 0], q_offset=10 ** 6)   # every key visible
    assert relative_error(got[0, 0], want) < 1e-12


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_favor_approaches_softmax_as_features_grow(causal):
    # Performer's estimator of exp(q.k / sqrt(D)): favor's implicit scale is softmax's default
    # 1/sqrt(D). Fixed inputs and seeds; the error averaged over 8 draws falls with m.
    d = 16
    softmax = A.Spec(name="s", query_heads=2, kv_heads=2, head_dim=d, causal=causal)
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, 24, d, generator=gen, dtype=torch.float64) * 0.5 for _ in range(2))
    v = torch.randn(1, 2, 24, d, generator=gen, dtype=torch.float64)
    want, _ = reference(softmax, q, k, v)
    errors = []
    for m in (16, 64, 256):
        errs = [relative_error(reference(favor_spec(m, seed, causal=causal), q, k, v)[0], want)
                for seed in range(8)]
        errors.append(sum(errs) / len(errs))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.6 * errors[0]
