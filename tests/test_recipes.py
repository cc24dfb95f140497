"""Every `python` block of docs/recipes.md runs as written (each in a fresh interpreter, on
whatever device is here), in bounded time; each block checks its own result."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
SECONDS = 90           # the slowest block takes about 10 s on a 2-core machine from an empty cache


def blocks() -> list[tuple[str, str]]:
    """(section heading, code) of every python block, in order."""
    found, heading = [], None
    for part in re.split(r"(^## .*$)", RECIPES.read_text(), flags=re.M):
        if part.startswith("## "):
            heading = part[3:].strip()
            continue
        found += [(heading, code) for code in re.findall(r"```python\n(.*?)```", part, re.S)]
    return found


def test_every_recipe_section_has_a_block():
    headings = [line[3:].strip() for line in RECIPES.read_text().splitlines() if line.startswith("## ")]
    assert headings and sorted(headings) == sorted(h for h, _ in blocks())


@pytest.mark.parametrize("heading, code", [pytest.param(h, c, id=re.sub(r"\W+", "-", h).strip("-").lower())
                                           for h, c in blocks()])
def test_recipe_runs(heading, code, tmp_path):
    if "transformers" in code and importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed (pip install 'attngen[transformers]')")
    env = {**os.environ, "ATTNGEN_CACHE_DIR": str(tmp_path / "cache"), "ATTNGEN_QUIET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(RECIPES.parents[1]), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=RECIPES.parents[1], env=env,
                          capture_output=True, text=True, timeout=SECONDS)
    assert done.returncode == 0, f"recipe {heading!r} failed:\n{done.stderr[-3000:]}"
    assert time.perf_counter() - start < SECONDS
