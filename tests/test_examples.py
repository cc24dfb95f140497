"""Every file in examples/ runs to completion (STYLE: every example is run by a test)."""
import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", [str(path)])          # as `python examples/<file>` runs it
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip()


@pytest.mark.slow
def test_benchmark_smoke_agrees_with_flex_attention():
    import subprocess
    import sys
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    subprocess.run([sys.executable, str(bench), "--smoke"], check=True, capture_output=True)
