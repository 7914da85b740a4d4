"""The ``deep-speaker`` command: a thin layer over the Python API.

Each subcommand lives in a module of this package that exposes ``register(subparsers)``; the
module sets ``func`` on its parser, a function ``(args) -> int`` returning the exit code.

Exit codes: 0 success, 1 some inputs failed (reported, the rest processed), 2 usage error
(bad arguments, missing model or data, incompatible settings).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from typing import Callable, Iterator, Sequence

from ..errors import DeepSpeakerError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

# Subcommand modules, in the order ``--help`` lists them, and the module of each command: only the module of the
# command being run is imported, so that e.g. ``cache info`` does not wait for TensorFlow to load.
COMMAND_MODULES = ("run", "cache", "train", "embed", "verification", "generated")
MODULE_OF = {"run": "run", "cache": "cache", "train": "train", "embed": "embed", "verify": "verification",
             "evaluate-verification": "verification", "stats": "generated", "compare": "generated",
             "degrade": "generated"}


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null meanwhile: TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deep-speaker",
        description="Speaker embeddings (Deep Speaker ResCNN), speaker verification and evaluation of "
                    "generated speech. Run 'deep-speaker COMMAND --help' for the options of a command.",
        epilog="Exit codes: 0 ok, 1 some inputs failed (reported and skipped), 2 usage error.")
    parser.add_argument("--verbose", action="store_true", help="print the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        try:
            with native_stderr_silenced():
                module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; user errors become one line on stderr and exit code 2 (traceback with --verbose)."""
    try:
        return int(func(args) or 0)
    except (DeepSpeakerError, FileNotFoundError) as exc:
        if getattr(args, "verbose", False):
            raise
        print(f"{os.path.basename(sys.argv[0]) or 'deep-speaker'}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def command_modules(argv: Sequence[str]) -> Sequence[str]:
    """The one module the command line names (its first word that is not an option), else all of them."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return (MODULE_OF[command],) if command in MODULE_OF else COMMAND_MODULES


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_modules(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
