"""Docs check: the README's worked examples run as written, on the bundled speech.

Every command line of the README's code blocks runs, in order, in a scratch folder with the placeholders
($CACHE_DIR, a.wav, real_speech/, ...) pointing at bundled files. Lines that need the network or the
environment set-up itself are listed in NOT_RUN with the test that covers them; training lines (train_cli.py,
deep-speaker train) get a few steps at a tiny width appended (their defaults train for hours).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = REPO / "samples" / "librispeech" / "test-other"
NOT_RUN = {
    "bash quickstart.sh": "tests/test_determinism.py runs the same job at a reduced size",
    "bash scripts/test.sh": "this suite (CI runs it: .ci/run)",
    "bash scripts/install.sh": "CI runs it",
    ". .venv/bin/activate": "environment set-up",
    "./download_vctk.sh": "needs the network; tests/test_download_vctk.py serves it locally",
}
FAST_TRAINING = ["--steps", "2", "--save-every", "1", "--width", "0.0625", "--batch-size", "12"]


def readme_commands() -> list[str]:
    """Command lines of the README's bash and python blocks (continuations joined, comments dropped)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for lang, body in re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.S):
        if lang == "python":
            commands.append("PYTHON:" + body)
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not any(line.startswith(skip) for skip in NOT_RUN):
                commands.append(line)
    return commands


def scratch(tmp: Path) -> dict[str, str]:
    """Files and folders the placeholders stand for."""
    flacs = sorted(HELD_OUT.rglob("*.flac"))
    data, rate = sf.read(flacs[0])
    sf.write(tmp / "a.wav", data, rate)
    (tmp / "b.flac").symlink_to(flacs[10])
    (tmp / "b.wav").symlink_to(tmp / "b.flac")
    (tmp / "samples").symlink_to(REPO / "samples")
    (tmp / "voxceleb1").mkdir()
    (tmp / "voxceleb1" / "wav").symlink_to(HELD_OUT)
    rel = [f.relative_to(HELD_OUT) for f in flacs]
    (tmp / "veri_test.txt").write_text(f"1 {rel[0]} {rel[1]}\n0 {rel[0]} {rel[10]}\n1 {rel[10]} {rel[11]}\n")
    return {"$CACHE_DIR": str(tmp / "cache"), "$AUDIO_DIR": str(HELD_OUT), "real_speech/": str(HELD_OUT) + "/"}


# Runs the README's lines one after another in one fresh interpreter, each as its entry point would (the
# `deep-speaker` script is deep_speaker.cli:main; `python FILE` runs FILE as __main__): the model frameworks are
# imported once rather than once per line (25 lines), and this test's own process stays untouched. Prints one JSON
# record per line: its exit code and what it wrote.
DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback
from deep_speaker.cli import main
for kind, *args in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if kind == "deep-speaker":
                code = main(args)
            elif kind == "file":
                sys.argv = list(args)
                runpy.run_path(args[0], run_name="__main__")
                code = 0
            else:
                exec(compile(args[0], "<README>", "exec"), {"__name__": "__main__"})
                code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 99
    print(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}), flush=True)
    if code:
        break
"""


def as_entry_point(command: str, values: dict[str, str]) -> list[str]:
    """A README line as the driver runs it: ["deep-speaker", args...], ["file", path, args...] or ["code", text]."""
    if command.startswith("PYTHON:"):
        return ["code", command[len("PYTHON:"):]]
    for placeholder, value in values.items():
        command = command.replace(placeholder, value)
    args = shlex.split(command)
    if args[0] == "python":
        return ["file", str(REPO / args[1]), *args[2:], *(FAST_TRAINING if args[1].endswith("train_cli.py") else [])]
    assert args[0] == "deep-speaker", f"a README line the test cannot run: {command}"
    return ["deep-speaker", *args[1:], *(FAST_TRAINING if args[1] == "train" else [])]


@pytest.mark.slow
def test_readme_examples_run_as_written(tmp_path: Path) -> None:
    values = scratch(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    commands = readme_commands()
    done = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps([as_entry_point(c, values) for c in commands]),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"code"')]
    ran = []
    for command, record in zip(commands, records):
        assert record["code"] == 0, f"{command}\n{record['stdout'][-1500:]}\n{record['stderr'][-1500:]}"
        ran.append((command, record["stdout"]))
    assert done.returncode == 0 and len(ran) == len(commands), done.stderr[-3000:]
    assert len(ran) >= 14
    outputs = "\n".join(out for _, out in ran)
    assert "SAP (mean cosine similarity" in outputs and "SAN (mean cosine similarity" in outputs
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fd"]["full"] > 0  # the last report.json: held-out speech against its 10 dB noisy copy
    assert (tmp_path / "plots").is_dir() and any((tmp_path / "plots").glob("*.png"))
    assert (tmp_path / "real.npz").is_file() and (tmp_path / "1688_embeddings.npz").is_file()
