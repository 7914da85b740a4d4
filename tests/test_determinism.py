"""The main job end to end, through the CLI as a user runs it, and deterministic on one machine (#34): run twice into
two folders at the same thread count it writes the same summary.json (every number) and the same weights, bit for
bit; another thread count moves the training sums (measured and said in test_what_the_thread_count_moves). Across
CPU kinds it need not be the same either (the vector extensions choose the kernels), so summary.json names the
machine (``deep_speaker.machine``). The end-to-end checks read the first of the determinism runs (one job fewer)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from conftest import THREAD_VARS
from deep_speaker.machine import VECTOR_FLAGS, cpu_kind, machine_text
from test_pipeline import PNG_MAGIC, small_corpus

# Every stage runs (caches, both phases, checkpoints, verification, degraded copies), with few steps. Three of the
# default copies: two along one kind (the metrics must grow with the damage) and one of another kind; the mel
# vocoder's Griffin-Lim copies cost 3-4 s each per run and are tested in test_degrade (seeded, ordered by bands).
DEGRADE = "noise@30,noise@10,lowpass@2000"
SMALL_JOB = ["--width", "0.0625", "--softmax-steps", "6", "--triplet-steps", "4", "--batch-size", "24",
             "--workers", "2", "--degrade", DEGRADE]
CHECKPOINTS = [f"{phase}/{name}" for phase in ("softmax", "triplet") for name in ("last.keras", "best.keras")]


def run_job(data: Path, out: Path, threads: int) -> Path:
    """`deep-speaker run` of SMALL_JOB into out, every thread pool at `threads`, the TensorFlow backend."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
           **{name: str(threads) for name in THREAD_VARS}}
    cmd = [sys.executable, "-m", "deep_speaker", "run", "--data", str(data), "-o", str(out), *SMALL_JOB]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out.with_suffix(".stdout").write_text(done.stdout)
    return out


# The job's stages upstream of training (the feature caches and training inputs, the degraded copies), as
# run_main_job calls them.
UPSTREAM = """
import sys
from pathlib import Path
from deep_speaker.data.inputs import generate_training_inputs
from deep_speaker.eval.degrade import degrade_folder
from deep_speaker.job_config import TEST_SUBSET, JobConfig, parse_degradations
from deep_speaker.pipeline import build_caches
cfg = JobConfig(data_dir=Path(sys.argv[1]), output_dir=Path(sys.argv[2]), workers=2,
                degradations=parse_degradations(sys.argv[3]))
train_cache, _ = build_caches(cfg)
generate_training_inputs(train_cache, seed=cfg.seed)  # train_phases' first step: the training inputs in the cache
for kind, level in cfg.degradations:
    degrade_folder(cfg.data_dir / TEST_SUBSET, cfg.output_dir / "degraded" / f"{kind}@{level:g}", kind=kind,
                   level=level, seed=cfg.seed)
"""


def run_upstream(data: Path, out: Path, threads: int) -> Path:
    """The caches and degraded copies of SMALL_JOB's run into out, every thread pool at `threads`."""
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARS}}
    done = subprocess.run([sys.executable, "-c", UPSTREAM, str(data), str(out), DEGRADE], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same job twice on one corpus with 1 thread per pool, and its stages upstream of training with 2 (all
    that test_what_the_thread_count_moves compares: a whole third job would cost a minute for nothing asserted).
    One thread: the suite's other pytest-xdist worker has the second core (tests/conftest.py)."""
    root = tmp_path_factory.mktemp("determinism")
    data = small_corpus(root / "data", train_speakers=8, test_speakers=3)
    return {"first": run_job(data, root / "first", 1), "again": run_job(data, root / "again", 1),
            "two": run_upstream(data, root / "two", 2)}


@pytest.mark.slow
def test_main_job_end_to_end(runs) -> None:
    out = runs["first"]
    data = out.parent / "data"
    assert "Unseen speakers: SAP" in out.with_suffix(".stdout").read_text()

    summary = json.loads((out / "summary.json").read_text())
    # The per-phase profile covers the job's stages in order and adds up to no more than its wall time.
    phases = summary["phase_seconds"]
    assert list(phases) == ["caches", "softmax", "triplet", "verification", "generated"]
    assert all(seconds > 0 for seconds in phases.values())
    assert sum(phases.values()) <= summary["wall_seconds"] + 0.005  # each phase is rounded to 1 ms
    pngs = [Path(p) for p in summary["pngs"]]
    assert {p.name for p in pngs} >= {"det.png", "similarity_matrix.png", "projection_tsne.png"}
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000

    v = summary["verification"]
    # 3 speakers of 10 utterances: 3 x C(10, 2) same-speaker pairs, C(3, 2) x 10 x 10 different-speaker pairs.
    assert v["n_target"] == 3 * 45 and v["n_nontarget"] == 3 * 100
    assert v["sap"] > v["san"]
    assert 0.0 <= v["eer"] <= 0.5

    # The reported SAP/SAN are those of the embeddings the job's checkpoint gives (independent numpy cosine).
    from deep_speaker.encoders.deepspeaker import Embedder

    embedder = Embedder(summary["checkpoint"])
    speakers = sorted(p.name for p in (data / "test-other").iterdir())
    files = [f for s in speakers for f in sorted((data / "test-other" / s).rglob("*.flac"))]
    labels = [f.parent.parent.name for f in files]
    emb = embedder.embed_files(files).astype(np.float64)
    sims = emb @ emb.T
    same = np.equal.outer(labels, labels)
    upper = np.triu(np.ones_like(same), 1).astype(bool)
    assert v["sap"] == pytest.approx(sims[same & upper].mean(), abs=1e-3)
    assert v["san"] == pytest.approx(sims[~same & upper].mean(), abs=1e-3)

    rows = {r["set"]: r for r in summary["degradations"]}
    assert list(rows) == DEGRADE.split(",")  # the copies --degrade names, in its order
    # More damage, larger distances and lower speaker similarity.
    assert rows["noise@10"]["fd"] > rows["noise@30"]["fd"] > 0
    assert rows["noise@10"]["kd"] > rows["noise@30"]["kd"]
    assert rows["noise@10"]["secs"] < rows["noise@30"]["secs"]
    assert rows["lowpass@2000"]["fd"] > 0
    for name in rows:
        report = json.loads((out / "report" / f"compare_{name}.json").read_text())
        assert report["fd"]["full"] == pytest.approx(rows[name]["fd"])


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of a JSON value by its path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in leaves(item, f"{path}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in leaves(item, f"{path}/{i}").items()}
    return {path: value}


def results(out: Path) -> dict[str, Any]:
    """The leaves of summary.json and of every report JSON, the run folder's name replaced (paths differ by it)
    and the wall times left out: everything else must be equal."""
    found = {}
    for path in [out / "summary.json", *sorted((out / "report").glob("*.json"))]:
        text = path.read_text().replace(str(out), "<OUT>")
        found.update({f"{path.name}{k}": v for k, v in leaves(json.loads(text)).items()})
    del found["summary.json/wall_seconds"]
    return {k: v for k, v in found.items() if not k.startswith("summary.json/phase_seconds/")}


def weights(checkpoint: Path) -> dict[str, np.ndarray]:
    """Every array saved in a .keras file (the model's weights, and the optimizer's state in last.keras)."""
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(checkpoint) as zf, h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as h5:
        h5.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                      if isinstance(item, h5py.Dataset) else None)
    return arrays


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two run folders: JSON leaves (compared as their exact JSON text, so NaN equals NaN and
    every float bit counts) and saved arrays (compared byte for byte), each with how much."""
    ra, rb = results(a), results(b)
    found = [f"{k}: {ra.get(k)!r} vs {rb.get(k)!r}" for k in sorted(ra.keys() | rb.keys())
             if json.dumps(ra.get(k)) != json.dumps(rb.get(k))]
    for name in CHECKPOINTS:
        wa, wb = weights(a / "checkpoints" / name), weights(b / "checkpoints" / name)
        assert wa.keys() == wb.keys() and len(wa) > 20, name
        for key in sorted(wa):
            x, y = wa[key], wb[key]
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                diff = np.abs(x.astype(np.float64) - y.astype(np.float64)).max() if x.shape == y.shape else "shape"
                found.append(f"{name}:{key}: max |diff| {diff}")
    return found


@pytest.mark.slow
def test_the_main_job_twice_gives_the_same_numbers_and_weights(runs) -> None:
    found = results(runs["first"])
    # Not a vacuous comparison: the verification figures and every degraded copy's metrics are among the leaves.
    assert {"summary.json/verification/eer", "summary.json/verification/min_dcf/p_target=0.01/min_dcf"} <= found.keys()
    assert len([k for k in found if k.startswith("summary.json/degradations/")]) == 3 * 7
    assert differences(runs["first"], runs["again"]) == []


def same_files(a: Path, b: Path) -> list[str]:
    """The files under folder a, by relative path, after checking that b holds each with the same bytes."""
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert names and names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    return [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]


@pytest.mark.slow
def test_what_the_thread_count_moves(runs) -> None:
    """The thread count is pinned (THREAD_VARS) for the equality above, because training is not the same bits on
    1 and 2 threads: TensorFlow's CPU kernels split their sums by the thread count. Measured 2026-12-07 on a 2-core
    AMD EPYC (avx2, avx512f, avx512_bf16), TensorFlow 2.21.0, this job with 1 thread against 2: every saved array
    differs (1148 of them; after 6 softmax steps the largest |difference| of an array is a median 29 % of its
    largest |weight|, after the 4 triplet steps 1.4-1.8 %), and with them every figure: EER 26.67 against 27.33 %,
    minDCF(0.01) 0.881 against 0.867, noise@30 FD 0.00994 against 0.00987. numpy's BLAS threads also change the
    mel-vocoder copies (eval/degrade.py's least-squares inverse; 60 of 60 files differ in some samples), which this
    job does not make. What is upstream of those kernels does not move: the feature caches and the job's degraded
    copies are the same bytes (checked here on every run: the job's caches and copies against the same stages run
    with 2 threads)."""
    two, first = runs["two"], runs["first"]
    assert same_files(first / "cache", two / "cache") == []
    assert same_files(first / "degraded", two / "degraded") == []


@pytest.mark.slow
def test_summary_names_the_machine(runs) -> None:
    machine = json.loads((runs["first"] / "summary.json").read_text())["machine"]
    assert machine["keras_backend"] == "tensorflow"
    assert machine["python"] == ".".join(map(str, sys.version_info[:3]))
    assert machine["numpy"] == np.__version__
    # The job read TensorFlow's version from the imported module; a fresh interpreter that imports no framework
    # finds the same one from the installed distribution's metadata (tensorflow-cpu's too).
    code = ("import sys; from deep_speaker.machine import module_version as v; "
            "print(v('tensorflow'), v('keras'), 'tensorflow' in sys.modules or 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == [machine["tensorflow"], machine["keras"], "False"], done.stderr[-2000:]
    assert set(machine["cpu_flags"]) <= set(VECTOR_FLAGS)
    assert machine_text(machine).startswith(f"{machine['cores']}-core {machine['cpu']} (")


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_vnni

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_vnni
"""


def test_cpu_kind_from_cpuinfo_and_without_it() -> None:
    assert cpu_kind(CPUINFO, "x86_64") == {"cpu": "Intel(R) Xeon(R) Platinum 8480+",
                                           "cpu_flags": ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]}
    avx2_only = CPUINFO.replace(" avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8", "")
    assert cpu_kind(avx2_only, "x86_64")["cpu_flags"] == ["avx2"]
    # No /proc/cpuinfo (macOS, Windows) or one naming no model (some ARM kernels): platform.processor()'s answer.
    assert cpu_kind(None, "arm") == {"cpu": "arm", "cpu_flags": []}
    assert cpu_kind("processor\t: 0\nFeatures\t: fp asimd\n", "aarch64") == {"cpu": "aarch64", "cpu_flags": []}
    assert cpu_kind(None, "") == {"cpu": "unknown CPU", "cpu_flags": []}
    info = {"cpu": "AMD EPYC", "cpu_flags": [], "cores": 2, "python": "3.11.7", "numpy": "2.4.6",
            "tensorflow": "2.21.0", "keras": "3.15.1", "jax": None, "keras_backend": "tensorflow"}
    assert machine_text(info) == ("2-core AMD EPYC (no x86 vector flags); Python 3.11.7, numpy 2.4.6, "
                                  "TensorFlow 2.21.0, Keras 3.15.1 (tensorflow backend)")
