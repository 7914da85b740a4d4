"""Metrics (docs metrics.md): speaker verification (with calibration, score normalisation, bootstrap intervals), distances between embedding sets, classifier scores, MR-STFT."""

from .bootstrap import Interval, paired_difference, verification_intervals
from .calibration import Calibration, act_dcf, bayes_threshold, cllr, fit_calibration, min_cllr
from .classifier import am_score, inception_score, modified_inception_score, ndb
from .score_norm import SCORE_NORMS, cohort_stats, snorm_trials
from .distances import (SampleSizeWarning, conditional_distances, fd_infinity, frechet_distance,
                        frechet_distance_splits, gaussian_stats, kernel_distance, mmd2_unbiased, speaker_similarity,
                        speaker_similarity_ceiling)
from .spectral import PWG_RESOLUTIONS, PairedFiles, mr_stft_distance, paired_files
from .verification import (best_f_measure, cosine_scores, equal_error_rate, equal_error_rate_threshold, min_dcf,
                           min_dcf_threshold, normalize_rows, operating_points, pair_scores, roc, sap_san,
                           verification_report)

__all__ = [
    "SCORE_NORMS", "Calibration", "Interval", "act_dcf", "bayes_threshold", "cllr", "cohort_stats", "fit_calibration",
    "min_cllr", "paired_difference", "snorm_trials", "verification_intervals",
    "PWG_RESOLUTIONS", "PairedFiles", "am_score", "inception_score", "modified_inception_score", "mr_stft_distance",
    "ndb", "paired_files",
    "SampleSizeWarning", "best_f_measure", "conditional_distances", "cosine_scores", "equal_error_rate",
    "equal_error_rate_threshold", "fd_infinity", "frechet_distance", "frechet_distance_splits", "gaussian_stats",
    "kernel_distance", "min_dcf", "min_dcf_threshold", "mmd2_unbiased", "normalize_rows", "operating_points", "pair_scores", "roc",
    "sap_san", "speaker_similarity", "speaker_similarity_ceiling", "verification_report",
]

# Generated-speech metrics comparable across embedding spaces, their two-level bootstrap, the unbounded AM score.
from .classifier import am_unbounded_classes  # noqa: E402
from .resample import (DEFAULT_SET_REPLICATES, bootstrap_sets, frechet_distance_sets, set_intervals,  # noqa: E402
                       set_statistics, two_level_indices)
from .similarity import FAR_TARGET, comparable_similarity, far_threshold, real_trials, speaker_centroids  # noqa: E402

__all__ += [
    "DEFAULT_SET_REPLICATES", "FAR_TARGET", "am_unbounded_classes", "bootstrap_sets", "comparable_similarity",
    "far_threshold", "frechet_distance_sets", "real_trials", "set_intervals", "set_statistics", "speaker_centroids",
    "two_level_indices",
]
