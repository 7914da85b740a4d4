"""The command line answers at once: building the parser, ``--help`` of every command and a usage error import no
model framework (the timings: benchmarks/bench_cli_startup.py). The command modules are listed once."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

from deep_speaker.cli import COMMAND_MODULES, EXIT_USAGE

FRAMEWORKS = ("tensorflow", "keras", "jax", "torch", "transformers", "onnxruntime")
CLI_DIR = Path(__file__).resolve().parents[1] / "deep_speaker" / "cli"

# Run in a fresh interpreter (this one has imported frameworks through other tests): build the whole parser, ask
# every command and subcommand found in it for --help, then report the commands and which frameworks were imported.
HELP_EVERYWHERE = f"""
import argparse, contextlib, io, json, sys
from deep_speaker.cli import build_parser, main

def commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from commands(sub, prefix + (name,))

helped = []
for command in [(), *commands(build_parser())]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main([*command, "--help"])
        except SystemExit as exit:
            assert exit.code == 0, (command, exit.code)
    assert out.getvalue().startswith("usage: "), command
    helped.append(" ".join(command))
print(json.dumps({{"helped": helped, "frameworks": [m for m in {FRAMEWORKS!r} if m in sys.modules]}}))
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_help_of_every_command_imports_no_model_framework():
    run = _python(HELP_EVERYWHERE)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    assert {"", "run", "cache build", "train softmax", "verify", "compare", "export-model"} <= set(report["helped"])
    assert report["frameworks"] == []


def test_a_usage_error_is_exit_2_without_a_model_framework():
    code = ("import sys\nfrom deep_speaker.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as exit:\n"
            f"    print([m for m in {FRAMEWORKS!r} if m in sys.modules])\n    sys.exit(exit.code)")
    for argv in (["verify", "a.wav", "b.wav", "--no-such-option"], ["train", "softmax", "--steps", "many"],
                 ["embed", "a.wav"], ["no-such-command"]):
        run = _python(code, *argv)
        assert run.returncode == EXIT_USAGE, (argv, run.stderr)
        assert run.stdout.strip() == "[]", argv
        assert "error:" in run.stderr.splitlines()[-1], argv


def test_the_command_modules_are_listed_once_and_each_registers_its_own_commands():
    registered: dict[str, str] = {}
    for name in COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"deep_speaker.cli.{name}").register(sub)
        assert sub.choices, f"cli/{name}.py registers no command"
        for command in sub.choices:
            assert command not in registered, f"{command} registered by cli/{registered[command]}.py and cli/{name}.py"
            registered[command] = name
    assert len(set(COMMAND_MODULES)) == len(COMMAND_MODULES)
    # A module with register() that the list forgets would be a command nobody can run.
    with_register = {p.stem for p in CLI_DIR.glob("*.py") if "\ndef register(" in p.read_text(encoding="utf8")}
    assert with_register == set(COMMAND_MODULES)
