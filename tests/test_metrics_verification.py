"""Verification metrics against independent references (scikit-learn, plain loops) on real speech scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_curve

from deep_speaker.errors import DeepSpeakerError
from deep_speaker.metrics import (
    best_f_measure,
    cosine_scores,
    equal_error_rate,
    equal_error_rate_threshold,
    min_dcf,
    pair_scores,
    roc,
    sap_san,
    verification_report,
)


def sklearn_eer(scores, labels):
    """Reference EER: where fpr and fnr = 1 - tpr of sklearn's roc_curve cross, linearly interpolated."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    k = np.flatnonzero(fpr - fnr >= 0)[0]  # along sklearn's descending thresholds fpr rises from 0, fnr falls to 0
    d0, d1 = fpr[k - 1] - fnr[k - 1], fpr[k] - fnr[k]
    t = d0 / (d0 - d1)
    return fpr[k - 1] + t * (fpr[k] - fpr[k - 1])


def loop_min_dcf(scores, labels, p_target, c_miss=1.0, c_fa=1.0):
    """Reference minDCF: every threshold (each score and below the minimum), accept when score > θ."""
    best = np.inf
    for thr in np.concatenate([[scores.min() - 1], np.unique(scores)]):
        accept = scores > thr
        frr = np.mean(~accept[labels == 1])
        far = np.mean(accept[labels == 0])
        best = min(best, c_miss * frr * p_target + c_fa * far * (1 - p_target))
    return best / min(c_miss * p_target, c_fa * (1 - p_target))


def test_pair_scores_match_a_double_loop(mfcc_vectors, real_trials):
    scores, labels = pair_scores(*mfcc_vectors)
    np.testing.assert_allclose(scores, real_trials[0], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(labels, real_trials[1])
    assert labels.sum() == 10 * 45  # 10 speakers x C(10, 2)


def test_cosine_scores_rowwise(mfcc_vectors):
    x, _ = mfcc_vectors
    a, b = x[:10], x[10:20]
    expected = [np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v) for u, v in zip(a, b)]
    np.testing.assert_allclose(cosine_scores(a, b), expected, rtol=1e-12)
    assert cosine_scores(a[0], b[0]) == pytest.approx(expected[0], rel=1e-12)


def test_sap_san_match_a_double_loop(mfcc_vectors):
    x, spk = mfcc_vectors
    same, diff = [], []
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            cos = np.dot(x[i], x[j]) / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
            (same if spk[i] == spk[j] else diff).append(cos)
    sap, san = sap_san(x, spk)
    assert sap == pytest.approx(np.mean(same), rel=1e-10)
    assert san == pytest.approx(np.mean(diff), rel=1e-10)
    assert sap > san


def test_eer_matches_sklearn_roc_on_real_scores(real_trials):
    scores, labels = real_trials
    expected = sklearn_eer(scores, labels)
    assert 0 < expected < 0.5
    assert equal_error_rate(scores, labels) == pytest.approx(expected, rel=1e-12)


def test_eer_with_ties_matches_sklearn(real_trials):
    scores, labels = real_trials
    coarse = np.round(scores, 3)  # many tied scores
    assert np.unique(coarse).size < coarse.size / 5
    assert equal_error_rate(coarse, labels) == pytest.approx(sklearn_eer(coarse, labels), rel=1e-12)


def test_eer_is_invariant_to_monotone_rescaling_outside_unit_interval(real_trials):
    scores, labels = real_trials
    eer, thr = equal_error_rate_threshold(scores, labels)
    eer2, thr2 = equal_error_rate_threshold(40 * scores - 50, labels)
    assert eer2 == pytest.approx(eer, rel=1e-9)
    assert thr2 == pytest.approx(40 * thr - 50, rel=1e-9)
    # At the EER threshold, the empirical FAR and FRR bracket the EER.
    far, frr = np.mean(scores[labels == 0] > thr), np.mean(scores[labels == 1] <= thr)
    assert min(far, frr) - 1e-2 <= eer <= max(far, frr) + 1e-2


def test_eer_exact_small_case():
    # Targets 0.6, 0.9; non-targets 0.1, 0.7. ROC points (FAR, FRR): (1,0) (.5,0) (.5,.5) (0,.5) (0,1): EER 0.5.
    assert equal_error_rate([0.6, 0.9, 0.1, 0.7], [1, 1, 0, 0]) == pytest.approx(0.5)
    # Perfect separation: EER 0.
    assert equal_error_rate([0.8, 0.9, 0.1, 0.2], [1, 1, 0, 0]) == pytest.approx(0.0)


@pytest.mark.parametrize("p_target,c_miss,c_fa", [(0.01, 1, 1), (0.05, 1, 1), (0.1, 10, 1)])
def test_min_dcf_matches_a_threshold_loop(real_trials, p_target, c_miss, c_fa):
    scores, labels = real_trials
    expected = loop_min_dcf(scores, labels, p_target, c_miss, c_fa)
    assert min_dcf(scores, labels, p_target=p_target, c_miss=c_miss, c_fa=c_fa) == pytest.approx(expected, rel=1e-12)
    assert 0 < expected <= 1


def test_best_f_matches_a_loop_and_sklearn(real_trials):
    scores, labels = real_trials
    best = None
    for thr in np.concatenate([[scores.min() - 1], np.unique(scores)]):
        pred = scores > thr
        tp = np.sum(pred & (labels == 1))
        fp = np.sum(pred & (labels == 0))
        fn = np.sum(~pred & (labels == 1))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn)
        f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if best is None or f > best[0]:
            best = (f, thr, precision, recall, np.mean(pred == (labels == 1)))
    got = best_f_measure(scores, labels)
    assert got["f_measure"] == pytest.approx(best[0], rel=1e-12)
    assert got["precision"] == pytest.approx(best[2], rel=1e-12)
    assert got["tpr"] == pytest.approx(best[3], rel=1e-12)
    assert got["accuracy"] == pytest.approx(best[4], rel=1e-12)
    assert np.sum(scores > got["threshold"]) == np.sum(scores > best[1])
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f_sk = np.nan_to_num(2 * precision * recall / (precision + recall))
    assert got["f_measure"] == pytest.approx(f_sk.max(), rel=1e-12)


def test_roc_endpoints_and_monotone(real_trials):
    thresholds, far, frr = roc(*real_trials)
    assert (far[0], frr[0], far[-1], frr[-1]) == (1.0, 0.0, 0.0, 1.0)
    assert np.all(np.diff(far) <= 0) and np.all(np.diff(frr) >= 0) and np.all(np.diff(thresholds) > 0)


def test_report_agrees_with_the_functions(mfcc_vectors, real_trials):
    scores, labels = real_trials
    embeddings, speakers = mfcc_vectors
    report = verification_report(None, None, embeddings=embeddings, speakers=speakers)
    assert report["n_target"] == labels.sum() and report["n_nontarget"] == (labels == 0).sum()
    assert report["eer"] == pytest.approx(equal_error_rate(scores, labels), rel=1e-12)
    expected = min_dcf(scores, labels, p_target=0.05)
    assert report["min_dcf"]["p_target=0.05"]["min_dcf"] == pytest.approx(expected, rel=1e-12)
    assert report["best_f"] == pytest.approx(best_f_measure(scores, labels))
    assert report["sap"] == pytest.approx(report["mean_target_score"], rel=1e-10)
    assert report["san"] == pytest.approx(report["mean_nontarget_score"], rel=1e-10)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_one_class_is_a_clear_error(labels):
    with pytest.raises(DeepSpeakerError, match="both target and non-target"):
        equal_error_rate([0.1, 0.2, 0.3], labels)


def test_bad_input_errors():
    with pytest.raises(DeepSpeakerError, match="differ in length"):
        min_dcf([0.1, 0.2], [1, 0, 1])
    with pytest.raises(DeepSpeakerError, match="NaN"):
        best_f_measure([0.1, np.nan], [1, 0])
    with pytest.raises(DeepSpeakerError, match="at least two speakers"):
        sap_san(np.eye(3) + 1, ["a", "a", "a"])
    with pytest.raises(DeepSpeakerError, match="zero"):
        pair_scores(np.zeros((2, 3)), ["a", "b"])
