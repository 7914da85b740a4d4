"""IS, modified IS, AM score and NDB against direct loops with scipy.stats.entropy and a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from deep_speaker.errors import DeepSpeakerError
from deep_speaker.metrics import am_score, inception_score, modified_inception_score, ndb


@pytest.fixture(scope="module")
def probs():
    """Softmax outputs of 200 samples over 12 classes (strictly positive)."""
    logits = np.random.default_rng(0).normal(scale=3.0, size=(200, 12))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_inception_score_matches_a_loop(probs):
    scores = []
    for part in np.array_split(probs, 10):
        p_y = part.mean(axis=0)
        scores.append(np.exp(np.mean([scipy.stats.entropy(row, p_y) for row in part])))
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores), rel=1e-10)


def test_inception_score_of_a_perfect_balanced_classifier_is_the_class_count():
    one_hot = np.eye(5)[np.arange(50) % 5]
    assert inception_score(one_hot, splits=1) == pytest.approx((5.0, 0.0))
    assert inception_score(np.full((20, 5), 0.2), splits=2)[0] == pytest.approx(1.0)


def test_modified_inception_score_matches_a_double_loop(probs):
    p = probs[:60]
    kl = [scipy.stats.entropy(p[i], p[j]) for i in range(len(p)) for j in range(len(p)) if i != j]
    assert modified_inception_score(p) == pytest.approx(np.exp(np.mean(kl)), rel=1e-10)


def test_modified_inception_score_with_zeros_is_finite():
    value = modified_inception_score(np.eye(3)[[0, 1, 2, 0]])
    assert np.isfinite(value) and value > 1


def test_am_score_matches_entropy(probs):
    ref = probs[:80]
    gen = probs[80:]
    expected = scipy.stats.entropy(ref.mean(0), gen.mean(0)) + np.mean([scipy.stats.entropy(row) for row in gen])
    assert am_score(ref, gen) == pytest.approx(expected, rel=1e-12)


def test_ndb_hand_computed():
    # Two well-separated reference clusters of 50 points each; generated: 80 near the first, 20 near the second.
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(10, 0.1, (50, 2))])
    gen = np.concatenate([rng.normal(0, 0.1, (80, 2)), rng.normal(10, 0.1, (20, 2))])
    result = ndb(ref, gen, bins=2)
    # Pooled proportion 130/200 = 0.65; se = sqrt(0.65 * 0.35 * (1/100 + 1/100)); z = ±0.3 / se = ±4.447.
    z = 0.3 / np.sqrt(0.65 * 0.35 * 0.02)
    np.testing.assert_allclose(np.sort(np.abs(result["z"])), [z, z], rtol=1e-12)
    assert result["ndb"] == 2 and result["ndb_over_k"] == 1.0
    np.testing.assert_allclose(np.sort(result["gen_proportions"]), [0.2, 0.8])
    # 54 vs 46: z = 0.04 / sqrt(0.52 * 0.48 * 0.02) = 0.566, p = 0.57: not significant.
    close = np.concatenate([rng.normal(0, 0.1, (54, 2)), rng.normal(10, 0.1, (46, 2))])
    result = ndb(ref, close, bins=2)
    np.testing.assert_allclose(np.abs(result["z"]), 0.04 / np.sqrt(0.52 * 0.48 * 0.02), rtol=1e-12)
    np.testing.assert_allclose(result["p_values"], 2 * scipy.stats.norm.sf(0.04 / np.sqrt(0.52 * 0.48 * 0.02)))
    assert result["ndb"] == 0 and result["seed"] == 0 and result["bins"] == 2


def test_bad_probabilities_are_clear_errors(probs):
    with pytest.raises(DeepSpeakerError, match="sum to 1"):
        inception_score(probs * 2)
    with pytest.raises(DeepSpeakerError, match="splits"):
        inception_score(probs[:5], splits=10)
    with pytest.raises(DeepSpeakerError, match="bins"):
        ndb(np.zeros((10, 2)), np.zeros((5, 2)), bins=50)
