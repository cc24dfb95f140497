"""Progress on stderr for the steps a person waits on: generating a kernel, compiling it, running
it under Triton's interpreter. Each says what, for which spec, and how long it took:

    attngen: longformer: generating the fwd kernel ...
    attngen: longformer: generating the fwd kernel: 0.05 s

Printed only where someone is watching: stderr is a terminal and ATTNGEN_QUIET is not set. With
ATTNGEN_LOG set the same lines go to the ``attngen.progress`` logger instead (which prints them,
terminal or not), so they are never printed twice. Pipes, CI logs and tests stay clean.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time

from . import env

log = logging.getLogger("attngen.progress")


def _printing() -> bool:
    if env.quiet() or env.log_level() is not None:
        return False
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):     # a closed or replaced stream
        return False


def say(message: str) -> None:
    """One progress line: to the logger (always, at info) and to a watched terminal."""
    log.info("%s", message)
    if _printing():
        print(f"attngen: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(what: str):
    """``with step("longformer: generating the fwd kernel"):`` says it starts, then its time."""
    say(f"{what} ...")
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        say(f"{what}: failed after {time.perf_counter() - start:.2f} s")
        raise
    say(f"{what}: {time.perf_counter() - start:.2f} s")
