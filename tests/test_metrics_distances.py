"""FD, KD, FD∞, conditional distances and SECS against independent references, on real speech vectors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg

from deep_speaker.data.audio import read_audio
from deep_speaker.data.features import fbank_features
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.metrics import (SampleSizeWarning, conditional_distances, fd_infinity, frechet_distance,
                                  frechet_distance_splits, gaussian_stats, kernel_distance, speaker_similarity,
                                  speaker_similarity_ceiling)
from deep_speaker.metrics.distances import kernel_subsets

SNRS = (30, 20, 10, 0)


def stats_vector(signal: np.ndarray) -> np.ndarray:
    """128-d real vector independent of the model: mean and std of the fbank features."""
    feats = fbank_features(signal).astype(np.float64)
    return np.concatenate([feats.mean(axis=0), feats.std(axis=0)])


@pytest.fixture(scope="session")
def speech_sets(libri_mini):
    """Clean vectors of all 332 files (labels = speaker) and of test-other with white noise at each SNR."""
    paths = sorted((libri_mini / "test-other").rglob("*.flac")) + sorted((libri_mini / "train-clean-100").rglob("*.flac"))
    rng = np.random.default_rng(1234)
    clean, noisy = [], {snr: [] for snr in SNRS}
    for k, path in enumerate(paths):
        signal = read_audio(path).astype(np.float64)
        clean.append(stats_vector(signal))
        if k < 100:  # the test-other files
            noise = rng.standard_normal(signal.size)
            for snr in SNRS:
                scale = np.sqrt(np.mean(signal ** 2) / 10 ** (snr / 10) / np.mean(noise ** 2))
                noisy[snr].append(stats_vector(signal + scale * noise))
    labels = np.array([p.parent.parent.name for p in paths])
    return np.array(clean), labels, {snr: np.array(v) for snr, v in noisy.items()}


def sqrtm_fd(x, y):
    """The classic FID formula with scipy.linalg.sqrtm(S1 @ S2), real part."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def loop_kd(x, y, subsets):
    """Direct KD: per subset, kernel matrices and explicit i≠j sums."""
    values = []
    for ix, iy in subsets:
        a, b = x[ix], y[iy]
        m, d = a.shape
        kxx, kyy, kxy = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3)
        off = ~np.eye(m, dtype=bool)
        values.append((kxx[off].sum() + kyy[off].sum()) / (m * (m - 1)) - 2 * kxy.sum() / m ** 2)
    return np.mean(values), np.std(values)


def test_gaussian_stats_are_mean_and_unbiased_cov(speech_sets):
    x = speech_sets[0]
    mu, sigma = gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / (len(x) - 1), rtol=1e-9, atol=1e-12)


def test_fd_matches_scipy_sqrtm_on_real_vectors(speech_sets):
    clean, _, _ = speech_sets
    x, y = clean[:180], clean[180:]  # 180 and 171 samples > 128 dimensions: full-rank covariances
    expected = sqrtm_fd(x, y)
    assert expected > 0
    assert frechet_distance(*gaussian_stats(x), *gaussian_stats(y)) == pytest.approx(expected, rel=1e-6)


def test_fd_of_a_set_with_itself_is_zero(speech_sets):
    x = speech_sets[0]
    mu, sigma = gaussian_stats(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)  # sqrt(eps)-size rounding


def test_fd_singular_covariance_is_finite_with_message(speech_sets):
    clean, _, _ = speech_sets
    x, y = clean[:40], clean[200:240]  # 40 samples, 128 dimensions: rank ≤ 39
    value = frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    assert isinstance(value, float) and np.isfinite(value) and value > 0
    result = frechet_distance_splits(x, y, num_splits=2)
    assert all(np.isfinite(v) for v in result["fd_splits"]) and np.isfinite(result["fd_full"])
    assert any("singular" in m for m in result["messages"])
    assert result["fd_full"] == pytest.approx(value, rel=1e-12)


def test_fd_splits_report(speech_sets):
    clean, _, noisy = speech_sets
    result = frechet_distance_splits(clean[:100], noisy[10], num_splits=5, seed=3)
    assert len(result["fd_splits"]) == 5 and result["seed"] == 3 and result["split_size"] == 20
    assert result["fd"] == pytest.approx(np.mean(result["fd_splits"]), rel=1e-12)
    assert result["fd_std"] == pytest.approx(np.std(result["fd_splits"]), rel=1e-12)
    assert result["fd_full"] == pytest.approx(sqrtm_fd(clean[:100], noisy[10]), rel=1e-6)
    assert frechet_distance_splits(clean[:100], noisy[10], seed=3) == result


@pytest.mark.parametrize("num_subsets,subset_size", [(100, 60), (3, 30)])  # one kernel matrix / one per subset
def test_kd_matches_a_direct_loop(speech_sets, num_subsets, subset_size):
    clean, _, noisy = speech_sets
    x, y = clean[:100], noisy[10]
    _, subsets = kernel_subsets(len(x), len(y), num_subsets=num_subsets, subset_size=subset_size, seed=7)
    mean, std = kernel_distance(x, y, num_subsets=num_subsets, subset_size=subset_size, seed=7)
    ref_mean, ref_std = loop_kd(x, y, subsets)
    assert mean == pytest.approx(ref_mean, rel=1e-6)
    assert std == pytest.approx(ref_std, rel=1e-6)


def test_noise_gives_strictly_increasing_fd_and_kd(speech_sets):
    clean, _, noisy = speech_sets
    x = clean[:100]
    fds = [frechet_distance(*gaussian_stats(x), *gaussian_stats(noisy[snr])) for snr in SNRS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleSizeWarning)
        kds = [kernel_distance(x, noisy[snr], num_subsets=20)[0] for snr in SNRS]
        self_kd = kernel_distance(x, x, num_subsets=20)[0]
    assert np.all(np.diff(fds) > 0), fds
    assert np.all(np.diff(kds) > 0), kds
    mu, sigma = gaussian_stats(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * fds[0]
    # The unbiased estimator of a set against itself is -2 (mean k(x_i,x_i) - mean_{i≠j} k(x_i,x_j)) / m: -O(1/m).
    assert abs(self_kd) < 0.25 * kds[0]


def test_kd_small_sets_warn_or_fail_clearly():
    x = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.warns(SampleSizeWarning, match="10 samples instead of 1000"):
        mean, std = kernel_distance(x, x + 1)
    assert np.isfinite(mean) and np.isfinite(std)
    with pytest.raises(DeepSpeakerError, match="at least 2"):
        kernel_distance(x[:1], x)


def test_fd_infinity_recovers_a_known_intercept():
    # Real set: one point repeated (zero covariance), so FD(N) = |mu_x - mean_N|² + Tr S_N. Subsets of y drawn
    # without replacement from its n points have E|mean_N - mean_y|² = Tr S_y (1/N - 1/n), E Tr S_N = Tr S_y:
    # E FD(N) = a + c/N exactly, with a = |mu_x - mean_y|² + Tr S_y (1 - 1/n) and c = Tr S_y.
    rng = np.random.default_rng(0)
    d, n = 6, 400
    y = rng.normal(size=(n, d)) * np.arange(1, d + 1)
    x = np.tile(np.full(d, 0.5), (10, 1))
    tr = np.trace(np.cov(y, rowvar=False))
    a = np.sum((x[0] - y.mean(0)) ** 2) + tr * (1 - 1 / n)
    fits = [fd_infinity(x, y, num_points=10, n_min=10, n_max=200, seed=s) for s in range(300)]
    intercepts = np.array([f["fd_inf"] for f in fits])
    slopes = np.array([f["slope"] for f in fits])
    assert abs(intercepts.mean() - a) < 4 * intercepts.std() / np.sqrt(len(fits))
    assert abs(slopes.mean() - tr) < 4 * slopes.std() / np.sqrt(len(fits))
    assert fits[0]["ns"][0] == 10 and fits[0]["ns"][-1] == 200 and fits[5]["seed"] == 5


def test_fd_infinity_on_real_speech_is_non_negative(speech_sets):
    clean, _, noisy = speech_sets
    result = fd_infinity(clean[:100], noisy[10], num_points=5, n_min=40)
    assert result["fd_inf"] >= 0
    assert len(result["fds"]) == len(result["ns"]) == 5
    assert any("singular" in m for m in result["messages"])


def test_conditional_distances(speech_sets):
    clean, labels, noisy = speech_sets
    gen, gen_labels = noisy[0][:50], labels[:50]  # 0 dB copies of 5 test-other speakers
    result = conditional_distances(clean, labels, gen=gen, gen_labels=gen_labels, num_subsets=5, subset_size=40, seed=1)
    assert result["n_real_same_reference"] + result["n_real_same_held_out"] == 50
    assert result["n_real_other"] == len(clean) - 50 and result["seed"] == 1
    g, base = result["generated"], result["real_baseline"]
    for side in (g, base):
        assert all(np.isfinite(side[k]) for k in ("cfd", "fd", "ckd", "kd", "ckd_std", "kd_std"))
    assert base["cfd"] < g["cfd"] and base["ckd"] < g["ckd"]  # real held-out half is closer than 0 dB noise
    assert base["cfd"] < base["fd"]  # same speakers are closer than other speakers
    only_same = conditional_distances(clean[:50], labels[:50], gen=gen, gen_labels=gen_labels, num_subsets=2,
                                      subset_size=20)
    assert only_same["generated"]["fd"] is None and only_same["generated"]["cfd"] is not None
    assert any("no other-conditioning" in m for m in only_same["messages"])


def test_speaker_similarity_matches_a_loop(speech_sets):
    clean, labels, noisy = speech_sets
    real, real_labels = clean[:100], labels[:100]
    gen, gen_labels = noisy[10][::3], labels[:100:3]
    result = speaker_similarity(gen, gen_labels, real=real, real_labels=real_labels)
    expected = []
    for g, lab in zip(gen, gen_labels):
        members = real[real_labels == lab]
        centroid = np.mean([v / np.linalg.norm(v) for v in members], axis=0)
        expected.append(g @ centroid / (np.linalg.norm(g) * np.linalg.norm(centroid)))
    np.testing.assert_allclose(result["scores"], expected, rtol=1e-12)
    assert result["secs"] == pytest.approx(np.mean(expected), rel=1e-12)
    first = gen_labels[0]
    assert result["per_speaker"][first] == pytest.approx(np.mean(np.array(expected)[gen_labels == first]), rel=1e-12)
    ceiling = speaker_similarity_ceiling(real, real_labels, seed=2)
    assert ceiling["n"] == 50 and ceiling["seed"] == 2 and -1 <= ceiling["secs"] <= 1
    noisy0 = speaker_similarity(noisy[0], real_labels, real=real, real_labels=real_labels)
    assert ceiling["secs"] > noisy0["secs"]
