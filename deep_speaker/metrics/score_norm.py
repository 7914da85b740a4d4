"""Score normalisation against a cohort (docs metrics.md): S-norm and adaptive S-norm (AS-norm, top-K cohort).

For a trial (e, t) with cosine score s, each side is compared with every cohort embedding; ``μ_e, σ_e`` are
the mean and (population) standard deviation of e's cohort scores — all of them (S-norm) or its K highest
(AS-norm) — and likewise ``μ_t, σ_t``. The normalised score is ``½ [(s - μ_e)/σ_e + (s - μ_t)/σ_t]``.
Statistics are computed once per embedding, not per trial, so the cost is O((n_items + n_trials) · d).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from ..errors import DeepSpeakerError
from .constants import DEFAULT_TOP_K, SCORE_NORMS
from .verification import normalize_rows, trial_scores

MIN_COHORT = 10  # below this a mean and deviation of cohort scores mean little: refused
CHUNK = 4096  # embeddings scored against the cohort at a time (bounded memory)


class CohortStats(NamedTuple):
    """Mean and standard deviation of each embedding's (top-K) cohort scores."""

    mean: np.ndarray  # float64 [n]
    std: np.ndarray  # float64 [n]

    def take(self, rows: np.ndarray) -> "CohortStats":
        return CohortStats(self.mean[rows], self.std[rows])


def cohort_stats(embeddings: np.ndarray, cohort: np.ndarray, top_k: int | None = None) -> CohortStats:
    """``μ_i, σ_i`` of ``cos(x_i, c_j)`` over the cohort (``top_k=None``) or over the ``top_k`` highest ``j``."""
    x, c = normalize_rows(embeddings), normalize_rows(cohort)
    if x.shape[1] != c.shape[1]:
        raise DeepSpeakerError(f"cohort embeddings are {c.shape[1]}-d, the trial embeddings {x.shape[1]}-d: "
                               f"a cohort must come from the same encoder")
    if c.shape[0] < MIN_COHORT:
        raise DeepSpeakerError(f"a cohort needs at least {MIN_COHORT} embeddings, got {c.shape[0]}")
    if top_k is not None:
        if top_k < 2:
            raise DeepSpeakerError(f"AS-norm needs top_k >= 2, got {top_k}")
        if top_k >= c.shape[0]:
            warnings.warn(f"top_k {top_k} >= cohort size {c.shape[0]}: AS-norm uses the whole cohort (S-norm)",
                          stacklevel=2)
            top_k = None
    means, stds = [], []
    for i in range(0, x.shape[0], CHUNK):
        scores = x[i:i + CHUNK] @ c.T
        if top_k is not None:
            scores = np.partition(scores, scores.shape[1] - top_k, axis=1)[:, -top_k:]
        means.append(scores.mean(axis=1))
        stds.append(scores.std(axis=1))
    std = np.concatenate(stds)
    if np.any(std <= 1e-12):
        raise DeepSpeakerError("an embedding has the same score against every cohort member: the cohort is degenerate")
    return CohortStats(np.concatenate(means), std)


def normalize_scores(scores: np.ndarray, first: CohortStats, second: CohortStats) -> np.ndarray:
    """S-norm of trial scores given each side's cohort statistics: ``½ [(s - μ_e)/σ_e + (s - μ_t)/σ_t]``."""
    s = np.asarray(scores, dtype=np.float64)
    return 0.5 * ((s - first.mean) / first.std + (s - second.mean) / second.std)


def snorm_trials(embeddings: np.ndarray, first: np.ndarray, second: np.ndarray, *, cohort: np.ndarray,
                 method: str = "snorm", top_k: int = DEFAULT_TOP_K) -> np.ndarray:
    """Normalised cosine scores of trials given as row indices ``(first[k], second[k])`` into ``embeddings``."""
    if method not in ("snorm", "asnorm"):
        raise DeepSpeakerError(f"unknown score normalisation {method!r}; choose snorm or asnorm")
    stats = cohort_stats(embeddings, cohort, top_k if method == "asnorm" else None)
    raw = trial_scores(embeddings, first, second)
    return normalize_scores(raw, stats.take(first), stats.take(second))
