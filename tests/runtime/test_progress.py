"""Progress lines on stderr: what, for which spec, how long; only for a person at a terminal,
silenced by ATTNGEN_QUIET, routed through the logger (never twice) under ATTNGEN_LOG."""
from __future__ import annotations

import io
import logging
import subprocess
import sys

import pytest

from attngen import Spec, progress
from attngen.runtime import cache


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def watch(monkeypatch):
    """watch() makes stderr a terminal (inside the test: pytest's capture resets sys.stderr
    between a fixture's setup and the test's call)."""
    monkeypatch.delenv("ATTNGEN_QUIET", raising=False)
    monkeypatch.delenv("ATTNGEN_LOG", raising=False)

    def install() -> Terminal:
        stream = Terminal()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream
    return install


def test_generating_a_kernel_says_what_for_which_spec_and_how_long(watch):
    terminal = watch()
    cache.generated(Spec(name="progress_gen", query_heads=2, kv_heads=1, head_dim=16, causal=True), "fwd")
    lines = terminal.getvalue().splitlines()
    assert lines[0] == "attngen: progress_gen: generating the fwd kernel ..."
    assert lines[1].startswith("attngen: progress_gen: generating the fwd kernel: ") and lines[1].endswith(" s")
    float(lines[1].rsplit(": ", 1)[1].removesuffix(" s"))
    terminal.truncate(0)
    cache.generated(Spec(name="progress_gen", query_heads=2, kv_heads=1, head_dim=16, causal=True), "fwd")
    assert terminal.getvalue() == ""                         # a cache hit has nothing to wait for


def test_a_failing_step_says_so(watch):
    terminal = watch()
    with pytest.raises(ZeroDivisionError), progress.step("x: dividing"):
        1 / 0
    assert terminal.getvalue().splitlines()[-1].startswith("attngen: x: dividing: failed after ")


def test_quiet_when_asked_or_when_stderr_is_not_a_terminal(watch, monkeypatch):
    terminal = watch()
    monkeypatch.setenv("ATTNGEN_QUIET", "1")
    progress.say("quiet please")
    assert terminal.getvalue() == ""
    monkeypatch.delenv("ATTNGEN_QUIET")
    monkeypatch.setattr(sys, "stderr", io.StringIO())     # a pipe or a file
    progress.say("nobody watching")
    assert sys.stderr.getvalue() == ""


def test_under_attngen_log_the_logger_prints_it_once(watch, monkeypatch, caplog):
    terminal = watch()
    monkeypatch.setenv("ATTNGEN_LOG", "info")
    with caplog.at_level(logging.INFO, logger="attngen.progress"):
        progress.say("through the logger")
    assert terminal.getvalue() == ""
    assert [r.getMessage() for r in caplog.records] == ["through the logger"]


def test_python_dash_m_attngen_is_the_command_line():
    done = subprocess.run([sys.executable, "-m", "attngen", "check", "specs/mha.yaml"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "mha" in done.stdout and done.stderr == ""
    done = subprocess.run([sys.executable, "-m", "attngen", "check", "nowhere.yaml"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("attngen: error: ")
    assert "Traceback" not in done.stderr


def test_ahead_of_time_compilation_names_the_target_and_the_candidate(watch):
    """What `attngen emit --stage ptx` prints while it compiles (it used to be silent for seconds)."""
    import torch

    import attngen

    terminal = watch()
    spec = Spec(name="progress_aot", query_heads=2, kv_heads=1, head_dim=16, causal=True)
    attngen.compile(spec).compile_for("sm_80", torch.float16)
    done = [line for line in terminal.getvalue().splitlines() if "compiling" in line and "..." not in line]
    assert done and done[0].startswith("attngen: progress_aot: compiling the fwd kernel for sm_80 "
                                       "(float16, BLOCK_M=")
    assert "num_warps=" in done[0] and done[0].endswith(" s")
