"""Shared fixtures: the real speech bundled in samples/, the original code's reference checkpoint, real trial
scores."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every thread pool a stage sums in: TensorFlow's (and oneDNN's, which runs in it) intra- and inter-op pools, and
# OpenMP / BLAS (numpy, scipy's sqrtm of the Fréchet distance).
THREAD_VARS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "MKL_NUM_THREADS")
# Under pytest-xdist each worker (and every process a test starts from it) gets its share of the cores for every
# thread pool, unless the caller set one: two workers each running TensorFlow's and OpenMP's pools at the full core
# count oversubscribe the machine. Set before numpy and TensorFlow are imported (they read these once).
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    for _name in THREAD_VARS:
        os.environ.setdefault(_name, str(max(1, (os.cpu_count() or 1) // _XDIST_WORKERS)))

import numpy as np  # noqa: E402  (after the thread counts: its BLAS reads them once, when it loads)

REPO = Path(__file__).resolve().parents[1]
LIBRI_MINI = REPO / "samples" / "librispeech"  # shipped with the clone: the suite needs nothing outside it
# The original code's 97 MB checkpoint is not shipped: read from this variable, else from the team's shared data
# beside the clone (as CI has it).
REFERENCE_ENV = "DEEP_SPEAKER_REFERENCE_CHECKPOINT"
REFERENCE_CHECKPOINT = Path(os.environ.get(REFERENCE_ENV) or REPO.parent / "shared" / "data" / "reference-checkpoint")


@contextlib.contextmanager
def local_cluster(workers: int = 2, **kwargs) -> Iterator:
    """A Dask LocalCluster of worker processes on 127.0.0.1 (one thread each, no dashboards), closed on exit.

    distributed sets OMP_NUM_THREADS=1 (and MKL/OpenBLAS threads, PYTHONHASHSEED) in this process's environment
    for its workers and leaves them there: every later subprocess of the suite would then run single-threaded and
    sum in another order. The environment is restored when the cluster closes.
    """
    from distributed import LocalCluster  # a missing package fails the tests (pinned in requirements.txt)

    saved = dict(os.environ)
    try:
        with LocalCluster(n_workers=workers, processes=True, threads_per_worker=1, host="127.0.0.1",
                          dashboard_address=None, worker_dashboard_address=None, **kwargs) as cluster:
            yield cluster
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def restores_process_state() -> Iterator[None]:
    """Every test leaves the process as it found it: the environment (Dask sets thread counts in it), the working
    directory, and the handlers, level and propagation of the package's logger (the CLI adds a handler and stops
    propagation), so no test passes or fails by what an earlier one left (#30: never flaky)."""
    environ, cwd = dict(os.environ), os.getcwd()
    logger = logging.getLogger("deep_speaker")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    if dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)
    os.chdir(cwd)
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture(scope="session")
def libri_mini() -> Path:
    """The bundled LibriSpeech sample: test-other (10 speakers x 10) and train-clean-100 (232 x 1)."""
    if not LIBRI_MINI.is_dir():
        pytest.fail(f"real speech data missing: {LIBRI_MINI} (part of the repository)")
    return LIBRI_MINI


@pytest.fixture(scope="session")
def reference_checkpoint() -> Path:
    """The checkpoint the original code saved, with its inputs and outputs; the one thing the clone does not hold,
    so the one skip of the suite (a single line: every test that needs it skips from here)."""
    if not (REFERENCE_CHECKPOINT / "reference.npz").is_file():
        pytest.skip(f"needs the original code's reference checkpoint: set {REFERENCE_ENV} to a folder holding "
                    f"ResCNN_random_triplet.h5 and reference.npz (not found at {REFERENCE_CHECKPOINT})")
    return REFERENCE_CHECKPOINT


def roc_thresholds(scores: np.ndarray, labels: np.ndarray, far: float | None = None) -> dict:
    """The EER (with its threshold, interpolated between ROC points) and, given ``far``, the threshold at that rate
    of false accepts, from scikit-learn's ROC curve: the independent reference of the EERs and thresholds we
    report."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    frr = 1.0 - tpr
    # sklearn's point j accepts score >= thr[j], which is "score > thr[j + 1]" (the next lower distinct score).
    theta = np.append(thr[1:], np.nextafter(scores.min(), -np.inf))
    i = np.flatnonzero(fpr - frr >= 0)[0]
    d_hi, d_lo = fpr[i] - frr[i], fpr[i - 1] - frr[i - 1]
    found = {"theta_eer": theta[i] + d_hi / (d_hi - d_lo) * (theta[i - 1] - theta[i]),
             "eer": fpr[i - 1] + (d_lo / (d_lo - d_hi)) * (fpr[i] - fpr[i - 1])}
    if far is not None:
        found["theta_far"] = theta[np.flatnonzero(fpr <= far)[-1]]
    return found


def sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """The EER where scikit-learn's FAR and FRR cross, interpolated between ROC points (:func:`roc_thresholds`)."""
    return float(roc_thresholds(np.asarray(scores), np.asarray(labels))["eer"])


@pytest.fixture(scope="session")
def mfcc_vectors(libri_mini):
    """Per-utterance mean and std of the fbank features of test-other (10 speakers x 10): 128-d real vectors."""
    from deep_speaker.data.features import extract_features

    paths = sorted((libri_mini / "test-other").rglob("*.flac"))
    vectors = []
    for path in paths:
        feats = extract_features(path).astype(np.float64)
        vectors.append(np.concatenate([feats.mean(axis=0), feats.std(axis=0)]))
    return np.array(vectors), np.array([p.parent.parent.name for p in paths])


@pytest.fixture(scope="session")
def real_trials(mfcc_vectors):
    """Cosine scores and labels of all pairs, computed here by a plain double loop (the reference)."""
    x, spk = mfcc_vectors
    scores, labels = [], []
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            scores.append(np.dot(x[i], x[j]) / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])))
            labels.append(int(spk[i] == spk[j]))
    return np.array(scores), np.array(labels)


def pytest_configure(config) -> None:
    """One JAX compilation cache for the whole run (JAX's own persistent cache, read from these variables by every
    JAX process the tests start): the multi-worker, mirrored and input-pipeline tests start a dozen JAX processes
    that compile the same tiny programs, and a resumed worker or a second test then loads them instead of compiling
    again (measured: a 6-step JAX training process from 20 to 8 CPU-seconds). Made once by the controlling process,
    before pytest-xdist starts its workers (they inherit the environment), and removed when the run ends. A cached
    program is the same executable, so no number changes."""
    if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    config._jax_cache = tempfile.mkdtemp(prefix="deep-speaker-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = config._jax_cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the tiny test models compile in under 1 s


def pytest_unconfigure(config) -> None:
    if getattr(config, "_jax_cache", None):
        shutil.rmtree(config._jax_cache, ignore_errors=True)
        del os.environ["JAX_COMPILATION_CACHE_DIR"], os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]


def pytest_collection_modifyitems(config, items) -> None:
    """The files holding a slow (end-to-end) test run first, the others after, each in its own order: under
    pytest-xdist's --dist loadfile --no-loadscope-reorder (scripts/test.sh) a worker takes whole files in this order,
    so the long ones start at once instead of ending the run on one busy worker while the other idles."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group is kept
