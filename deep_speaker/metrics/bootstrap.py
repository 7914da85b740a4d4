"""Bootstrap confidence intervals that resample speakers (docs metrics.md), for one system or a paired comparison.

Trials that share a speaker are not independent, so the unit resampled is the speaker: a replicate draws
``n_speakers`` speakers with replacement (counts ``c``) and re-weights every trial instead of copying it —
a target trial of speaker a by ``c_a`` (each copy of a brings its own targets), a non-target trial of a and b by
``c_a c_b`` (every pair of copies). Metrics are computed on the weighted ROC (trials sorted once), and the
interval is the percentile interval of the replicates. A paired comparison applies the same weights to both
systems' scores of the same trials and reports the interval of the difference.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from ..errors import DeepSpeakerError
from .constants import DEFAULT_REPLICATES, DEFAULT_SEED, check_replicates
from .verification import OperatingPoints, equal_error_rate_threshold, min_dcf_threshold, sort_trials, weighted_points

MIN_SPEAKERS = 3  # with fewer, resampling speakers cannot vary the non-target trials
PointsMetric = Callable[[OperatingPoints], float]

# The metrics a verification report gives intervals for: name -> value from weighted operating points.
VERIFICATION_METRICS: dict[str, PointsMetric] = {
    "eer": lambda p: equal_error_rate_threshold(p, None)[0],
    "min_dcf_0.01": lambda p: min_dcf_threshold(p, None, p_target=0.01)[0],
    "min_dcf_0.05": lambda p: min_dcf_threshold(p, None, p_target=0.05)[0],
}


class Interval(NamedTuple):
    """A value (on all trials) with the bounds of its percentile bootstrap interval."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def speaker_codes(first: Sequence[str], second: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of each trial side's speaker and the number of speakers."""
    names, codes = np.unique(np.concatenate([np.asarray(first, dtype=str), np.asarray(second, dtype=str)]),
                             return_inverse=True)
    return codes[:len(first)], codes[len(first):], names.size


def speaker_weights(first: np.ndarray, second: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Trial weights of one speaker resample with ``counts`` copies of each speaker: ``c_a`` for a same-speaker
    trial of a, ``c_a c_b`` for speakers a ≠ b."""
    return np.where(first == second, counts[first], counts[first] * counts[second])


def bootstrap_replicates(systems: Sequence[Any], labels: Any, *, first_speakers: Sequence[str],
                         second_speakers: Sequence[str], metrics: Mapping[str, PointsMetric] = VERIFICATION_METRICS,
                         replicates: int = DEFAULT_REPLICATES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Metric values ``[replicates, n_systems, n_metrics]`` of speaker-resampled trial sets, the same weights for
    every system (their scores of the same trials). A replicate left without a target or non-target is redrawn."""
    first, second, n_speakers = speaker_codes(first_speakers, second_speakers)
    if n_speakers < MIN_SPEAKERS:
        raise DeepSpeakerError(f"a speaker bootstrap needs at least {MIN_SPEAKERS} speakers, the trials have {n_speakers}")
    check_replicates(replicates)
    sorted_systems = [sort_trials(s, labels) for s in systems]
    rng = np.random.default_rng(seed)
    values = np.empty((replicates, len(systems), len(metrics)))
    done = redrawn = 0
    while done < replicates:
        weights = speaker_weights(first, second, rng.multinomial(n_speakers, np.full(n_speakers, 1.0 / n_speakers)))
        try:
            for k, trials in enumerate(sorted_systems):
                points = weighted_points(trials, weights)
                values[done, k] = [metric(points) for metric in metrics.values()]
        except DeepSpeakerError:  # a draw without targets or without non-targets: no ROC
            redrawn += 1
            if redrawn > replicates:
                raise DeepSpeakerError("most speaker resamples lack target or non-target trials: too few speakers "
                                       "with both kinds of trials for a bootstrap") from None
            continue
        done += 1
    return values


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The ``(1-level)/2`` and ``(1+level)/2`` quantiles of the replicates."""
    low, high = np.quantile(samples, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def _on_all_trials(scores: Any, labels: Any, metrics: Mapping[str, PointsMetric]) -> list[float]:
    points = weighted_points(sort_trials(scores, labels))
    return [metric(points) for metric in metrics.values()]


def verification_intervals(scores: Any, labels: Any, *, first_speakers: Sequence[str], second_speakers: Sequence[str],
                           metrics: Mapping[str, PointsMetric] = VERIFICATION_METRICS,
                           replicates: int = DEFAULT_REPLICATES, seed: int = DEFAULT_SEED,
                           level: float = 0.95) -> dict[str, Interval]:
    """Each metric on all trials with its speaker-bootstrap percentile interval."""
    values = bootstrap_replicates([scores], labels, first_speakers=first_speakers, second_speakers=second_speakers,
                                  metrics=metrics, replicates=replicates, seed=seed)
    full = _on_all_trials(scores, labels, metrics)
    return {name: Interval(full[j], *percentile_interval(values[:, 0, j], level)) for j, name in enumerate(metrics)}


def paired_difference(scores_a: Any, scores_b: Any, labels: Any, *, first_speakers: Sequence[str],
                      second_speakers: Sequence[str], metrics: Mapping[str, PointsMetric] = VERIFICATION_METRICS,
                      replicates: int = DEFAULT_REPLICATES, seed: int = DEFAULT_SEED,
                      level: float = 0.95) -> dict[str, Interval]:
    """``metric(a) - metric(b)`` on the same trials with the interval of the paired speaker bootstrap."""
    values = bootstrap_replicates([scores_a, scores_b], labels, first_speakers=first_speakers,
                                  second_speakers=second_speakers, metrics=metrics,
                                  replicates=replicates, seed=seed)
    a, b = _on_all_trials(scores_a, labels, metrics), _on_all_trials(scores_b, labels, metrics)
    return {name: Interval(a[j] - b[j], *percentile_interval(values[:, 0, j] - values[:, 1, j], level))
            for j, name in enumerate(metrics)}
