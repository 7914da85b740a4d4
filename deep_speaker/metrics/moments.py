"""Mergeable embedding statistics: count, sum and sum of outer products (float64), per chunk or shard.

The Gaussian statistics FD needs (mean and unbiased covariance) follow from the three sums alone, and sums of
disjoint parts add: the statistics of a set too large to hold are the merge of its shards' moments, computed
where each shard was embedded. Products of two float32 values are exact in float64, so the only rounding is
that of the additions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from ..errors import DeepSpeakerError
from .distances import _as_set


@dataclass(frozen=True)
class Moments:
    """``count`` rows, their ``total`` (sum, [d]) and ``outer`` (sum of x xᵀ, [d, d]), float64."""

    count: int
    total: np.ndarray
    outer: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.total.shape[0])


def moments(x: Any) -> Moments:
    """The moments of the rows of ``x`` [n, d] (n may be 0)."""
    arr = _as_set(x, "x")
    return Moments(arr.shape[0], arr.sum(axis=0), arr.T @ arr)


def merge_moments(parts: Iterable[Moments]) -> Moments:
    """The moments of the union of disjoint parts (their sums); a one-line error for none or mixed widths."""
    parts = list(parts)
    if not parts:
        raise DeepSpeakerError("no moments to merge")
    dims = {p.dim for p in parts}
    if len(dims) > 1:
        raise DeepSpeakerError(f"moments of different widths cannot be merged: {sorted(dims)}")
    return Moments(sum(p.count for p in parts), np.sum([p.total for p in parts], axis=0),
                   np.sum([p.outer for p in parts], axis=0))


def moments_gaussian(m: Moments) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` as :func:`~deep_speaker.metrics.distances.gaussian_stats` gives them (unbiased covariance)."""
    if m.count < 2:
        raise DeepSpeakerError(f"a covariance needs at least 2 samples, got {m.count}")
    mu = m.total / m.count
    # (Σ x xᵀ - n mu muᵀ) / (n - 1); symmetrised so rounding leaves no asymmetry for eigh to read.
    sigma = (m.outer - m.count * np.outer(mu, mu)) / (m.count - 1)
    return mu, 0.5 * (sigma + sigma.T)
