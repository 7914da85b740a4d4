"""Shared fixtures: the real speech of ../shared/data (as CI has it beside the clone), real trial scores."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LIBRI_MINI = SHARED_DATA / "librispeech-mini"
REFERENCE_CHECKPOINT = SHARED_DATA / "reference-checkpoint"


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


@pytest.fixture(scope="session")
def libri_mini() -> Path:
    """librispeech-mini: test-other (10 speakers x 10) and train-clean-100 (251 x 1)."""
    if not LIBRI_MINI.is_dir():
        pytest.fail(f"real speech data missing: {LIBRI_MINI}")
    return LIBRI_MINI


@pytest.fixture(scope="session")
def reference_checkpoint() -> Path:
    if not REFERENCE_CHECKPOINT.is_dir():
        pytest.fail(f"reference checkpoint missing: {REFERENCE_CHECKPOINT}")
    return REFERENCE_CHECKPOINT


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
