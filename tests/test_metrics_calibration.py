"""Calibration, Cllr/minCllr/actDCF, S-norm/AS-norm and the speaker bootstrap against independent computations
(scipy optimisation, plain loops, a hand-written PAV, literally repeated trials) on real test-other scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from deep_speaker.errors import DeepSpeakerError
from deep_speaker.metrics.bootstrap import paired_difference, speaker_codes, speaker_weights, verification_intervals
from deep_speaker.metrics.calibration import act_dcf, bayes_threshold, cllr, fit_calibration, min_cllr, pav_llrs
from deep_speaker.metrics.score_norm import cohort_stats, snorm_trials
from deep_speaker.metrics.verification import (equal_error_rate, equal_error_rate_threshold, min_dcf, min_dcf_threshold,
                                               sort_trials, weighted_points)
from test_metrics_verification import sklearn_eer


@pytest.fixture(scope="module")
def pairs(mfcc_vectors):
    """Real scores of all test-other pairs with the speakers of both sides."""
    x, spk = mfcc_vectors
    i, j = np.triu_indices(len(x), k=1)
    e = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.einsum("ij,ij->i", e[i], e[j]), (spk[i] == spk[j]).astype(int), spk[i], spk[j]


def loop_cllr(llrs, labels):
    """Cllr by its definition, one trial at a time with math.log1p/exp."""
    tgt = [math.log1p(math.exp(-x)) for x, y in zip(llrs, labels) if y == 1]
    non = [math.log1p(math.exp(x)) for x, y in zip(llrs, labels) if y == 0]
    return (sum(tgt) / len(tgt) + sum(non) / len(non)) / (2 * math.log(2))


def plain_pav(y):
    """Pool-adjacent-violators on a sequence already sorted by score: the increasing least-squares fit."""
    blocks = []  # [sum, count]
    for v in y:
        blocks.append([float(v), 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([np.full(c, s / c) for s, c in blocks])


def test_calibration_minimises_the_weighted_logistic_objective(pairs):
    scores, labels, _, _ = pairs
    for prior in (0.5, 0.1):
        cal = fit_calibration(scores, labels, prior)
        t, n = scores[labels == 1], scores[labels == 0]
        lo = math.log(prior / (1 - prior))

        def objective(ab, t=t, n=n, lo=lo, prior=prior):
            return (prior * np.logaddexp(0, -(ab[0] * t + ab[1] + lo)).mean()
                    + (1 - prior) * np.logaddexp(0, ab[0] * n + ab[1] + lo).mean())

        ref = minimize(objective, x0=[1.0, 0.0], method="Nelder-Mead",
                       options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000}).x
        assert cal.scale == pytest.approx(ref[0], rel=1e-4)
        assert cal.offset == pytest.approx(ref[1], rel=1e-4, abs=1e-4)
        assert objective([cal.scale, cal.offset]) <= objective(ref) + 1e-12


def test_cllr_and_act_dcf_match_loops(pairs):
    scores, labels, _, _ = pairs
    llrs = fit_calibration(scores, labels).llr(scores)
    assert cllr(llrs, labels) == pytest.approx(loop_cllr(llrs, labels), rel=1e-12)
    assert cllr(np.zeros(labels.size), labels) == pytest.approx(1.0)  # the uninformative system
    for p in (0.01, 0.05, 0.5):
        theta = math.log((1 - p) / p)
        miss = sum(1 for x, y in zip(llrs, labels) if y == 1 and not x > theta) / labels.sum()
        fa = sum(1 for x, y in zip(llrs, labels) if y == 0 and x > theta) / (labels == 0).sum()
        assert act_dcf(llrs, labels, p_target=p) == pytest.approx((p * miss + (1 - p) * fa) / min(p, 1 - p))
        assert bayes_threshold(p) == pytest.approx(theta)
        # actDCF can never beat minDCF: the Bayes threshold is one of the thresholds minDCF searches.
        assert act_dcf(llrs, labels, p_target=p) >= min_dcf(llrs, labels, p_target=p) - 1e-12


def test_min_cllr_matches_a_hand_written_pav(pairs):
    scores, labels, _, _ = pairs
    order = np.argsort(scores, kind="stable")
    posterior = plain_pav(labels[order])
    ref_llr = np.empty(labels.size)
    with np.errstate(divide="ignore"):
        ref_llr[order] = np.log(posterior) - np.log1p(-posterior) - math.log(labels.sum() / (labels == 0).sum())
    np.testing.assert_allclose(pav_llrs(scores, labels), ref_llr, rtol=1e-9, atol=1e-9)
    finite = np.isfinite(ref_llr)
    tgt = np.where(labels == 1, np.logaddexp(0, -ref_llr), 0)
    non = np.where(labels == 0, np.logaddexp(0, ref_llr), 0)
    ref = (tgt.sum() / labels.sum() + non.sum() / (labels == 0).sum()) / (2 * math.log(2))
    assert finite.any() and min_cllr(scores, labels) == pytest.approx(ref, rel=1e-9)
    # minCllr is a lower bound for every calibration of the same scores.
    assert min_cllr(scores, labels) <= cllr(fit_calibration(scores, labels).llr(scores), labels)


def test_degenerate_calibration_inputs_are_one_line_errors(pairs):
    scores, labels, _, _ = pairs
    with pytest.raises(DeepSpeakerError, match="constant"):
        fit_calibration(np.full(labels.size, 0.3), labels)
    with pytest.raises(DeepSpeakerError, match="both target and non-target"):
        fit_calibration(scores[labels == 1], labels[labels == 1])
    with pytest.raises(DeepSpeakerError, match="prior"):
        fit_calibration(scores, labels, prior=1.0)


def loop_snorm(x, first, second, cohort, top_k=None):
    """The published S-norm / AS-norm formulas, one trial at a time."""
    out = []
    for a, b in zip(first, second):
        ea, eb = x[a] / np.linalg.norm(x[a]), x[b] / np.linalg.norm(x[b])
        s = float(ea @ eb)
        parts = []
        for e in (ea, eb):
            cs = np.array([float(e @ (c / np.linalg.norm(c))) for c in cohort])
            if top_k is not None:
                cs = np.sort(cs)[::-1][:top_k]
            parts.append((s - cs.mean()) / cs.std())
        out.append(0.5 * (parts[0] + parts[1]))
    return np.array(out)


def test_snorm_and_asnorm_match_the_formulas_on_real_vectors(mfcc_vectors):
    x, _ = mfcc_vectors
    test, cohort = x[:60], x[60:]  # speakers 1-6 scored against a cohort of the other 4 speakers' utterances
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 60, 200), rng.integers(0, 60, 200)
    np.testing.assert_allclose(snorm_trials(test, first, second, cohort=cohort, method="snorm"),
                               loop_snorm(test, first, second, cohort), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(snorm_trials(test, first, second, cohort=cohort, method="asnorm", top_k=12),
                               loop_snorm(test, first, second, cohort, top_k=12), rtol=1e-10, atol=1e-10)


def test_degenerate_cohorts_are_one_line_errors(mfcc_vectors):
    x, _ = mfcc_vectors
    with pytest.raises(DeepSpeakerError, match="at least 10"):
        cohort_stats(x[:5], x[5:8])
    with pytest.raises(DeepSpeakerError, match="same encoder"):
        cohort_stats(x[:5], x[5:30, :64])
    with pytest.raises(DeepSpeakerError, match="degenerate"):
        cohort_stats(x[:5], np.tile(x[50], (20, 1)))
    with pytest.warns(UserWarning, match="whole cohort"):
        cohort_stats(x[:5], x[5:30], top_k=40)


def test_weighted_replicate_equals_the_literally_resampled_trials(pairs):
    scores, labels, first, second = pairs
    a, b, n = speaker_codes(first, second)
    rng = np.random.default_rng(3)
    for _ in range(3):
        counts = rng.multinomial(n, np.full(n, 1 / n))
        copies = np.repeat(np.arange(n), counts)  # the drawn speakers, one entry per copy
        # The resampled trial set built copy by copy: each copy's own target trials, and for every pair of copies
        # of different speakers the non-target trials between those speakers.
        rep_s, rep_l = [], []
        for p, sp in enumerate(copies):
            own = (a == sp) & (b == sp)
            rep_s.append(scores[own]), rep_l.append(labels[own])
            for sq in copies[p + 1:]:
                if sq != sp:
                    cross = ((a == sp) & (b == sq)) | ((a == sq) & (b == sp))
                    rep_s.append(scores[cross]), rep_l.append(labels[cross])
        rep_s, rep_l = np.concatenate(rep_s), np.concatenate(rep_l)
        points = weighted_points(sort_trials(scores, labels), speaker_weights(a, b, counts))
        assert equal_error_rate_threshold(points, None)[0] == pytest.approx(sklearn_eer(rep_s, rep_l), abs=1e-12)
        expected = min_dcf(rep_s, rep_l, p_target=0.05)
        assert min_dcf_threshold(points, None, p_target=0.05)[0] == pytest.approx(expected, abs=1e-12)


def test_intervals_are_seeded_and_hold_the_value(pairs):
    scores, labels, first, second = pairs
    one = verification_intervals(scores, labels, first_speakers=first, second_speakers=second, replicates=200, seed=1)
    assert one == verification_intervals(scores, labels, first_speakers=first, second_speakers=second, replicates=200,
                                         seed=1)
    assert one != verification_intervals(scores, labels, first_speakers=first, second_speakers=second, replicates=200,
                                         seed=2)
    assert one["eer"].value == pytest.approx(equal_error_rate(scores, labels))
    for interval in one.values():
        assert interval.low <= interval.value <= interval.high and interval.low < interval.high


def test_paired_difference(pairs):
    scores, labels, first, second = pairs
    same = paired_difference(scores, scores, labels, first_speakers=first, second_speakers=second, replicates=200)
    assert all(v == (0.0, 0.0, 0.0) for v in same.values())
    worse = scores + np.random.default_rng(0).normal(0, 0.05, scores.size)  # a noisier copy of the same system
    diff = paired_difference(worse, scores, labels, first_speakers=first, second_speakers=second, replicates=200)
    assert diff["eer"].value == pytest.approx(equal_error_rate(worse, labels) - equal_error_rate(scores, labels))
    assert diff["eer"].low <= diff["eer"].value <= diff["eer"].high


def test_too_few_speakers_is_a_clear_error(pairs):
    scores, labels, first, second = pairs
    keep = np.isin(first, first[:1]) & np.isin(second, np.unique(first)[:2])
    with pytest.raises(DeepSpeakerError, match="at least 3 speakers"):
        verification_intervals(scores[keep], labels[keep], first_speakers=first[keep], second_speakers=second[keep])
