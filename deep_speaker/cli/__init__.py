"""The ``deep-speaker`` command: a thin layer over the Python API.

Each subcommand lives in a module of this package that exposes ``register(subparsers)``; the
module sets ``func`` on its parser, a function ``(args) -> int`` returning the exit code.

Exit codes: 0 success, 1 some inputs failed (reported, the rest processed), 2 usage error
(bad arguments, missing model or data, incompatible settings), 3 an unexpected error (a bug: the message asks
for a report; ``--verbose`` shows the traceback).

The library reports progress and notices through ``logging`` (loggers under ``deep_speaker``); the CLI shows
them on stderr, INFO and above, or DEBUG with ``--verbose``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from typing import Callable, Iterator, Sequence

from ..errors import DeepSpeakerError, printable

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_CRASH = 0, 1, 2, 3

# The modules of this package that register the subcommands, in the order ``--help`` lists them; the command names
# are written once, in each module's parsers. A module imports only light modules (no numpy, no model framework)
# at its top: a command's heavy imports happen when it runs, so that --help and usage errors answer at once.
COMMAND_MODULES = ("run", "cache", "train", "embed", "verification", "trials", "generated", "similarity",
                   "export_model")


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
        epilog="Exit codes: 0 ok, 1 some inputs failed (reported and skipped), 2 usage error, 3 unexpected error.")
    parser.add_argument("--verbose", action="store_true", help="debug messages, and the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def program_name() -> str:
    """The command's name for messages: the script's, or deep-speaker (also under python -m deep_speaker)."""
    name = os.path.basename(sys.argv[0])
    return "deep-speaker" if name in ("", "__main__.py", "-c") else name


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command: a user error is one line on stderr and exit 2, anything else one line and exit 3.

    With --verbose the exception propagates, traceback included. The library's log lines go to stderr.
    """
    configure_logging(getattr(args, "verbose", False))
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. '| head'): nothing more to say, and nobody to say it to
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PARTIAL
    except Exception as exc:
        if getattr(args, "verbose", False):
            raise
        # printable: a path in a message (a newline or bytes that are not UTF-8 in a file name) keeps it one line.
        if isinstance(exc, DeepSpeakerError):
            print(f"{program_name()}: error: {printable(str(exc))}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, OSError):  # disk full, permissions, an output path that is a folder: the user's to fix
            where = f"{printable(str(exc.filename))}: " if exc.filename else ""
            print(f"{program_name()}: error: {where}{printable(str(exc.strerror or exc))}", file=sys.stderr)
            return EXIT_USAGE
        first_line = printable((str(exc).splitlines() or [""])[0])
        print(f"{program_name()}: internal error: {type(exc).__name__}: {first_line} (a bug in deep-speaker: "
              f"run again with --verbose for the traceback and please report it)", file=sys.stderr)
        return EXIT_CRASH


class StderrHandler(logging.StreamHandler):
    """A log handler writing to whatever ``sys.stderr`` is at each record (a captured or redirected stream too)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the property always answers sys.stderr
        pass


def configure_logging(verbose: bool = False) -> None:
    """Show the library's log records on stderr as plain lines: INFO and above, DEBUG too with ``verbose``."""
    logger = logging.getLogger("deep_speaker")
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
