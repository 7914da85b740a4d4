"""Classifier scores of generated speech (docs metrics.md): IS, modified IS, AM score, NDB.

``probs`` are [n, K] rows of ``p(y|x)`` (softmax outputs). In IS and mIS logarithms of probabilities floor them
at the smallest normal float64 (2.2e-308) so a zero probability gives a large finite KL, never NaN (0·log 0 = 0).
The AM score's KL is exact instead: it is +inf when the generated set never predicts a class the reference uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.stats
from scipy.special import rel_entr
from sklearn.cluster import KMeans

from ..errors import DeepSpeakerError

_TINY = np.finfo(np.float64).tiny


def _as_probs(probs: Any, name: str = "probs") -> np.ndarray:
    """[n, K] float64 rows of probabilities: non-negative, each summing to 1 within 1e-4."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise DeepSpeakerError(f"{name} must be a non-empty 2-D array [n, classes], got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise DeepSpeakerError(f"{name} must hold finite non-negative probabilities")
    worst = float(np.max(np.abs(p.sum(axis=1) - 1.0)))
    if worst > 1e-4:
        raise DeepSpeakerError(f"{name} rows must sum to 1 (softmax outputs); a row is off by {worst:.3g}")
    return p


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(p, _TINY))


def inception_score(probs: Any, splits: int = 10) -> tuple[float, float]:
    """IS: ``exp(E_x[KL(p(y|x) || p(y))])`` on each of ``splits`` consecutive equal splits; mean and population std."""
    p = _as_probs(probs)
    if not 1 <= splits <= p.shape[0]:
        raise DeepSpeakerError(f"splits must lie in [1, {p.shape[0]}] for {p.shape[0]} samples, got {splits}")
    scores = np.array([np.exp(rel_entr(part, part.mean(axis=0, keepdims=True)).sum(axis=1).mean())
                       for part in np.array_split(p, splits)])
    return float(scores.mean()), float(scores.std())


def modified_inception_score(probs: Any) -> float:
    """mIS: ``exp(E_{i≠j}[KL(p(y|x_i) || p(y|x_j))])`` over all ordered pairs of distinct samples.

    ``Σ_{i≠j} KL_ij = (n-1) Σ_i p_i·log p_i - [(Σ_i p_i)·(Σ_j log p_j) - Σ_i p_i·log p_i]``: O(n K), no n x n matrix.
    """
    p = _as_probs(probs)
    n = p.shape[0]
    if n < 2:
        raise DeepSpeakerError("modified IS needs at least 2 samples")
    logp = _log(p)
    self_terms = np.einsum("ik,ik->", p, logp)
    cross = p.sum(axis=0) @ logp.sum(axis=0) - self_terms
    return float(np.exp(((n - 1) * self_terms - cross) / (n * (n - 1))))


def am_unbounded_classes(ref_probs: Any, gen_probs: Any) -> np.ndarray:
    """The classes the reference predicts (``p_ref(y) > 0``) and the generated set never does (``p_gen(y) = 0``)."""
    ref, gen = _as_probs(ref_probs, "ref_probs"), _as_probs(gen_probs, "gen_probs")
    if ref.shape[1] != gen.shape[1]:
        raise DeepSpeakerError(f"ref_probs and gen_probs differ in classes: {ref.shape[1]} and {gen.shape[1]}")
    return np.flatnonzero((ref.mean(axis=0) > 0) & (gen.mean(axis=0) == 0))


def am_score(ref_probs: Any, gen_probs: Any) -> float:
    """AM score: ``KL(p_ref(y) || p_gen(y)) + E_x[H(p_gen(y|x))]``, p_ref / p_gen the mean predictions.

    ``+inf`` (the true value, not a floor-dependent finite one) when :func:`am_unbounded_classes` is not empty.
    """
    ref, gen = _as_probs(ref_probs, "ref_probs"), _as_probs(gen_probs, "gen_probs")
    if ref.shape[1] != gen.shape[1]:
        raise DeepSpeakerError(f"ref_probs and gen_probs differ in classes: {ref.shape[1]} and {gen.shape[1]}")
    p_ref, p_gen = ref.mean(axis=0), gen.mean(axis=0)
    kl = float(rel_entr(p_ref, p_gen).sum())  # x log(x/y): 0 where x = 0, +inf where x > 0 = y
    entropy = float(-np.einsum("ik,ik->", gen, _log(gen)) / gen.shape[0])
    return kl + entropy


def ndb(ref_features: Any, gen_features: Any, *, bins: int = 50, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """NDB: k-means (K = bins) on the reference, generated samples to the nearest centre, pooled two-proportion
    z-test per bin; NDB = number of bins with p < alpha (also as NDB/K)."""
    ref = np.asarray(ref_features, dtype=np.float64)
    gen = np.asarray(gen_features, dtype=np.float64)
    if ref.ndim != 2 or gen.ndim != 2 or ref.shape[1] != gen.shape[1]:
        raise DeepSpeakerError(f"NDB needs two [n, d] feature arrays of one dimension, got {ref.shape} and {gen.shape}")
    if not 2 <= bins <= ref.shape[0]:
        raise DeepSpeakerError(f"NDB bins must lie in [2, {ref.shape[0]}] (reference samples), got {bins}")
    if gen.shape[0] == 0:
        raise DeepSpeakerError("NDB needs generated samples")
    kmeans = KMeans(n_clusters=bins, n_init=10, random_state=seed).fit(ref)
    ref_counts = np.bincount(kmeans.labels_, minlength=bins)
    gen_counts = np.bincount(kmeans.predict(gen), minlength=bins)
    n_ref, n_gen = ref.shape[0], gen.shape[0]
    p_ref, p_gen = ref_counts / n_ref, gen_counts / n_gen
    pooled = (ref_counts + gen_counts) / (n_ref + n_gen)
    se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n_ref + 1.0 / n_gen))
    # se = 0 only when a bin holds all or none of both sets: the proportions are then equal, z = 0.
    z = np.divide(p_gen - p_ref, se, out=np.zeros(bins), where=se > 0)
    p_values = 2.0 * scipy.stats.norm.sf(np.abs(z))
    significant = p_values < alpha
    return {
        "ndb": int(significant.sum()),
        "ndb_over_k": float(significant.mean()),
        "bins": bins,
        "alpha": alpha,
        "seed": seed,
        "ref_proportions": p_ref,
        "gen_proportions": p_gen,
        "z": z,
        "p_values": p_values,
        "significant": significant,
    }
