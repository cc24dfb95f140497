"""How a result is judged against the float64 reference: one tolerance table, one error measure.

The error is the relative Frobenius norm ``|got - want| / |want|`` (absolute when want is 0). A NaN
anywhere in `got` fails, whatever the tolerance. ``-inf`` entries (the lse of rows with no allowed
key) must match position for position and are left out of the norm.
"""
from __future__ import annotations

import torch

# Relative Frobenius error allowed, by the dtype the kernel ran in (forward results).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float64: 1e-10}
# Gradients go through one more rounding of dO and the recomputed probabilities.
GRAD_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2, torch.float64: 1e-10}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative Frobenius error; inf when `got` has a NaN or its infinities differ from `want`'s."""
    got = got.detach().to(torch.float64).cpu()
    want = want.detach().to(torch.float64).cpu()
    if got.shape != want.shape:
        raise ValueError(f"shapes differ: got {tuple(got.shape)}, want {tuple(want.shape)}")
    if torch.isnan(got).any() or torch.isnan(want).any():
        return float("inf")
    got_inf, want_inf = torch.isinf(got), torch.isinf(want)
    if not torch.equal(got_inf, want_inf) or not torch.equal(got[got_inf], want[want_inf]):
        return float("inf")
    diff = (got - want)[~want_inf].norm().item()
    scale = want[~want_inf].norm().item()
    return diff / scale if scale > 0 else diff


def check_close(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, *,
                table: dict = TOLERANCE) -> float:
    """Raise AssertionError naming the tensor if the error is above the dtype's tolerance."""
    err = relative_error(got, want)
    tol = table[dtype]
    if not err <= tol:
        raise AssertionError(f"{name}: relative error {err:.3e} > {tol:.0e} ({dtype}); "
                             f"shape {tuple(got.shape)}")
    return err
