"""The README's first Python example runs as written, on whatever device is here (CPU: Triton's
interpreter), in bounded time: it is the first code a newcomer copies."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECONDS = 120          # about 10 s on a 2-core machine from an empty cache


def first_python_block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(f"\n{heading}\n"):]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, f"no python block under {heading!r}"
    return found.group(1)


def test_the_first_python_example_runs_as_written(tmp_path):
    code = first_python_block_after("## A spec")
    assert 'device="cuda"' not in code            # the device is chosen from what is here
    env = {**os.environ, "ATTNGEN_CACHE_DIR": str(tmp_path / "cache"), "ATTNGEN_QUIET": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=README.parent, env=env,
                          capture_output=True, text=True, timeout=SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "@triton.jit" in done.stdout and "longformer" in done.stdout
    assert time.perf_counter() - start < SECONDS
