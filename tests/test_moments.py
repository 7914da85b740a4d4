"""Mergeable embedding statistics against numpy references (np.cov, a loop of outer products) and FD from all the
embeddings at once, on real speech: real embeddings of the bundled LibriSpeech files, merged with 'stats --merge'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deep_speaker.cli import main
from deep_speaker.encoders.deepspeaker import packaged_model
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.eval.embedded import Embedded, make_stats
from deep_speaker.eval.formats import read_moments as load_moments
from deep_speaker.eval.formats import read_stats as load_stats
from deep_speaker.eval.formats import write_stats as save_stats
from deep_speaker.metrics import frechet_distance, gaussian_stats
from deep_speaker.metrics.moments import merge_moments, moments, moments_gaussian

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "librispeech" / "test-other"


def test_merged_moments_equal_a_loop_and_np_cov(mfcc_vectors):
    x, _ = mfcc_vectors  # real 128-d vectors of 100 utterances
    parts = [x[:7], x[7:7], x[7:60], x[60:]]  # uneven, one empty
    merged = merge_moments(moments(p) for p in parts)
    assert merged.count == len(x)
    np.testing.assert_allclose(merged.total, sum(row for row in x), rtol=1e-13)
    np.testing.assert_allclose(merged.outer, sum(np.outer(row, row) for row in x), rtol=1e-12)
    mu, sigma = moments_gaussian(merged)
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(sigma, sigma.T)


def test_too_few_or_mixed_moments_are_one_line_errors(mfcc_vectors):
    x, _ = mfcc_vectors
    with pytest.raises(DeepSpeakerError, match="at least 2 samples, got 1"):
        moments_gaussian(moments(x[:1]))
    with pytest.raises(DeepSpeakerError, match="different widths"):
        merge_moments([moments(x), moments(x[:, :3])])
    with pytest.raises(DeepSpeakerError, match="no moments"):
        merge_moments([])


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """'stats' of 4 speakers x 10 bundled LibriSpeech utterances, embedded by the packaged model."""
    work = tmp_path_factory.mktemp("moments")
    for speaker in sorted(SAMPLES.iterdir())[:4]:
        for f in sorted(speaker.rglob("*.flac"))[:10]:
            (work / "real" / speaker.name / f.parent.name).mkdir(parents=True, exist_ok=True)
            (work / "real" / speaker.name / f.parent.name / f.name).symlink_to(f)
    assert main(["stats", str(work / "real"), "-o", str(work / "all.npz"), "--model", str(packaged_model())]) == 0
    return work


def _part(stats, rows, path):
    save_stats(path, make_stats(Embedded(stats.embeddings[rows], stats.labels[rows].tolist(),
                                         stats.paths[rows].tolist(), [], stats.encoder, stats.model_identity),
                                stats.feature_settings))
    return str(path)


def test_stats_merge_gives_the_statistics_and_fd_of_all_embeddings(real, tmp_path):
    every = load_stats(real / "all.npz")
    speakers = every.labels
    names = sorted(set(speakers.tolist()))
    files = [_part(every, np.flatnonzero(np.isin(speakers, group)), tmp_path / f"part{i}.npz")
             for i, group in enumerate([names[:2], names[2:3], names[3:]])]
    assert main(["stats", "--merge", *files, "-o", str(tmp_path / "merged.npz")]) == 0
    merged = load_stats(tmp_path / "merged.npz")
    assert sorted(merged.paths.tolist()) == sorted(every.paths.tolist()) and merged.embeddings.shape == (40, 512)
    emb = every.embeddings.astype(np.float64)
    np.testing.assert_allclose(merged.mu, emb.mean(axis=0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(merged.sigma, np.cov(emb, rowvar=False), rtol=0, atol=1e-15)
    # FD against another set, from the merged statistics and from all embeddings at once (metrics.distances).
    other = gaussian_stats(emb[speakers == names[0]])
    fd_merged = frechet_distance(merged.mu, merged.sigma, *other)
    fd_all = frechet_distance(*gaussian_stats(emb), *other)
    # n = 40 < d = 512: the covariances are singular, and the square roots of their near-zero eigenvalues turn
    # 1e-17 differences of sigma into up to d sqrt(eps |S|) ~ 1e-7 of FD (frechet_distance's documented rounding).
    assert fd_all > 0.01 and abs(fd_merged - fd_all) <= 1e-7
    # The moments alone (the embeddings stay on disk) give the same merged statistics.
    again = moments_gaussian(merge_moments(load_moments(f) for f in files))
    np.testing.assert_allclose(again[0], merged.mu, rtol=0, atol=0)
    np.testing.assert_allclose(again[1], merged.sigma, rtol=0, atol=0)


def test_files_without_moments_merge_from_their_embeddings(real, tmp_path):
    every = load_stats(real / "all.npz")
    with np.load(real / "all.npz", allow_pickle=False) as data:  # a file written before the moments were saved
        np.savez(tmp_path / "old.npz", **{k: data[k] for k in data.files if k not in ("count", "sum", "outer")})
    old = load_moments(tmp_path / "old.npz")
    assert old.count == 40
    np.testing.assert_allclose(old.outer, every.embeddings.astype(np.float64).T @ every.embeddings, rtol=1e-12)


def test_bad_merges_are_one_line_errors(real, tmp_path, capsys):
    every = load_stats(real / "all.npz")
    a = _part(every, np.arange(20), tmp_path / "a.npz")
    assert main(["stats", "--merge", a, a, "-o", str(tmp_path / "twice.npz")]) == 2
    assert "both hold" in capsys.readouterr().err
    with np.load(a, allow_pickle=False) as data:
        fields = {k: data[k] for k in data.files}
    fields.update(model_identity=np.str_("0123456789abcdef"), paths=every.paths[20:], labels=every.labels[20:])
    np.savez(tmp_path / "other.npz", **fields)
    assert main(["stats", "--merge", a, str(tmp_path / "other.npz"), "-o", str(tmp_path / "mixed.npz")]) == 2
    assert "different models" in capsys.readouterr().err
    assert main(["stats", "-o", str(tmp_path / "none.npz")]) == 2
    assert not any((tmp_path / n).exists() for n in ("twice.npz", "mixed.npz", "none.npz"))
    assert json.loads(str(np.load(a)["feature_settings"]))  # the parts are untouched
