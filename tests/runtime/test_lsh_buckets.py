"""The generated bucket kernel of LSH attention (templates/lsh.py.jinja, runtime/lsh_buckets.py)
against the reference's rule (reference_lsh.lsh_buckets: float32 `x @ R`, torch's first argmax).

Both compute the rule in float32 but sum the D products in different orders (the kernel: a dot
over D padded to a power of two; the reference: torch's matmul), so they may round two
candidates' projections differently. Any summation order of D float32 products errs by at most
D·u·Σ|x_d·R_dc| (u = 2**-24, Higham's γ_D bound, to first order), so where the float64 margin
between the best and the second-best candidate of [x·R, −x·R] exceeds twice that (both candidates
may err), every order picks the same one (reference_lsh.lsh_near_ties). Below it the rule itself
is a near-tie: there the kernel may disagree with the reference; everywhere else it must equal it.
Near-ties are counted and must be rare. Exact ties (the first maximum wins, inside a chunk of columns, across chunks,
and [x·R] before [−x·R]) are checked on hand-made integer rotations, where every sum is exact.
"""
from __future__ import annotations

import pytest
import torch

from attngen import Spec
from attngen.errors import ShapeError
from attngen.reference_lsh import lsh_buckets, lsh_near_ties
from attngen.runtime import cache
from attngen.runtime.lsh_buckets import BLOCK_N, BucketLauncher

def launcher(buckets: int, rounds: int, head_dim: int, *, seed: int = 0, kv_heads: int = 2) -> BucketLauncher:
    spec = Spec(name=f"lsh_buckets_{buckets}_{rounds}_{head_dim}", query_heads=2 * kv_heads, kv_heads=kv_heads,
                head_dim=head_dim, lsh={"buckets": buckets, "seed": seed, "rounds": rounds})
    return BucketLauncher(cache.generated(spec, "lsh"))


def check_equal_off_near_ties(hasher, x, buckets, seed, rounds, block_n=None) -> tuple[int, int]:
    """(near-ties, disagreements) of the kernel against the reference, asserting that every
    disagreement is a near-tie; rows counted over every round."""
    got = hasher.buckets(x, block_n=block_n)
    want = lsh_buckets(x.double(), buckets, seed, rounds)        # what the reference sees: float64 copies
    assert got.shape == want.shape and got.dtype == torch.int64
    ties = lsh_near_ties(x, buckets, seed, rounds)
    differ = got != want
    assert not (differ & ~ties).any(), f"{int((differ & ~ties).sum())} rows differ off a near-tie"
    return int(ties.sum()), int(differ.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernel_buckets_equal_the_reference_off_near_ties(dtype, torch_rng):
    """Odd N (37), odd D (23, padded to 32), three rounds, q heads and GQA k heads, non-contiguous
    x (heads-major view of a (B, N, H, 2D) tensor, every other column); near-ties counted."""
    buckets, seed, rounds = 10, 5, 3
    hasher = launcher(buckets, rounds, 23, seed=seed)
    rows = ties = differ = 0
    for heads in (4, 2):                                   # q: query heads; k: the kv heads of GQA
        base = torch.randn(3, 37, heads, 46, generator=torch_rng).to(dtype)
        x = base.transpose(1, 2)[..., ::2]                 # strides (N·H·2D, 2D, H·2D, 2)
        assert not x.is_contiguous() and x.shape == (3, heads, 37, 23)
        # k: the GPU's 32 rows per program (two tiles, the last partial); q: the interpreter's default
        t, d = check_equal_off_near_ties(hasher, x, buckets, seed, rounds, BLOCK_N if heads == 2 else None)
        rows, ties, differ = rows + rounds * x.shape[0] * heads * 37, ties + t, differ + d
    assert ties <= rows // 100, f"{ties} near-ties in {rows} rows"
    assert differ <= ties


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_kernel_buckets_over_several_column_chunks(dtype, torch_rng):
    """300 buckets at D 64: R's 150 columns in ten chunks of 16 (the running first argmax)."""
    hasher = launcher(300, 2, 64, seed=11)
    assert "BLOCK_H = tl.constexpr(16)" in hasher.generated.source
    x = torch.randn(2, 4, 45, 64, generator=torch_rng).to(dtype)
    ties, _ = check_equal_off_near_ties(hasher, x, 300, 11, 2)
    assert ties <= 2 * 2 * 4 * 45 // 100


def test_exact_ties_take_the_first_maximum():
    """Integer rotations and rows (every sum exact): a tie inside a chunk, across the two chunks
    (HALF 150, chunks of 16), between [x·R] and [−x·R], and the zero row (bucket 0)."""
    hasher = launcher(300, 1, 64, kv_heads=1)
    rot = torch.zeros(1, 64, 150)
    rot[0, 0, [3, 7]] = 2.0                  # x = e0: columns 3 and 7 tie at 2 (one chunk)
    rot[0, 1, [5, 140]] = 3.0                # x = e1: columns 5 and 140 tie at 3 (two chunks)
    rot[0, 2, [130, 149]] = 4.0              # x = e2: 130 and 149 tie (chunks 8 and 9)
    rot[0, 3, 9] = 1.0
    rot[0, 4, [20, 135]] = -5.0              # x = e4: −x·R ties at 5 across chunks → 150 + 20
    x = torch.zeros(1, 1, 7, 64)
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = x[0, 0, 2, 2] = x[0, 0, 4, 4] = 1.0
    x[0, 0, 3, 3], x[0, 0, 3, 4] = 1.0, -0.2  # +x·R: 1 at 9, 20 and 135 (0.2 · 5 rounds to 1): 9
    x[0, 0, 5, 0], x[0, 0, 5, 4] = 1.0, 0.4   # +x·R max 2 (cols 3, 7); −x·R max 2 (cols 20, 135): [x·R] first
    got = hasher.buckets(x, rot=rot, block_n=BLOCK_N)[0, 0, 0].tolist()
    want = torch.cat([x @ rot[0], -(x @ rot[0])], -1).argmax(-1)[0, 0].tolist()
    assert got == want == [3, 5, 130, 9, 150 + 20, 3, 0]


def test_bad_shapes_are_refused_naming_the_tensor():
    hasher = launcher(4, 1, 16)
    with pytest.raises(ShapeError, match="q must be"):
        hasher.buckets(torch.zeros(1, 2, 3, 8), "q")
    with pytest.raises(ShapeError, match="rot must be"):
        hasher.buckets(torch.zeros(1, 2, 3, 16), rot=torch.zeros(1, 16, 3))
    assert hasher.buckets(torch.zeros(1, 2, 0, 16)).shape == (1, 1, 2, 0)


def test_a_nan_row_takes_the_first_bucket_like_the_reference():
    """A NaN makes every projection of its row NaN: torch's argmax takes the first NaN (bucket 0);
    the kernel never updates its first column (NaN > m is false) and its maxima ignore NaN."""
    hasher = launcher(10, 2, 16)
    x = torch.randn(1, 4, 3, 16, generator=torch.Generator().manual_seed(0))
    x[0, 0, 1, 3] = float("nan")
    got, want = hasher.buckets(x), lsh_buckets(x.double(), 10, 0, 2)
    assert got[:, 0, 0, 1].tolist() == want[:, 0, 0, 1].tolist() == [0, 0]
