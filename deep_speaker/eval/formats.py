"""The evaluation's file formats, each with one writer and one reader: statistics (``stats -o real.npz``), trial
scores (``REPORT.trials.npz`` beside a verification report), embeddings (``embed -o x.npz``, also a cohort).

Every file is written atomically (``atomic``) with its ``format_version``, and read back checked (``validate``):
a file without one is of the format's first version (what deep-speaker wrote before versions were recorded), one
of a newer version is refused in one line naming the file, as is a damaged or incomplete one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..atomic import atomic_write
from ..encoders import DEFAULT_ENCODER
from ..errors import DeepSpeakerError
from ..metrics.moments import Moments, moments_gaussian
from ..validate import checked_array, checked_text, load_npz, loads_json
from .embedded import Embedded, Stats

VERSION_KEY = "format_version"
STATS_FORMAT = 1
STATS_KEYS = ("mu", "sigma", "embeddings", "labels", "paths", "model_identity", "feature_settings")
# Written since the Encoder interface; a file without it was made by the only encoder there was.
ENCODER_KEY = "encoder"
# The mergeable sums (metrics.moments), written since statistics merge; older files get them from their embeddings.
MOMENT_KEYS = ("count", "sum", "outer")
TRIAL_SCORES_FORMAT = 1
TRIAL_SCORES_KEYS = ("scores", "labels", "keys")  # what a paired comparison reads of a report's trial scores
SPEAKER_KEYS = ("first_speakers", "second_speakers")
EMBEDDINGS_FORMAT = 1
EMBEDDINGS_KEYS = ("embeddings", "paths", "model_identity")


def _load(path: str | os.PathLike, required: Sequence[str], optional: Sequence[str], what: str,
          version: int) -> dict[str, np.ndarray]:
    """The arrays of one of our ``.npz`` files (``validate.load_npz``), its version checked: absent is the first."""
    data = load_npz(path, required, optional=(*optional, VERSION_KEY), what=what)
    found = int(checked_array(data[VERSION_KEY], path, VERSION_KEY, shape=(), kind="int")) if VERSION_KEY in data else 1
    if not 1 <= found <= version:
        raise DeepSpeakerError(f"{path}: {what} of format version {found}; this deep-speaker reads versions 1 to "
                               f"{version} (a newer one wrote it?)")
    return data


def write_stats(path: str | os.PathLike, stats: Stats) -> None:
    """Write a statistics ``.npz`` (plain arrays and JSON strings, no objects), atomically."""
    m = stats.moments
    with atomic_write(path) as f:
        np.savez(f, format_version=np.int64(STATS_FORMAT), mu=stats.mu, sigma=stats.sigma,
                 embeddings=stats.embeddings, labels=stats.labels.astype(str), paths=stats.paths.astype(str),
                 model_identity=np.str_(stats.model_identity), encoder=np.str_(stats.encoder),
                 feature_settings=np.str_(json.dumps(stats.feature_settings, sort_keys=True)),
                 count=np.int64(m.count), sum=m.total, outer=m.outer)


def read_stats(path: str | os.PathLike) -> Stats:
    """Read a statistics file written by :func:`write_stats` (``allow_pickle=False``), checked against what
    :func:`write_stats` writes: the shape, dtype and finiteness of every array, the settings JSON, and mu, sigma
    and the moments those of the embeddings. One line naming the file otherwise."""
    where = str(path)
    data = _load(path, STATS_KEYS, (ENCODER_KEY, *MOMENT_KEYS), "statistics file", STATS_FORMAT)
    embeddings = checked_array(data["embeddings"], where, "embeddings", shape=(None, None))
    n, d = embeddings.shape
    if n < 2 or d < 1:  # make_stats never writes fewer: no covariance without two rows
        raise DeepSpeakerError(f"{where}: a statistics file holds at least 2 embeddings of at least 1 value, got "
                               f"shape {embeddings.shape}")
    settings = loads_json(checked_text(data["feature_settings"], where, "feature_settings"), where,
                          "feature_settings JSON")
    if not isinstance(settings, dict):
        raise DeepSpeakerError(f"{where}: feature_settings must be a JSON object, got {type(settings).__name__}")
    rows = Embedded(embeddings, checked_array(data["labels"], where, "labels", shape=(n,), kind="text").tolist(),
                    checked_array(data["paths"], where, "paths", shape=(n,), kind="text").tolist(), [],
                    checked_text(data[ENCODER_KEY], where, ENCODER_KEY) if ENCODER_KEY in data else DEFAULT_ENCODER,
                    checked_text(data["model_identity"], where, "model_identity"))
    stats = Stats(rows, settings, checked_array(data["mu"], where, "mu", shape=(d,)),
                  checked_array(data["sigma"], where, "sigma", shape=(d, d)), where)
    _check_derived(stats, data)
    return stats


def _stored_moments(data: Mapping[str, np.ndarray], where: str) -> Moments:
    """The count, sum and outer products of a statistics file, checked for shape, dtype and finiteness."""
    count = int(checked_array(data["count"], where, "count", shape=(), kind="int"))
    total = checked_array(data["sum"], where, "sum", shape=(None,)).astype(np.float64)
    outer = checked_array(data["outer"], where, "outer", shape=(total.size, total.size)).astype(np.float64)
    if count < 0:
        raise DeepSpeakerError(f"{where}: count must not be negative, got {count}")
    return Moments(count, total, outer)


def _check_derived(stats: Stats, data: Mapping[str, np.ndarray]) -> None:
    """mu, sigma and the stored moments must be those of the file's embeddings, as write_stats derived them: a
    file whose numbers were changed (or mixed from several files) would give silently wrong distances and merges.
    Compared within 1e-6 of each array's scale: rounding (moments vs gaussian_stats, summation order) is ~1e-15."""
    m = stats.moments
    mu, sigma = moments_gaussian(m)
    derived = {"mu": (stats.mu, mu), "sigma": (stats.sigma, sigma)}
    if all(k in data for k in MOMENT_KEYS):
        stored = _stored_moments(data, stats.source)
        if stored.count != m.count:
            raise DeepSpeakerError(f"{stats.source}: count is {stored.count}, but the file holds {m.count} "
                                   f"embeddings; recompute it")
        derived.update(sum=(stored.total, m.total), outer=(stored.outer, m.outer))
    for name, (found, expected) in derived.items():
        scale = float(np.abs(expected).max(initial=0.0))
        if found.shape != expected.shape or not np.allclose(found, expected, rtol=1e-6, atol=1e-6 * scale):
            raise DeepSpeakerError(f"{stats.source}: {name} is not that of the file's embeddings (changed after it "
                                   f"was written?); recompute it")


def read_moments(path: str | os.PathLike) -> Moments:
    """The moments of a statistics file, reading only them (the embeddings stay on disk) when the file has them;
    checked for shape, dtype and finiteness (one line naming the file)."""
    data = _load(path, (), MOMENT_KEYS, "statistics file", STATS_FORMAT)
    if all(k in data for k in MOMENT_KEYS):
        return _stored_moments(data, str(path))
    return read_stats(path).moments  # written before the moments were saved


def trial_scores_path(report: str | os.PathLike) -> Path:
    """The trial scores beside a report: ``REPORT.trials.npz`` (what ``--compare`` pairs two systems on)."""
    report = Path(report)
    return report.with_name(report.stem + ".trials.npz")


def write_trial_scores(report: str | os.PathLike, scores: np.ndarray, labels: np.ndarray, *, keys: np.ndarray,
                       speakers: tuple[Sequence[str], Sequence[str]]) -> Path:
    """Write the scores, labels, keys (``first<TAB>second``) and both sides' speakers of the trials of a report
    beside it (:func:`trial_scores_path`), atomically."""
    path = trial_scores_path(report)
    first, second = speakers
    with atomic_write(path) as out:
        np.savez(out, format_version=np.int64(TRIAL_SCORES_FORMAT), scores=scores, labels=labels, keys=keys,
                 first_speakers=np.asarray(first, dtype=str), second_speakers=np.asarray(second, dtype=str))
    return path


def read_trial_scores(report: str | os.PathLike) -> dict[str, np.ndarray]:
    """The trial scores beside a report, checked against what :func:`write_trial_scores` writes: one finite
    score, a 0/1 label and a text key per trial (and the speakers, when there). One line naming the file
    otherwise."""
    path = trial_scores_path(report)
    where = str(path)
    data = _load(path, TRIAL_SCORES_KEYS, SPEAKER_KEYS, "trial-score file", TRIAL_SCORES_FORMAT)
    keys = checked_array(data["keys"], where, "keys", shape=(None,), kind="text")
    labels = checked_array(data["labels"], where, "labels", shape=keys.shape, kind="label")
    if not np.isin(labels, (0, 1)).all():
        raise DeepSpeakerError(f"{where}: labels must be 0 or 1 (1 = same speaker)")
    out = {"keys": keys, "labels": labels, "scores": checked_array(data["scores"], where, "scores", shape=keys.shape)}
    out.update({k: checked_array(data[k], where, k, shape=keys.shape, kind="text") for k in SPEAKER_KEYS if k in data})
    return out


def write_embeddings(path: str | os.PathLike, embedded: Embedded, speakers: bool = True) -> None:
    """Write an embedded set as ``.npz``: embeddings, paths, model_identity, encoder (and the speakers, unless
    ``speakers`` is False), unicode arrays only (it loads with ``allow_pickle=False``), atomically."""
    extra = {"speakers": np.asarray(list(embedded.speakers), dtype=str)} if speakers else {}
    with atomic_write(path) as out:
        np.savez(out, format_version=np.int64(EMBEDDINGS_FORMAT),
                 embeddings=np.asarray(embedded.embeddings, dtype=np.float32),
                 paths=np.asarray(list(embedded.paths), dtype=str), model_identity=np.asarray(embedded.identity),
                 encoder=np.asarray(embedded.encoder), **extra)


def read_embeddings(path: str | os.PathLike, width: int | None = None) -> tuple[Embedded, bool]:
    """An embedding ``.npz`` written by :func:`write_embeddings` (``embed -o``), checked: finite float rows (of
    ``width`` values when given), a text path per row, the identity; and whether it has speakers (else they are
    "")."""
    where = str(path)
    data = _load(path, EMBEDDINGS_KEYS, ("speakers", ENCODER_KEY), "embedding file", EMBEDDINGS_FORMAT)
    identity = checked_text(data["model_identity"], where, "model_identity")
    embeddings = checked_array(data["embeddings"], where, "embeddings", shape=(None, width))
    n = len(embeddings)
    paths = checked_array(data["paths"], where, "paths", shape=(n,), kind="text").tolist()
    labelled = "speakers" in data
    speakers = checked_array(data["speakers"], where, "speakers", shape=(n,),
                             kind="text").tolist() if labelled else [""] * n
    encoder = checked_text(data[ENCODER_KEY], where, ENCODER_KEY) if ENCODER_KEY in data else DEFAULT_ENCODER
    return Embedded(embeddings, speakers, paths, [], encoder, identity), labelled
