"""``attngen``: the command line. One module per subcommand, each with ``add_parser(subparsers)``
(returning its parser) and ``run(args) -> int``; adding a command is one line in `COMMANDS`.

Errors the user can act on (a refused spec, a missing file, a bad size or flag, a spec the
compiler cannot lower yet) print one line, ``attngen: error: ...``, on stderr and exit with
status 2; argparse's usage errors too (without the usage block it would print above them).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import CompileError, ShapeError, SpecError
from . import cache, check, cost, emit, run, show
from .common import CommandError

COMMANDS = [check, cost, show, run, emit, cache]

EXAMPLES = """examples:
  attngen check specs/                                  validate every shipped spec
  attngen cost specs/gqa.yaml --n 4096 --layers 32      FLOPs, bytes, KV cache, receptive field
  attngen cost specs/longformer.yaml --n 16384 --json   the same as one JSON object
  attngen show specs/bigbird.yaml --n 2048 --block 128  which tiles are full, partial, empty
  attngen run specs/mha.yaml --n 64                     compile, run on random inputs, check
  attngen emit specs/mha.yaml --stage ttgir             the generated kernel at any stage
  attngen cache list                                    compiled kernels on disk: spec, key, size, age
  attngen cache clear specs/mha.yaml                    drop one spec's entries (no SPEC: all)

'attngen COMMAND --help' explains each command. Docs: docs/cli.md."""

# OSError: a missing or unreadable spec, a --png path in a folder that does not exist.
HANDLED = (SpecError, ShapeError, CompileError, OSError, ValueError, CommandError)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line that points at --help; subcommand parsers inherit the class."""

    def error(self, message: str):
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _OneLineParser(
        prog="attngen", description="attngen: a compiler for attention. Specs in YAML, lowered "
                                    "to Triton kernels with exact tile skipping.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"attngen {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND",
                                       required=True)
    for module in COMMANDS:
        module.add_parser(subparsers).set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (argparse's own exits included)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:       # --help, --version, or a usage error (status 2)
        return exit_.code if isinstance(exit_.code, int) else 0
    try:
        return args.handler(args)
    except BrokenPipeError:           # the reader went away (`attngen show ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no error at exit's flush
        return 1
    except HANDLED as err:
        message = " ".join(str(err).split("\n"))
        print(f"attngen: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
