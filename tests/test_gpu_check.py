"""benchmarks/gpu_check.sh end to end on this CPU with the JAX backend, in tiny settings (the GPU run is the same
command with its defaults), and its one-line refusal when packages are missing and no wheel folder is there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_gpu_check_trains_on_jax(libri_mini, tmp_path):
    steps, batch = 3, 6
    audio = tmp_path / "audio"  # 4 speakers x 3 utterances of test-other: a short feature cache build
    for spk_dir in sorted((libri_mini / "test-other").iterdir())[:4]:
        for src in sorted(spk_dir.rglob("*.flac"))[:3]:
            link = audio / src.relative_to(libri_mini / "test-other")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
    # As on a GPU host without TensorFlow: `import tensorflow` fails (Keras then seeds and runs without it).
    blocked = tmp_path / "no-tensorflow" / "tensorflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('tensorflow is blocked by this test')\n")
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu", "WHEELS": str(tmp_path / "no-wheels"),
           "PYTHONPATH": str(blocked.parent)}
    started = time.perf_counter()
    run = subprocess.run([str(SCRIPT), "--steps", str(steps), "--warmup", "1", "--batch", str(batch), "--width",
                          "0.0625", "--audio", str(audio), "--workers", "2",
                          "--json", str(tmp_path / "figures.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert "tensorflow" not in figures["frameworks"]
    assert figures["devices"] and all(d.startswith("cpu:") for d in figures["devices"])
    assert figures["steps"] == steps and figures["finite"]
    timed = figures["wait_s"] + figures["step_s"]
    # The timed window lies inside the run as this test's clock measured it, and the rate is batch x steps over it.
    assert 0 < timed < wall
    assert figures["samples_per_s"] == pytest.approx(batch * steps / timed)
    assert figures["kept_up"] == (figures["wait_s"] < 0.05 * timed)
    lines = run.stdout.splitlines()
    assert any(line.startswith("samples/s ") for line in lines)
    gpu_line = next(line for line in lines if line.startswith("accelerator: "))
    assert gpu_line == "accelerator: no GPU" if shutil.which("nvidia-smi") is None else "utilisation" in gpu_line
    assert any(line.startswith("input pipeline: waited ") for line in lines)


def test_gpu_check_without_packages_or_wheels_is_one_line(tmp_path):
    # An interpreter without site-packages lacks keras and the rest, as a bare GPU host does.
    bare = tmp_path / "python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(0o755)
    run = subprocess.run([str(SCRIPT)], env={**os.environ, "PYTHON": str(bare), "WHEELS": str(tmp_path / "none")},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert len(run.stderr.splitlines()) == 1 and "keras" in run.stderr and str(tmp_path / "none") in run.stderr
