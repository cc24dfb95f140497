"""Errors of the generated kernels on formula specs against the float64 reference.

For every spec in specs/formulas/ (shrunk to 4 query heads over 2 kv heads, head dim 16; Dv 8 for
Dv != Dqk) and a few extra formulas, runs the compiled op forward and backward at an odd shape
(Nq != Nk, an explicit q_offset, B = 2) in float32 and bfloat16, and prints the relative Frobenius
error of out, lse, dq, dk, dv and of each `grad: true` input's gradient:

    PYTHONPATH=. python benchmarks/formula_errors.py [--nq 45 --nk 61 --q-offset 9]

Off a GPU the kernels run under Triton's interpreter (a minute or two).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "codegen"))

import attngen as A  # noqa: E402
from attngen.checking import relative_error  # noqa: E402
from attngen.runtime.launch_backward import reference_gradients  # noqa: E402
from test_formula_inputs import CASES, make_inputs, qkv  # noqa: E402


def errors(spec, nq: int, nk: int, q_offset: int, dtype: torch.dtype, device: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (t.to(device) for t in qkv(spec, 2, nq, nk, gen, dtype))
    inputs = {n: t.to(device) for n, t in make_inputs(spec, 2, nq, nk, gen).items()}
    grads = [d.name for d in spec.all_inputs if d.grad]
    leaves = [t.requires_grad_(True) for t in (q, k, v)] + [inputs[n].requires_grad_(True) for n in grads]
    out, lse = A.compile(spec)(q, k, v, q_offset=q_offset, return_lse=True, **inputs)
    detached = {n: t.detach() for n, t in inputs.items()}
    want_out, want_lse = A.reference(spec, q.detach(), k.detach(), v.detach(), q_offset=q_offset, **detached)
    dout = torch.randn(out.shape, generator=gen).to(device=device, dtype=dtype)
    got = torch.autograd.grad(out, leaves, dout)
    want = reference_gradients(spec, *(t.detach().double() for t in (q, k, v)), dout.double(), q_offset=q_offset,
                               inputs={n: t.double() if t.is_floating_point() else t for n, t in detached.items()})
    row = {"out": relative_error(out, want_out), "lse": relative_error(lse, want_lse)}
    row.update({name: relative_error(g, w) for name, g, w in zip(("dq", "dk", "dv"), got, want)})
    row["dinput"] = max((relative_error(g, w) for g, w in zip(got[3:], want[3:])), default=None)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nq", type=int, default=45)
    parser.add_argument("--nk", type=int, default=61)
    parser.add_argument("--q-offset", type=int, default=9)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    columns = ("out", "lse", "dq", "dk", "dv", "dinput")
    print(f"# relative Frobenius error vs float64; B=2, Nq={args.nq}, Nk={args.nk}, q_offset={args.q_offset}, "
          f"{device}")
    print(f"| spec | dtype | {' | '.join(columns)} |")
    print("|" + " --- |" * (len(columns) + 2))
    for spec in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            row = errors(spec, args.nq, args.nk, args.q_offset, dtype, device)
            cells = ["-" if row[c] is None else f"{row[c]:.1e}" for c in columns]
            print(f"| {spec.name} | {str(dtype)[6:]} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
