"""Metrics (docs metrics.md): speaker verification (with calibration, score normalisation, bootstrap intervals), distances between embedding sets, classifier scores, MR-STFT.

Each name below is imported from its module when first used (PEP 562): SciPy and scikit-learn load with the
metrics that need them, not with a command line that only shows their defaults (``metrics.constants``).
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF: dict[str, str] = {name: module for module, names in {
    "bootstrap": ("Interval", "paired_difference", "verification_intervals"),
    "calibration": ("Calibration", "act_dcf", "bayes_threshold", "cllr", "fit_calibration", "min_cllr"),
    "classifier": ("am_score", "am_unbounded_classes", "inception_score", "modified_inception_score", "ndb"),
    "constants": ("DEFAULT_SET_REPLICATES", "FAR_TARGET", "SCORE_NORMS"),
    "score_norm": ("cohort_stats", "snorm_trials"),
    "distances": ("SampleSizeWarning", "conditional_distances", "fd_infinity", "frechet_distance",
                  "frechet_distance_splits", "gaussian_stats", "kernel_distance", "mmd2_unbiased",
                  "speaker_similarity", "speaker_similarity_ceiling"),
    "spectral": ("PWG_RESOLUTIONS", "PairedFiles", "mr_stft_distance", "paired_files"),
    "verification": ("best_f_measure", "cosine_scores", "equal_error_rate", "equal_error_rate_threshold", "min_dcf",
                     "min_dcf_threshold", "normalize_rows", "operating_points", "pair_scores", "roc", "sap_san",
                     "verification_report"),
    # Generated-speech metrics comparable across embedding spaces and their two-level bootstrap.
    "resample": ("bootstrap_sets", "frechet_distance_sets", "set_intervals", "set_statistics", "two_level_indices"),
    "similarity": ("comparable_similarity", "far_threshold", "real_trials", "speaker_centroids"),
}.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value
