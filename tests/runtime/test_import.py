"""`import attngen` stays light: the compiler (Triton, networkx, jinja2, codegen) loads on first use
of `attngen.compile`, `emit`, `load`, `block_map` or `merge`, and importing sets no environment."""
import json
import os
import subprocess
import sys

SCRIPT = """
import json, os, sys
before = dict(os.environ)
import attngen
light = sorted(m for m in ("triton", "networkx", "jinja2", "attngen.codegen", "attngen.runtime")
               if m in sys.modules)
changed = sorted(k for k in os.environ if os.environ[k] != before.get(k))
ops = attngen.load
heavy = sorted(m for m in ("triton", "attngen.runtime.ops") if m in sys.modules)
print(json.dumps({"light": light, "changed": changed, "heavy": heavy,
                  "names": all(callable(getattr(attngen, n)) for n in attngen.__all__ if n != "__version__"),
                  "triton_cache": os.environ.get("TRITON_CACHE_DIR")}))
"""


def test_import_is_light_and_the_compiler_loads_on_first_use(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_CACHE_DIR"}
    env["ATTNGEN_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""                              # nothing printed by default
    got = json.loads(done.stdout)
    assert got["light"] == [] and got["changed"] == []
    assert got["heavy"] == ["attngen.runtime.ops", "triton"] and got["names"]
    assert got["triton_cache"] == str(tmp_path / "triton")   # set once the runtime is imported
