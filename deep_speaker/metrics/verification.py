"""Speaker-verification metrics (docs metrics.md): cosine scores, SAP/SAN, ROC, exact EER, minDCF, best F-measure.

Every threshold metric is computed for all thresholds at once from one sort of the scores. The decision
rule is the original's: a trial is accepted ("same speaker") when ``score > θ``. The operating points are
``θ`` = every distinct score plus one value just below the smallest score (everything accepted), so the
ROC runs from (FAR, FRR) = (1, 0) to (0, 1).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..errors import DeepSpeakerError


class OperatingPoints(NamedTuple):
    """Counts at every threshold of the ROC, thresholds ascending (accept when ``score > threshold``)."""

    thresholds: np.ndarray  # float64 [k]
    true_accepts: np.ndarray  # targets with score > θ
    false_accepts: np.ndarray  # non-targets with score > θ
    n_target: int  # a count, or a weight sum (float) for weighted trials (the bootstrap)
    n_nontarget: int


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """x_i / ||x_i||_2 for each row, in float64; a zero or non-finite row is an error (its cosine is undefined)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DeepSpeakerError(f"embeddings must be a 2-D array [n, d], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise DeepSpeakerError("embeddings hold a zero or non-finite row: cosine similarity is undefined")
    return x / norms


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity ``a_i·b_i / (|a_i| |b_i|)`` of two [n, d] arrays (or two vectors), float64."""
    a2, b2 = np.atleast_2d(a), np.atleast_2d(b)
    if a2.shape != b2.shape:
        raise DeepSpeakerError(f"cosine_scores needs arrays of the same shape, got {a2.shape} and {b2.shape}")
    scores = np.einsum("ij,ij->i", normalize_rows(a2), normalize_rows(b2))
    return scores if np.ndim(a) > 1 else scores[0]


TRIAL_CHUNK = 65_536  # trials gathered at a time: 2 x 128 MiB of 512-d float32 rows, not 4 GiB for 10^6 trials


def trial_scores(embeddings: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine ``e_first[k] · e_second[k]`` of trials given as row indices into (unnormalised) embeddings, float64."""
    e = normalize_rows(embeddings)
    first, second = np.asarray(first), np.asarray(second)
    out = np.empty(first.size)
    for i in range(0, first.size, TRIAL_CHUNK):
        out[i:i + TRIAL_CHUNK] = np.einsum("ij,ij->i", e[first[i:i + TRIAL_CHUNK]], e[second[i:i + TRIAL_CHUNK]])
    return out


def pair_scores(embeddings: np.ndarray, speakers: Any) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores and labels (1 = same speaker) of all unordered pairs ``i < j``, in ``np.triu_indices`` order."""
    e = normalize_rows(embeddings)
    spk = np.asarray(speakers)
    if spk.shape != (e.shape[0],):
        raise DeepSpeakerError(f"need one speaker label per embedding: {spk.shape[0] if spk.ndim else 0} for {e.shape[0]}")
    i, j = np.triu_indices(e.shape[0], k=1)
    gram = e @ e.T
    return gram[i, j], (spk[i] == spk[j]).astype(np.int8)


def sap_san(embeddings: np.ndarray, speakers: Any) -> tuple[float, float]:
    """SAP / SAN: mean cosine *similarity* over same-speaker / different-speaker unordered pairs ``i < j``.

    Pair sums come from centroids rather than the n x n Gram matrix: for unit vectors,
    ``Σ_{i<j} e_i·e_j = (|Σ e_i|² - n) / 2`` over any group, so the cost is O(n d) and memory O(d).
    """
    e = normalize_rows(embeddings)
    spk = np.asarray(speakers)
    if spk.shape != (e.shape[0],):
        raise DeepSpeakerError(f"need one speaker label per embedding: {spk.shape[0] if spk.ndim else 0} for {e.shape[0]}")
    _, inverse, counts = np.unique(spk, return_inverse=True, return_counts=True)
    sums = np.zeros((counts.size, e.shape[1]))
    np.add.at(sums, inverse, e)
    # Unit rows: |e_i|² = 1 exactly up to rounding; use the actual squared norms so the identity is exact.
    sq = np.einsum("ij,ij->i", e, e)
    same_sum = 0.5 * (np.einsum("ij,ij->", sums, sums) - sq.sum())
    total = e.sum(axis=0)
    all_sum = 0.5 * (total @ total - sq.sum())
    n = e.shape[0]
    n_same = int(np.sum(counts * (counts - 1) // 2))
    n_diff = n * (n - 1) // 2 - n_same
    if n_same == 0:
        raise DeepSpeakerError("SAP needs a speaker with at least two utterances (no same-speaker pair)")
    if n_diff == 0:
        raise DeepSpeakerError("SAN needs at least two speakers (no different-speaker pair)")
    return float(same_sum / n_same), float((all_sum - same_sum) / n_diff)


def _check_trials(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 and labels as bool, same 1-D shape, finite, both classes present."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    lab = np.asarray(labels).ravel()
    if s.shape != lab.shape:
        raise DeepSpeakerError(f"scores and labels differ in length: {s.size} and {lab.size}")
    if not np.all(np.isfinite(s)):
        raise DeepSpeakerError("scores hold NaN or infinite values")
    if not np.all((lab == 0) | (lab == 1)):
        raise DeepSpeakerError("labels must be 1 (same speaker) or 0 (different speakers)")
    lab = lab.astype(bool)
    n_target = int(lab.sum())
    if n_target == 0 or n_target == lab.size:
        kind = "non-target (different-speaker)" if n_target else "target (same-speaker)"
        raise DeepSpeakerError(f"verification metrics need both target and non-target trials; no {kind} trial given")
    return s, lab


class SortedTrials(NamedTuple):
    """Trials sorted by score once, so operating points under many trial weightings (bootstrap) cost O(n) each."""

    order: np.ndarray  # argsort of the scores (stable)
    labels: np.ndarray  # bool, in sorted order
    thresholds: np.ndarray  # float64 [k]: one below the smallest score, then each distinct score
    ends: np.ndarray  # the last sorted index of each run of equal scores


def sort_trials(scores: Any, labels: Any) -> SortedTrials:
    """The trials checked and sorted by score, with the runs of equal scores (a threshold cannot split ties)."""
    s, lab = _check_trials(scores, labels)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    ends = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))
    thresholds = np.concatenate(([np.nextafter(s_sorted[0], -np.inf)], s_sorted[ends]))
    return SortedTrials(order, lab[order], thresholds, ends)


def weighted_points(trials: SortedTrials, weights: np.ndarray | None = None) -> OperatingPoints:
    """Accept counts (or weight sums) ``Σ w · [score > θ]`` per class at every threshold, by cumulative sums."""
    w = np.ones(trials.labels.size, dtype=np.int64) if weights is None else np.asarray(weights)[trials.order]
    targets_at_or_below = np.cumsum(np.where(trials.labels, w, 0))[trials.ends]
    all_at_or_below = np.cumsum(w)[trials.ends]
    n_target, n_all = targets_at_or_below[-1], all_at_or_below[-1]
    n_nontarget = n_all - n_target
    if n_target <= 0 or n_nontarget <= 0:
        raise DeepSpeakerError("verification metrics need both target and non-target trials with positive weight")
    true_accepts = n_target - np.concatenate(([0], targets_at_or_below))
    false_accepts = n_nontarget - np.concatenate(([0], all_at_or_below - targets_at_or_below))
    return OperatingPoints(trials.thresholds, true_accepts, false_accepts, n_target, n_nontarget)


def operating_points(scores: Any, labels: Any) -> OperatingPoints:
    """Accept counts at every distinct score threshold from one sort: ``#{score > θ}`` per class by cumulative sums."""
    points = weighted_points(sort_trials(scores, labels))
    return points._replace(n_target=int(points.n_target), n_nontarget=int(points.n_nontarget))


def _points(scores: Any, labels: Any | None) -> OperatingPoints:
    """Reuse precomputed operating points (passed as ``scores`` with ``labels=None``) or compute them."""
    if labels is None and isinstance(scores, OperatingPoints):
        return scores
    return operating_points(scores, labels)


def roc(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(thresholds, FAR, FRR)`` at every distinct threshold, accept when ``score > θ``: FAR = FA/N_non, FRR = 1 - TA/N_tgt."""
    p = _points(scores, labels)
    far = p.false_accepts / p.n_nontarget
    frr = 1.0 - p.true_accepts / p.n_target
    return p.thresholds, far, frr


def equal_error_rate_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """``(EER, θ)`` where FAR = FRR, linearly interpolated between the two ROC points that bracket the crossing."""
    thresholds, far, frr = roc(scores, labels)
    diff = far - frr  # strictly decreasing from 1 to -1 along the ROC
    k = int(np.argmax(diff <= 0))
    t = diff[k - 1] / (diff[k - 1] - diff[k])
    eer = far[k - 1] + t * (far[k] - far[k - 1])
    threshold = thresholds[k - 1] + t * (thresholds[k] - thresholds[k - 1])
    return float(eer), float(threshold)


def equal_error_rate(scores: Any, labels: Any) -> float:
    """EER: the rate where FAR = FRR on the ROC, by linear interpolation between the bracketing points."""
    return equal_error_rate_threshold(scores, labels)[0]


def min_dcf_threshold(scores: Any, labels: Any, *, p_target: float = 0.01, c_miss: float = 1.0,
                      c_fa: float = 1.0) -> tuple[float, float]:
    """``(minDCF, θ)``: ``min_θ [C_miss FRR p + C_fa FAR (1-p)] / min(C_miss p, C_fa (1-p))``."""
    if not 0.0 < p_target < 1.0:
        raise DeepSpeakerError(f"p_target must lie in (0, 1), got {p_target}")
    thresholds, far, frr = roc(scores, labels)
    dcf = c_miss * frr * p_target + c_fa * far * (1.0 - p_target)
    k = int(np.argmin(dcf))
    return float(dcf[k] / min(c_miss * p_target, c_fa * (1.0 - p_target))), float(thresholds[k])


def min_dcf(scores: Any, labels: Any, *, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised minimum detection cost ``min_θ DCF(θ) / min(C_miss p, C_fa (1-p))`` (NIST SRE / VoxSRC)."""
    return min_dcf_threshold(scores, labels, p_target=p_target, c_miss=c_miss, c_fa=c_fa)[0]


def best_f_measure(scores: Any, labels: Any) -> dict[str, float]:
    """Values at the threshold of best ``F = 2PR/(P+R) = 2TP/(2TP+FP+FN)`` (the original's ``evaluate``).

    Ties in F go to the lowest threshold. Precision is 0 where nothing is accepted.
    """
    p = _points(scores, labels)
    tp, fp = p.true_accepts, p.false_accepts
    fn = p.n_target - tp
    f = 2.0 * tp / (2.0 * tp + fp + fn)  # the denominator is ≥ n_target > 0
    k = int(np.argmax(f))
    n = p.n_target + p.n_nontarget
    accepted = tp[k] + fp[k]
    return {
        "threshold": float(p.thresholds[k]),
        "f_measure": float(f[k]),
        "precision": float(tp[k] / accepted) if accepted else 0.0,
        "tpr": float(tp[k] / p.n_target),
        "fpr": float(fp[k] / p.n_nontarget),
        "accuracy": float((tp[k] + p.n_nontarget - fp[k]) / n),
    }


def verification_report(scores: Any, labels: Any, *, embeddings: np.ndarray | None = None,
                        speakers: Any | None = None) -> dict[str, Any]:
    """All verification numbers of one trial set (one sort); SAP/SAN (cosine *similarity*) when embeddings are given.

    ``scores``/``labels`` may be None when ``embeddings`` and ``speakers`` are given: all pairs are then scored.
    """
    if scores is None:
        if embeddings is None or speakers is None:
            raise DeepSpeakerError("verification_report needs scores and labels, or embeddings and speakers")
        scores, labels = pair_scores(embeddings, speakers)
    p = operating_points(scores, labels)
    eer, eer_threshold = equal_error_rate_threshold(p, None)
    s, lab = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    report: dict[str, Any] = {
        "n_trials": p.n_target + p.n_nontarget,
        "n_target": p.n_target,
        "n_nontarget": p.n_nontarget,
        "mean_target_score": float(s[lab].mean()),
        "mean_nontarget_score": float(s[~lab].mean()),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "min_dcf": {},
        "best_f": best_f_measure(p, None),
    }
    for p_target in (0.01, 0.05):
        value, threshold = min_dcf_threshold(p, None, p_target=p_target)
        report["min_dcf"][f"p_target={p_target}"] = {"min_dcf": value, "threshold": threshold}
    if embeddings is not None and speakers is not None:
        sap, san = sap_san(embeddings, speakers)
        report["sap"], report["san"] = sap, san
        report["sap_san_note"] = "cosine similarity (the original README printed 1 - similarity)"
    return report
