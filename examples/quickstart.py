"""Compile a spec written in Python, run it (interpreter on CPU, compiled on CUDA), check it
against the float64 reference, and print the start of its generated kernel.

    python examples/quickstart.py
"""
import torch

import attngen as A
from attngen.checking import check_close

spec = A.Spec(name="quickstart_longformer", query_heads=4, kv_heads=2, head_dim=32,
              mask=A.band(16) | A.global_tokens(2), softcap=30.0)
device = "cuda" if torch.cuda.is_available() else "cpu"
q = torch.randn(1, 4, 130, 32, device=device)
k = torch.randn(1, 2, 130, 32, device=device)
v = torch.randn(1, 2, 130, 32, device=device)

attn = A.compile(spec)
out, lse = attn(q, k, v, return_lse=True)
want_out, want_lse = A.reference(spec, q, k, v)
print("out error", check_close("out", out, want_out, torch.float32))
print("lse error", check_close("lse", lse, want_lse, torch.float32))
print("\n".join(A.emit(spec).splitlines()[:12]))
