"""Bootstrap intervals of generated-vs-real set metrics (docs metrics.md): resample speakers, then utterances.

Utterances of one speaker are not independent, so a replicate first draws the speakers (the union of both
sets' labels) with replacement, then, for every drawn copy of a speaker, as many of its real and of its generated
utterances as it has, with replacement; a speaker drawn k times brings k such draws under its own label. The real
and generated sets are resampled with the same speaker draw, so each generated speaker keeps its real
reference. Unlabelled rows ("") are resampled as one group in every replicate. Each metric is recomputed on the
replicate (thresholds and centroids too) and the interval is the percentile interval of the replicates.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import DeepSpeakerError
from .bootstrap import MIN_SPEAKERS, Interval, percentile_interval
from .constants import DEFAULT_SET_REPLICATES, check_replicates
from .distances import SampleSizeWarning, frechet_distance, gaussian_stats, kernel_distance
from .similarity import FAR_TARGET, comparable_similarity

SetStatistic = Callable[[np.ndarray, np.ndarray], Mapping[str, Any]]


def frechet_distance_sets(x: Any, y: Any) -> float:
    """FD of two sets of rows, ``|μx - μy|² + ‖A‖²_F + ‖B‖²_F - 2 ‖A Bᵀ‖_*``, A = (x - μx)/√(n_x - 1), B likewise.

    ``S_x = AᵀA`` and ``S_y = BᵀB``, and the non-zero eigenvalues of ``S_x S_y`` are the squared singular values
    of ``A Bᵀ``, so ``Tr((S_x S_y)^½)`` is its nuclear norm: an n_x x n_y SVD instead of two d x d
    eigendecompositions when the sets are smaller than the dimension (the bootstrap's case); otherwise
    :func:`frechet_distance` of the Gaussian statistics.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if min(x.shape[0], y.shape[0]) > x.shape[1]:
        return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    if min(x.shape[0], y.shape[0]) < 2:
        raise DeepSpeakerError(f"a covariance needs at least 2 samples, got {min(x.shape[0], y.shape[0])}")
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    a, b = (x - mu_x) / np.sqrt(x.shape[0] - 1), (y - mu_y) / np.sqrt(y.shape[0] - 1)
    diff = mu_x - mu_y
    return float(diff @ diff + np.vdot(a, a) + np.vdot(b, b) - 2.0 * np.linalg.svd(a @ b.T, compute_uv=False).sum())


class _Groups:
    """Rows of one set grouped by speaker code (codes into the shared sorted names), plus its unlabelled rows."""

    def __init__(self, labels: np.ndarray, names: np.ndarray) -> None:
        labelled = labels != ""
        codes = np.searchsorted(names, labels[labelled])
        self.rows = np.flatnonzero(labelled)[np.argsort(codes, kind="stable")]
        self.sizes = np.bincount(codes, minlength=names.size)
        self.starts = np.concatenate(([0], np.cumsum(self.sizes)[:-1]))
        self.unlabelled = np.flatnonzero(~labelled)

    def draw(self, speakers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each drawn speaker, its rows drawn with replacement (as many as it has); then the unlabelled rows."""
        each = np.repeat(speakers, self.sizes[speakers])
        offsets = (rng.random(each.size) * self.sizes[each]).astype(np.int64)
        unlabelled = rng.choice(self.unlabelled, self.unlabelled.size) if self.unlabelled.size else self.unlabelled
        return np.concatenate([self.rows[self.starts[each] + offsets], unlabelled])


def speaker_names(real_labels: Any, gen_labels: Any) -> np.ndarray:
    """The sorted speakers of both sets (unlabelled "" left out): the units a replicate draws."""
    return np.setdiff1d(np.union1d(np.asarray(real_labels, dtype=str), np.asarray(gen_labels, dtype=str)), [""])


def two_level_indices(real_labels: Any, gen_labels: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of one replicate of both sets: speakers with replacement, then each one's utterances with
    replacement (the same speaker draw for both sets)."""
    real_labels, gen_labels = np.asarray(real_labels, dtype=str), np.asarray(gen_labels, dtype=str)
    names = speaker_names(real_labels, gen_labels)
    speakers = rng.integers(0, names.size, names.size)
    return _Groups(real_labels, names).draw(speakers, rng), _Groups(gen_labels, names).draw(speakers, rng)


def bootstrap_sets(real_labels: Any, gen_labels: Any, statistic: SetStatistic,
                   *, replicates: int = DEFAULT_SET_REPLICATES, seed: int = 0) -> dict[str, np.ndarray]:
    """``statistic(real_rows, gen_rows)`` (a dict of floats) on each of ``replicates`` two-level resamples.

    A replicate where a value cannot be computed (None, non-finite, or a DeepSpeakerError, e.g. a draw of one
    speaker has no different-speaker trial) is redrawn; more redraws than replicates is an error.
    """
    real_labels, gen_labels = np.asarray(real_labels, dtype=str), np.asarray(gen_labels, dtype=str)
    # The verifier's trials and the centroids are the real set's: it must have the speakers to resample.
    n_real = np.setdiff1d(real_labels, [""]).size
    if n_real < MIN_SPEAKERS:
        raise DeepSpeakerError(f"a speaker bootstrap needs at least {MIN_SPEAKERS} speakers with real utterances, "
                               f"the real set has {n_real}")
    check_replicates(replicates)
    rng = np.random.default_rng(seed)
    rows: list[Mapping[str, Any]] = []
    redrawn = 0
    while len(rows) < replicates:
        try:
            values = statistic(*two_level_indices(real_labels, gen_labels, rng))
        except DeepSpeakerError:
            values = None
        if values is None or any(v is None or not np.isfinite(v) for v in values.values()):
            redrawn += 1
            if redrawn > replicates:
                raise DeepSpeakerError("most speaker resamples leave a metric undefined: too few speakers with "
                                       "several utterances for a bootstrap")
            continue
        rows.append(values)
    return {key: np.array([r[key] for r in rows], dtype=np.float64) for key in rows[0]}


def set_statistics(real: np.ndarray, real_labels: np.ndarray, *, gen: np.ndarray, gen_labels: np.ndarray,
                   real_rows: np.ndarray, gen_rows: np.ndarray, far: float = FAR_TARGET, num_subsets: int = 100,
                   subset_size: int = 1000, seed: int = 0) -> dict[str, float | None]:
    """The interval metrics of the rows given: SECS, rescaled SECS, acceptance at θ_EER and θ_far, EER (generated
    and real), FD (:func:`frechet_distance_sets`) and KD (mean over the subsets)."""
    x, y = real[real_rows], gen[gen_rows]
    sim = comparable_similarity(y, gen_labels[gen_rows], real=x, real_labels=real_labels[real_rows], far=far,
                                real_origins=real_rows)
    g, r = sim["generated"], sim["real"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleSizeWarning)  # the subset size is reported with the point value
        kd = kernel_distance(x, y, num_subsets=num_subsets, subset_size=subset_size, seed=seed)[0]
    return {"secs": g["secs"], "secs_rescaled": g["secs_rescaled"], "accept_eer": g["accept_eer"],
            "accept_far": g["accept_far"], "eer": g["eer"], "fd": frechet_distance_sets(x, y), "kd": kd,
            "real_eer": r["eer"], "real_accept_eer": r["accept_eer"], "real_accept_far": r["accept_far"]}


def set_intervals(real: Any, real_labels: Any, *, gen: Any, gen_labels: Any, far: float = FAR_TARGET,
                  num_subsets: int = 100, subset_size: int = 1000, seed: int = 0,
                  replicates: int = DEFAULT_SET_REPLICATES, level: float = 0.95) -> dict[str, Interval]:
    """Each :func:`set_statistics` metric on all rows with its two-level bootstrap percentile interval (metrics
    undefined on all rows, e.g. SECS of an unlabelled set, are left out). One ``seed`` seeds the resampling and
    the KD subsets."""
    real, gen = np.asarray(real, dtype=np.float64), np.asarray(gen, dtype=np.float64)
    real_labels, gen_labels = np.asarray(real_labels, dtype=str), np.asarray(gen_labels, dtype=str)

    def statistic(real_rows: np.ndarray, gen_rows: np.ndarray) -> dict[str, float | None]:
        values = set_statistics(real, real_labels, gen=gen, gen_labels=gen_labels, real_rows=real_rows,
                                gen_rows=gen_rows, far=far, num_subsets=num_subsets,
                                subset_size=subset_size, seed=seed)
        return {k: values[k] for k in keys}

    point = set_statistics(real, real_labels, gen=gen, gen_labels=gen_labels, real_rows=np.arange(len(real)),
                           gen_rows=np.arange(len(gen)), far=far,
                           num_subsets=num_subsets, subset_size=subset_size, seed=seed)
    keys = [k for k, v in point.items() if v is not None]
    values = bootstrap_sets(real_labels, gen_labels, statistic, replicates=replicates, seed=seed)
    return {k: Interval(float(point[k]), *percentile_interval(values[k], level)) for k in keys}
