"""The wheel works without the source tree: built, installed elsewhere, it runs a spec and emits every
shipped kernel.

An editable install or a test run from the repository root imports the source tree, so a file that
the wheel leaves out (a template, a subpackage) goes unnoticed there. Here the wheel is built from a
copy of the package's build inputs, installed with `pip install --target` and imported in a
subprocess whose only path to attngen is that target (`PYTHONPATH`, a cwd outside the repository),
with its own `ATTNGEN_CACHE_DIR`. The kernels it emits must equal the golden copies.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import attngen as A
from attngen.checking import TOLERANCE

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
BUILD_INPUTS = ("pyproject.toml", "README.md", "attngen")    # what pyproject.toml reads
TIMEOUT_S = 300          # each subprocess; a build or a run takes seconds, a hang fails instead


def _kernels(spec) -> tuple[str, ...]:
    """The kernels a shipped spec has (the same list as tests/codegen/test_golden.py)."""
    return ("fwd", "bwd") + (("decode",) if spec.kind == "softmax" and not spec.uses_segments else ())


SPEC_FILES = sorted((ROOT / "specs").glob("*.yaml"))
CASES = [(str(path), A.load_spec(path).name, kind) for path in SPEC_FILES for kind in _kernels(A.load_spec(path))]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, **kwargs)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy: setuptools builds in the source folder, writing build/ and *.egg-info there,
    # and a stale build/lib would ship modules the tree no longer has.
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        kwargs = {"ignore": shutil.ignore_patterns("__pycache__", "*.pyc")} if copy is shutil.copytree else {}
        copy(ROOT / name, source / name, **kwargs)
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-w", str(out), str(source)])
    (built,) = out.glob("attngen-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("target")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
          "--target", str(target), str(wheel)])
    return target


def test_wheel_holds_every_module_and_template(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    package = ROOT / "attngen"
    wanted = {p.relative_to(ROOT).as_posix() for p in package.rglob("*")
              if p.suffix in (".py", ".jinja") and "__pycache__" not in p.parts}
    templates = {name for name in wanted if name.startswith("attngen/codegen/templates/")}
    assert len(templates) >= 8, templates              # fwd, bwd, decode, linear, common parts
    assert not wanted - names, f"missing from {wheel.name}: {sorted(wanted - names)}"


# Runs in the subprocess, with only the installed wheel importable.
SCRIPT = """
import json, sys
from pathlib import Path

import torch

import attngen
from attngen.checking import relative_error

target, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
cases = json.loads((out / "cases.json").read_text())
result = {"attngen": str(Path(attngen.__file__).resolve()), "target": str(target)}
if target not in Path(result["attngen"]).parents:          # not the installed copy: stop here
    (out / "result.json").write_text(json.dumps(result))
    sys.exit(0)

spec = attngen.Spec(name="wheel_smoke", query_heads=2, kv_heads=1, head_dim=16, mask=attngen.causal())
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, heads, 19, 16, generator=g) for heads in (2, 1, 1))
out_, lse = attngen.compile(spec)(q, k, v, return_lse=True)
want_out, want_lse = attngen.reference(spec, q, k, v)
result["errors"] = {"out": relative_error(out_, want_out), "lse": relative_error(lse, want_lse)}

for path, name, kind in cases:
    (out / f"{name}.{kind}.py").write_text(attngen.emit(path, kernel=kind))
(out / "result.json").write_text(json.dumps(result))
"""


def test_installed_wheel_runs_a_spec_and_emits_every_shipped_kernel(installed, tmp_path):
    work, out, cache = tmp_path / "cwd", tmp_path / "out", tmp_path / "cache"
    for folder in (work, out, cache):
        folder.mkdir()
    (work / "smoke.py").write_text(SCRIPT)
    (out / "cases.json").write_text(json.dumps(CASES))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_CACHE_DIR")}
    env.update(PYTHONPATH=str(installed), ATTNGEN_CACHE_DIR=str(cache))
    _run([sys.executable, str(work / "smoke.py"), str(installed), str(out)], cwd=work, env=env)

    result = json.loads((out / "result.json").read_text())
    assert Path(result["target"]) in Path(result["attngen"]).parents, \
        f"the subprocess imported {result['attngen']}, not the wheel installed in {installed}"
    for name, error in result["errors"].items():
        assert error <= TOLERANCE[torch.float32], f"{name}: relative error {error:.3e} (float32)"
    assert any(p.is_file() for p in cache.rglob("*")), "the run cached nothing under ATTNGEN_CACHE_DIR"

    assert SPEC_FILES, f"no specs in {ROOT / 'specs'}"
    for _, name, kind in CASES:
        golden = GOLDEN / f"{name}.{kind}.py.golden"
        assert golden.exists(), f"no golden copy {golden.name}: see tests/codegen/test_golden.py"
        assert (out / f"{name}.{kind}.py").read_text() == golden.read_text(), \
            f"{name} {kind}: the installed wheel emits a kernel that differs from {golden.name}"
