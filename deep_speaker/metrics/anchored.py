"""Noise-anchored scores (TTSDS, Minixhofer et al. 2024; docs metrics.md): a distance to real speech put on a
0-100 scale between the real reference (100) and the nearest of several noise sets (0), and the 1-D Wasserstein
distance that TTSDS uses for one-dimensional features (here: the per-utterance speaker similarities).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DeepSpeakerError


def _distances(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise DeepSpeakerError(f"{name} holds NaN or infinite values")
    if np.any(arr < 0.0):
        raise DeepSpeakerError(f"{name} must not be negative, got {arr.min():g}")
    return arr


def noise_anchored_score(d_real: Any, d_noise: Any) -> Any:
    """``100 · m / (m + d_real)`` with ``m = min_k d_noise[..., k]`` (TTSDS): 100 at the real reference, 0 at the nearest noise set.

    ``d_real``: distances ``[...]`` of the evaluated sets to the real reference; ``d_noise``: ``[..., k]``, the last
    axis the k ≥ 1 noise sets (``d_real`` broadcasts against ``d_noise[..., 0]``). Distances must be finite and
    ≥ 0; ``d_real = m = 0`` (undefined) is refused. A float for scalar input, else an array.
    """
    real, noise = _distances(d_real, "d_real"), _distances(d_noise, "d_noise")
    if noise.ndim < 1 or noise.shape[-1] == 0:
        raise DeepSpeakerError("d_noise needs a last axis of at least one noise set")
    nearest = noise.min(axis=-1)
    total = nearest + real
    if np.any(total == 0.0):
        raise DeepSpeakerError("d_real and the nearest d_noise are both 0: the anchored score is undefined")
    score = 100.0 * nearest / total
    return float(score) if score.ndim == 0 else score


def nearest_noise(d_noise: Any) -> Any:
    """Index of the nearest noise set (``argmin`` over the last axis of ``d_noise``; the first of ties)."""
    noise = _distances(d_noise, "d_noise")
    if noise.ndim < 1 or noise.shape[-1] == 0:
        raise DeepSpeakerError("d_noise needs a last axis of at least one noise set")
    index = noise.argmin(axis=-1)
    return int(index) if index.ndim == 0 else index


def wasserstein_1d(x: Any, y: Any, p: int = 2) -> float:
    """``(∫₀¹ |F_x⁻¹(u) - F_y⁻¹(u)|^p du)^(1/p)``: the p-Wasserstein distance of two empirical 1-D distributions.

    Exact for unequal sizes (the quantile functions are step functions; the integral runs over the union of their
    steps). For equal sizes and p = 2 it is ``sqrt(mean((sort(x) - sort(y))²))``, TTSDS' one-dimensional distance.
    """
    if p not in (1, 2):
        raise DeepSpeakerError(f"p must be 1 or 2, got {p}")
    a = np.sort(np.asarray(x, dtype=np.float64).ravel())
    b = np.sort(np.asarray(y, dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        raise DeepSpeakerError("the Wasserstein distance needs two non-empty samples")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise DeepSpeakerError("the samples hold NaN or infinite values")
    # Breakpoints of both quantile functions on (0, 1]; on each interval both are constant.
    steps = np.union1d(np.arange(1, a.size + 1) / a.size, np.arange(1, b.size + 1) / b.size)
    widths = np.diff(steps, prepend=0.0)
    mids = steps - widths / 2
    qa = a[np.minimum((mids * a.size).astype(np.int64), a.size - 1)]
    qb = b[np.minimum((mids * b.size).astype(np.int64), b.size - 1)]
    return float((widths @ np.abs(qa - qb) ** p) ** (1.0 / p))
