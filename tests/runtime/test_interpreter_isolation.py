"""Running kernels under the interpreter leaves triton.language as it found it.

Triton's interpreter patches the language for nested JIT calls and does not undo it; a real
compilation later in the same process then fails inside Triton's code generator. The loader undoes
those patches (and keeps the globals the interpreter's rewriter adds, which its cached rewritten
functions need); this runs interpreted kernels, an ahead-of-time compile, and interpreted kernels
again in one fresh process with empty caches (a warm Triton cache would skip the code generator and hide the bug).
TRITON_CACHE_DIR is left unset, so the compiled kernel must land in Triton's cache inside ours.
"""
import os
import subprocess
import sys

SCRIPT = """
import torch, attngen as A
from attngen.codegen.aot import resource_usage
spec = A.Spec(name="iso", query_heads=2, kv_heads=1, head_dim=16, softcap=3.0,
              mask=A.band(4) | A.global_tokens(2))
q = torch.randn(1, 2, 40, 16); k = torch.randn(1, 1, 40, 16); v = torch.randn(1, 1, 40, 16)
q.requires_grad_(True)
A.compile(spec)(q, k, v).sum().backward()
registers = resource_usage(A.compile(spec).compile_for("sm_90", torch.float16)).registers
other = A.Spec(name="iso2", query_heads=2, kv_heads=1, head_dim=16, causal=True, alibi=True)
A.compile(other)(q, k, v).sum().backward()          # interpreted again, after a real compile
print(registers)
"""


def test_interpreted_runs_do_not_break_later_compiles(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_CACHE_DIR"}
    env["ATTNGEN_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 0
    assert list((tmp_path / "cache" / "triton").rglob("*.cubin")), "Triton cached outside attngen's cache"


def test_interpreted_loop_bounds_take_one_element_arrays():
    """The interpreter holds scalars as one-element 1-D arrays; Triton 3.6 turned them into range()
    bounds with int(array), which numpy >= 2.4 refuses. The loader's __index__ takes them, and the
    interpreter's own patch hook is back in place after the launch."""
    import numpy as np
    from types import SimpleNamespace

    import triton
    import triton.language as tl
    import torch
    from triton.runtime import interpreter

    from attngen.runtime.loader import _scalar_index, interpreted

    assert _scalar_index(SimpleNamespace(handle=SimpleNamespace(data=np.array([7], dtype=np.int32)))) == 7

    @triton.jit
    def count_up(out, n):
        total = 0
        for i in range(tl.program_id(0), n):        # bounds are interpreter scalars
            total += i
        tl.store(out, total)

    hook = interpreter._LangPatchScope.set_attr
    out = torch.zeros(1, dtype=torch.int32)
    interpreted(count_up)[(1,)](out, 6)
    assert out.item() == 15
    assert interpreter._LangPatchScope.set_attr is hook
