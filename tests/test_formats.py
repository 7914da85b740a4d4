"""The evaluation's file formats (eval.formats): each file as deep-speaker wrote it before the formats had one home
(made here by hand, key for key and dtype for dtype, as that code wrote it) still reads; the writers' files read
back equal; a file of a newer format version is refused in one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deep_speaker.errors import DeepSpeakerError
from deep_speaker.eval.embedded import Embedded, make_stats
from deep_speaker.eval.formats import (read_embeddings, read_moments, read_stats, read_trial_scores, trial_scores_path,
                                       write_embeddings, write_stats, write_trial_scores)

PATHS = ["a/1.wav", "a/2.wav", "b/1.wav", "b/2.wav"]
SPEAKERS = ["a", "a", "b", "b"]


def rows() -> np.ndarray:
    e = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def todays_stats(path: Path, **drop: bool) -> None:
    """A statistics file as ``eval.generated.save_stats`` wrote it (format_version 1, the moments, the encoder)."""
    e = rows()
    e64 = e.astype(np.float64)
    arrays = dict(format_version=np.int64(1), mu=e64.mean(axis=0), sigma=np.cov(e64, rowvar=False, ddof=1),
                  embeddings=e, labels=np.asarray(SPEAKERS, dtype=str), paths=np.asarray(PATHS, dtype=str),
                  model_identity=np.str_("id123"), encoder=np.str_("toy"),
                  feature_settings=np.str_(json.dumps({"x": 1}, sort_keys=True)),
                  count=np.int64(4), sum=e64.sum(axis=0), outer=e64.T @ e64)
    np.savez(path, **{k: v for k, v in arrays.items() if not drop.get(k)})


def test_todays_statistics_file_reads(tmp_path: Path) -> None:
    todays_stats(tmp_path / "stats.npz")
    stats = read_stats(tmp_path / "stats.npz")
    assert stats.encoder == "toy" and stats.model_identity == "id123" and stats.feature_settings == {"x": 1}
    assert stats.labels.tolist() == SPEAKERS and stats.paths.tolist() == PATHS and stats.speakers == ["a", "b"]
    np.testing.assert_array_equal(stats.embeddings, rows())
    assert read_moments(tmp_path / "stats.npz").count == 4
    # Older still: no version, no encoder (the only encoder there was), no moments (from the embeddings).
    todays_stats(tmp_path / "old.npz", format_version=True, encoder=True, count=True, sum=True, outer=True)
    old = read_stats(tmp_path / "old.npz")
    assert old.encoder == "deep-speaker" and read_moments(tmp_path / "old.npz").count == 4


def test_statistics_round_trip_and_newer_version_refused(tmp_path: Path) -> None:
    stats = make_stats(Embedded(rows(), SPEAKERS, PATHS, [], "toy", "id123"), {"x": 1}, "here")
    write_stats(tmp_path / "s.npz", stats)
    back = read_stats(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.embeddings, stats.embeddings)
    np.testing.assert_allclose(back.sigma, stats.sigma, rtol=0, atol=1e-15)
    with np.load(tmp_path / "s.npz") as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(tmp_path / "new.npz", **{**arrays, "format_version": np.int64(2)})
    with pytest.raises(DeepSpeakerError, match=r"new\.npz: statistics file of format version 2"):
        read_stats(tmp_path / "new.npz")
    with pytest.raises(DeepSpeakerError, match="format version 2"):
        read_moments(tmp_path / "new.npz")


def test_todays_embedding_file_reads(tmp_path: Path) -> None:
    """As ``eval.export.save_embeddings`` wrote ``.npz`` (``embed -o``, ``--get_embeddings``): no version."""
    np.savez(tmp_path / "e.npz", embeddings=rows(), paths=np.asarray(PATHS, dtype=str),
             model_identity=np.asarray("id123"), encoder=np.asarray("toy"), speakers=np.asarray(SPEAKERS, dtype=str))
    embedded, labelled = read_embeddings(tmp_path / "e.npz")
    assert labelled and embedded.speakers == SPEAKERS and embedded.paths == PATHS
    assert (embedded.encoder, embedded.identity) == ("toy", "id123")
    np.savez(tmp_path / "plain.npz", embeddings=rows(), paths=np.asarray(PATHS, dtype=str),
             model_identity=np.asarray("id123"))  # no speakers; no encoder: before the Encoder interface
    embedded, labelled = read_embeddings(tmp_path / "plain.npz", width=3)
    assert not labelled and embedded.encoder == "deep-speaker" and embedded.speakers == [""] * 4
    with pytest.raises(DeepSpeakerError, match="plain.npz"):
        read_embeddings(tmp_path / "plain.npz", width=5)


def test_embeddings_round_trip_and_newer_version_refused(tmp_path: Path) -> None:
    write_embeddings(tmp_path / "e.npz", Embedded(rows(), SPEAKERS, PATHS, [], "toy", "id123"))
    embedded, labelled = read_embeddings(tmp_path / "e.npz")
    assert labelled and embedded.paths == PATHS and embedded.identity == "id123"
    with np.load(tmp_path / "e.npz") as data:
        assert int(data["format_version"]) == 1
        arrays = {k: data[k] for k in data.files}
    np.savez(tmp_path / "next.npz", **{**arrays, "format_version": np.int64(2)})
    with pytest.raises(DeepSpeakerError, match=r"next\.npz: embedding file of format version 2"):
        read_embeddings(tmp_path / "next.npz")


def test_todays_trial_scores_read(tmp_path: Path) -> None:
    """As ``eval.verification.save_trial_scores`` wrote ``REPORT.trials.npz``: no version."""
    report = tmp_path / "report.json"
    keys = np.asarray(["a/1.wav\ta/2.wav", "a/1.wav\tb/1.wav"])
    np.savez(trial_scores_path(report), scores=np.array([0.8, 0.1], np.float32), labels=np.array([1, 0], np.int8),
             keys=keys, first_speakers=np.asarray(["a", "a"]), second_speakers=np.asarray(["a", "b"]))
    back = read_trial_scores(report)
    assert back["keys"].tolist() == keys.tolist() and back["labels"].tolist() == [1, 0]
    assert back["second_speakers"].tolist() == ["a", "b"]


def test_trial_scores_round_trip_and_newer_version_refused(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    keys = np.asarray(["x\ty", "x\tz"])
    path = write_trial_scores(report, scores=np.array([0.5, -0.2]), labels=np.array([1, 0], np.int8), keys=keys,
                              speakers=(["s", "s"], ["s", "t"]))
    assert path == tmp_path / "r.trials.npz"
    back = read_trial_scores(report)
    np.testing.assert_array_equal(back["scores"], [0.5, -0.2])
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(path, **{**arrays, "format_version": np.int64(7)})
    with pytest.raises(DeepSpeakerError, match=r"r\.trials\.npz: trial-score file of format version 7"):
        read_trial_scores(report)
