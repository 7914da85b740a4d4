"""Evaluating generated speech: statistics files, and the comparison report of a generated set against real speech.

Every number comes from :mod:`deep_speaker.metrics` (definitions in metrics.md); this module picks the sets,
adds the real-data baseline (two disjoint per-speaker halves of the real set, or the real trials for acceptance
and EER), collects each metric's messages instead of failing, and guarantees a report of finite real numbers
only. Several embedding spaces compare in one report (:func:`compare_spaces`), each beside its own baseline.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import metrics
from ..atomic import atomic_write
from ..data.corpus import find_audio_files, scan_corpus
from ..encoders import DEFAULT_ENCODER, Encoder
from ..errors import DeepSpeakerError, Failure
from ..metrics.distances import split_per_label
from ..metrics.moments import Moments, merge_moments, moments, moments_gaussian
from ..metrics.similarity import FAR_TARGET
from .config import CompareConfig
from .tables import text_table
from ..settings import settings_difference
from ..validate import checked_array, checked_text, load_npz, loads_json

STATS_FORMAT = 1
STATS_KEYS = ("mu", "sigma", "embeddings", "labels", "paths", "model_identity", "feature_settings")
# Written since the Encoder interface; a file without it was made by the only encoder there was.
ENCODER_KEY = "encoder"
# The mergeable sums (metrics.moments), written since statistics merge; older files get them from their embeddings.
MOMENT_KEYS = ("count", "sum", "outer")


@dataclass
class Stats:
    """Embeddings of one set of utterances with their Gaussian statistics and what made them."""

    embeddings: np.ndarray  # [n, d] float32, L2-normalised
    labels: np.ndarray  # [n] unicode speaker labels ("" when the layout gives none)
    paths: np.ndarray  # [n] unicode source paths
    model_identity: str  # the encoder's identity (the name the files have always used)
    feature_settings: dict  # the encoder's settings
    mu: np.ndarray  # [d] float64
    sigma: np.ndarray  # [d, d] float64, unbiased
    source: str = ""  # the folder or file it came from, for messages
    failures: list[Failure] = field(default_factory=list)  # files that gave no embedding (not saved in the .npz)
    encoder: str = DEFAULT_ENCODER  # the registry name of the encoder
    # The encoder that made (or can make) these embeddings, called only when noise references must be embedded
    # (CompareConfig.anchor_noise); never saved, and None for statistics made without one.
    embedder: Callable[[], Encoder] | None = field(default=None, repr=False, compare=False)

    @property
    def speakers(self) -> list[str]:
        return sorted(set(self.labels.tolist()) - {""})

    @property
    def moments(self) -> Moments:
        """Count, sum and sum of outer products of the embeddings (float64), mergeable across files."""
        return moments(self.embeddings)


def make_stats(embeddings: np.ndarray, labels: Sequence[str], paths: Sequence[str], model_identity: str,
               feature_settings: dict, source: str = "", failures: Sequence[Failure] | None = None,
               encoder: str = DEFAULT_ENCODER) -> Stats:
    """Stats from embeddings (mean and unbiased covariance by ``metrics.gaussian_stats``)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise DeepSpeakerError(f"{source or 'the set'}: need at least 2 embedded utterances, got "
                               f"{emb.shape[0] if emb.ndim == 2 else 0}")
    mu, sigma = metrics.gaussian_stats(emb)
    return Stats(emb, np.asarray(labels, dtype=str), np.asarray(paths, dtype=str), model_identity,
                 dict(feature_settings), mu, sigma, source, list(failures or []), encoder)


def compute_stats(source: str | os.PathLike | Sequence[str | os.PathLike], encoder: Encoder,
                  layout: str = "auto") -> Stats:
    """Embed a folder (speaker labels from its layout) or a list of files (unlabelled) into :class:`Stats`."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise DeepSpeakerError(f"{folder}: not a folder of audio files")
        utterances, rejected, _ = scan_corpus(folder, layout)
        if utterances:  # files the layout rejects are reported as failures, as the cache build does
            paths, labels = [u.path for u in utterances], [u.speaker for u in utterances]
        else:  # a flat folder of generated files: usable for the unconditional metrics
            paths, rejected = find_audio_files(folder)
            labels = [""] * len(paths)
        name = str(folder)
    else:
        paths, name, rejected = [str(p) for p in source], "the file list", []
        labels = [""] * len(paths)
    if not paths:
        raise DeepSpeakerError(f"{name}: no audio files")
    result = encoder.embed_files_with_failures(paths)
    label_of = dict(zip(paths, labels))
    stats = make_stats(result.embeddings, [label_of[p] for p in result.paths], result.paths, encoder.identity,
                       encoder.settings, name, sorted(rejected) + result.failures, encoder.name)
    stats.embedder = lambda: encoder
    return stats


def save_stats(path: str | os.PathLike, stats: Stats) -> None:
    """Write a statistics ``.npz`` (plain arrays and JSON strings, no objects), atomically."""
    m = stats.moments
    with atomic_write(path) as f:
        np.savez(f, format_version=np.int64(STATS_FORMAT), mu=stats.mu, sigma=stats.sigma,
                 embeddings=stats.embeddings, labels=stats.labels.astype(str), paths=stats.paths.astype(str),
                 model_identity=np.str_(stats.model_identity), encoder=np.str_(stats.encoder),
                 feature_settings=np.str_(json.dumps(stats.feature_settings, sort_keys=True)),
                 count=np.int64(m.count), sum=m.total, outer=m.outer)


def load_stats(path: str | os.PathLike) -> Stats:
    """Read a statistics file written by :func:`save_stats` (``allow_pickle=False``), checked against what
    :func:`save_stats` writes: the shape, dtype and finiteness of every array, the settings JSON, and mu, sigma
    and the moments those of the embeddings. One line naming the file otherwise."""
    where = str(path)
    data = load_npz(path, STATS_KEYS, (ENCODER_KEY, *MOMENT_KEYS), "statistics file")
    embeddings = checked_array(data["embeddings"], where, "embeddings", (None, None))
    n, d = embeddings.shape
    if n < 2 or d < 1:  # make_stats never writes fewer: no covariance without two rows
        raise DeepSpeakerError(f"{where}: a statistics file holds at least 2 embeddings of at least 1 value, got "
                               f"shape {embeddings.shape}")
    settings = loads_json(checked_text(data["feature_settings"], where, "feature_settings"), where,
                          "feature_settings JSON")
    if not isinstance(settings, dict):
        raise DeepSpeakerError(f"{where}: feature_settings must be a JSON object, got {type(settings).__name__}")
    stats = Stats(embeddings, checked_array(data["labels"], where, "labels", (n,), "text"),
                  checked_array(data["paths"], where, "paths", (n,), "text"),
                  checked_text(data["model_identity"], where, "model_identity"), settings,
                  checked_array(data["mu"], where, "mu", (d,)), checked_array(data["sigma"], where, "sigma", (d, d)),
                  where, [], checked_text(data[ENCODER_KEY], where, ENCODER_KEY) if ENCODER_KEY in data
                  else DEFAULT_ENCODER)
    _check_derived(stats, data)
    return stats


def _stored_moments(data: Mapping[str, np.ndarray], where: str) -> Moments:
    """The count, sum and outer products of a statistics file, checked for shape, dtype and finiteness."""
    count = int(checked_array(data["count"], where, "count", (), "int"))
    total = checked_array(data["sum"], where, "sum", (None,)).astype(np.float64)
    outer = checked_array(data["outer"], where, "outer", (total.size, total.size)).astype(np.float64)
    if count < 0:
        raise DeepSpeakerError(f"{where}: count must not be negative, got {count}")
    return Moments(count, total, outer)


def _check_derived(stats: Stats, data: Mapping[str, np.ndarray]) -> None:
    """mu, sigma and the stored moments must be those of the file's embeddings, as save_stats derived them: a
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


def load_moments(path: str | os.PathLike) -> Moments:
    """The moments of a statistics file, reading only them (the embeddings stay on disk) when the file has them;
    checked for shape, dtype and finiteness (one line naming the file)."""
    data = load_npz(path, (), MOMENT_KEYS, "statistics file")
    if all(k in data for k in MOMENT_KEYS):
        return _stored_moments(data, str(path))
    return load_stats(path).moments  # written before the moments were saved


def merge_stats(paths: Sequence[str | os.PathLike]) -> Stats:
    """One statistics set of several files of disjoint utterances (e.g. shards embedded on different machines):
    embeddings, labels and paths concatenated in order; mu and sigma from the merged moments. The files must come
    from the same encoder, model and settings, and no utterance may appear twice."""
    if not paths:
        raise DeepSpeakerError("no statistics files to merge")
    parts = [load_stats(p) for p in paths]  # each checked whole, so a bad part stops the merge before any write
    for other in parts[1:]:
        check_compatible(parts[0], other)
    seen: dict[str, str] = {}
    for part in parts:
        for path in part.paths.tolist():
            if path in seen:
                raise DeepSpeakerError(f"{seen[path]} and {part.source} both hold {path}: merge disjoint sets only")
            seen[path] = part.source
    # The moments of the embeddings just checked and concatenated (the same sums save_stats stored, to the bit),
    # not a second read of the files, which could differ from what was checked.
    merged = merge_moments(p.moments for p in parts)
    mu, sigma = moments_gaussian(merged)
    first = parts[0]
    return Stats(np.concatenate([p.embeddings for p in parts]), np.concatenate([p.labels for p in parts]),
                 np.concatenate([p.paths for p in parts]), first.model_identity, first.feature_settings, mu, sigma,
                 " + ".join(p.source for p in parts), [], first.encoder)


def load_side(source: str | os.PathLike, encoder: Encoder | Callable[[], Encoder], layout: str = "auto") -> Stats:
    """A folder (embedded now) or a statistics ``.npz``; ``encoder`` may be a factory, called only for folders."""
    path = Path(source)
    if path.is_dir():
        return compute_stats(path, encoder() if callable(encoder) else encoder, layout)
    if path.is_file():
        stats = load_stats(path)
        stats.embedder = encoder if callable(encoder) else (lambda: encoder)  # for noise references, if asked
        return stats
    raise DeepSpeakerError(f"{path}: no such folder or statistics file")


def check_compatible(a: Stats, b: Stats) -> None:
    """Refuse to compare statistics made by different encoders, models or feature settings (one-line errors)."""
    if a.encoder != b.encoder:
        raise DeepSpeakerError(f"{a.source} and {b.source} were made by different encoders ({a.encoder} vs "
                               f"{b.encoder}); recompute one with the other's encoder")
    if a.model_identity != b.model_identity:
        raise DeepSpeakerError(f"{a.source} and {b.source} were made by different models (identity "
                               f"{a.model_identity} vs {b.model_identity}); recompute one with the other's model")
    diff = settings_difference(a.feature_settings, b.feature_settings)
    if diff:
        raise DeepSpeakerError(f"{a.source} and {b.source} were made with different feature settings "
                               f"({diff}); recompute one with the other's settings")
    if a.embeddings.shape[1] != b.embeddings.shape[1]:
        raise DeepSpeakerError(f"{a.source} and {b.source} differ in embedding size")


def _attempt(messages: list[str], what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run one metric; its warnings and its user errors become messages (the value is then None)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", metrics.SampleSizeWarning)
        try:
            result = fn(*args, **kwargs)
        except (DeepSpeakerError, ValueError) as exc:  # ValueError: numpy/sklearn on degenerate input
            messages.append(f"{what}: not computed: {exc}")
            result = None
    messages.extend(f"{what}: {w.message}" for w in caught)
    if isinstance(result, dict):
        messages.extend(f"{what}: {m}" for m in result.pop("messages", []))
        result.pop("scores", None)  # per-utterance arrays; the per-speaker summary is enough for a report
    return result


def _kd(messages: list[str], what: str, x: np.ndarray, y: np.ndarray, num_subsets: int, subset_size: int,
        seed: int) -> dict | None:
    """KD as a dict with the subset size actually used (``m = min(subset_size, n_x, n_y)``)."""
    value = _attempt(messages, what, metrics.kernel_distance, x, y, num_subsets, subset_size, seed)
    if value is None:
        return None
    return {"kd": value[0], "kd_std": value[1], "subset_size": min(subset_size, len(x), len(y)),
            "num_subsets": num_subsets, "seed": seed}


def _sap_san(messages: list[str], what: str, stats: Stats) -> dict | None:
    value = _attempt(messages, what, metrics.sap_san, stats.embeddings, stats.labels)
    return None if value is None else {"sap": value[0], "san": value[1]}


def _mr_stft(messages: list[str], real_dir: str, gen_dir: str) -> dict | None:
    """Mean MR-STFT distances over generated/real files paired by name (both resampled to 16 kHz)."""
    from ..data.audio import SAMPLE_RATE, AudioError, load_audio

    pairing = _attempt(messages, "MR-STFT", metrics.paired_files, gen_dir, real_dir)
    if pairing is None:
        return None
    rows = []
    for gen_path, ref_path in pairing.pairs:
        try:
            gen, ref = load_audio(gen_path, SAMPLE_RATE), load_audio(ref_path, SAMPLE_RATE)
        except AudioError as exc:
            messages.append(f"MR-STFT: skipped {exc}")
            continue
        row = _attempt(messages, f"MR-STFT {Path(gen_path).name}", metrics.mr_stft_distance, gen, ref, SAMPLE_RATE)
        if row is not None:
            rows.append(row)
    if not rows:
        return None
    sc = np.array([r["spectral_convergence"] for r in rows])
    lm = np.array([r["log_magnitude"] for r in rows])
    return {"spectral_convergence": float(sc.mean()), "spectral_convergence_std": float(sc.std()),
            "log_magnitude": float(lm.mean()), "log_magnitude_std": float(lm.std()), "pairs": len(rows),
            "only_generated": len(pairing.only_generated), "only_real": len(pairing.only_reference),
            "resolutions": [list(r) for r in metrics.PWG_RESOLUTIONS]}


def classifier_probabilities(classifier: Encoder, real: Stats, generated: Stats) -> tuple[np.ndarray, np.ndarray]:
    """p(y|x) rows of the generated and of the real set's files from a classifier (e.g. ``SpeakerClassifier``)."""
    # Files that gave no embedding are already reported through the statistics' failures.
    return (classifier.embed_files_with_failures(generated.paths.tolist()).embeddings,
            classifier.embed_files_with_failures(real.paths.tolist()).embeddings)


def _classifier(messages: list[str], gen_probs: np.ndarray, ref_probs: np.ndarray | None) -> dict:
    """IS, mIS (and AM with reference probabilities) from p(y|x) rows."""
    out: dict[str, Any] = {}
    value = _attempt(messages, "IS", metrics.inception_score, gen_probs)
    out["is"], out["is_std"] = (None, None) if value is None else value
    out["mis"] = _attempt(messages, "mIS", metrics.modified_inception_score, gen_probs)
    out["am"] = (_attempt(messages, "AM", metrics.am_score, ref_probs, gen_probs) if ref_probs is not None else None)
    if ref_probs is None:
        messages.append("AM: not computed: needs reference probabilities of real speech")
    elif out["am"] is not None and math.isinf(out["am"]):
        # The true value is +inf; any finite figure would only reflect a logarithm floor. JSON has no infinity.
        classes = metrics.am_unbounded_classes(ref_probs, gen_probs)
        out["am"] = None
        out["am_unbounded"] = (f"+inf: the generated set never predicts {classes.size} class(es) the real set "
                               f"predicts (p_gen(y) = 0 < p_ref(y) for class {', '.join(map(str, classes[:5]))}"
                               f"{', ...' if classes.size > 5 else ''}), so KL(p_ref || p_gen) is infinite")
        messages.append(f"AM: unbounded, {out['am_unbounded']}")
    return out


def _ndb(messages: list[str], what: str, ref: np.ndarray, gen: np.ndarray, bins: int, seed: int) -> dict | None:
    value = _attempt(messages, what, metrics.ndb, ref, gen, bins=bins, seed=seed)
    return None if value is None else {k: value[k] for k in ("ndb", "ndb_over_k", "bins", "alpha", "seed")}


def _conditional_all(messages: list[str], x: np.ndarray, real_labels: np.ndarray, y: np.ndarray,
                     gen_labels: np.ndarray, num_subsets: int, subset_size: int, seed: int) -> dict | None:
    """cFD/cKD in the DeepSpeechDistances form: the generated set against *all* real utterances of its speakers."""
    same = np.isin(real_labels, np.setdiff1d(gen_labels, [""]))
    if same.sum() < 2:
        messages.append("cFD/cKD (all real): not computed: fewer than 2 real utterances of the generated speakers")
        return None
    ref = x[same]
    fd = _attempt(messages, "cFD (all real)", lambda: metrics.frechet_distance(*metrics.gaussian_stats(y),
                                                                                *metrics.gaussian_stats(ref)))
    kd = _kd(messages, "cKD (all real)", y, ref, num_subsets, subset_size, seed) or {}
    return {"cfd": fd, "ckd": kd.get("kd"), "ckd_std": kd.get("kd_std"), "n_real_same": int(same.sum())}


UTTERANCE_COLUMNS = ("path", "speaker", "similarity", "accepted_eer", "accepted_far", "nearest_speaker",
                     "nearest_similarity")


def _utterance_rows(generated: Stats, per: dict) -> list[dict]:
    """One dict per generated file (columns :data:`UTTERANCE_COLUMNS`); None where its speaker has no real speech."""
    rows = []
    for i, path in enumerate(generated.paths.tolist()):
        known = bool(per["known"][i])
        rows.append({"path": path, "speaker": str(generated.labels[i]),
                     "similarity": float(per["similarity"][i]) if known else None,
                     "accepted_eer": bool(per["accepted_eer"][i]) if known else None,
                     "accepted_far": bool(per["accepted_far"][i]) if known else None,
                     "nearest_speaker": str(per["nearest_speaker"][i]),
                     "nearest_similarity": float(per["nearest_similarity"][i])})
    return rows


def utterance_results(real: Stats, generated: Stats, far: float = FAR_TARGET) -> list[dict]:
    """Every generated file: its similarity to its speaker's real centroid, its acceptance at the real EER and
    false-accept thresholds, and its nearest real speaker (``metrics.comparable_similarity``)."""
    check_compatible(real, generated)
    sim = metrics.comparable_similarity(generated.embeddings, generated.labels, real.embeddings, real.labels, far)
    return _utterance_rows(generated, sim["per_utterance"])


def worst_utterances(rows: Sequence[dict], n: int) -> list[dict]:
    """The ``n`` files least similar to their speaker (of those whose speaker has real speech)."""
    return sorted((r for r in rows if r["similarity"] is not None), key=lambda r: r["similarity"])[:max(n, 0)]


INTERVAL_METHOD = "percentile, two-level bootstrap: speakers with replacement, then utterances within each"


def _intervals(messages: list[str], real: Stats, generated: Stats, far: float, num_subsets: int, subset_size: int,
               seed: int, replicates: int) -> dict:
    settings = {"replicates": replicates, "seed": seed, "level": 0.95, "method": INTERVAL_METHOD}
    try:
        found = metrics.set_intervals(real.embeddings, real.labels, generated.embeddings, generated.labels, far,
                                      num_subsets, subset_size, seed, replicates)
    except DeepSpeakerError as exc:
        messages.append(f"intervals: not computed: {exc}")
        return {**settings, "skipped": str(exc)}
    return {**settings, "values": {k: iv.to_dict() for k, iv in found.items()}}


def _shared(messages: list[str], gen_probs: np.ndarray | None, ref_probs: np.ndarray | None,
            paired_folders: tuple[str, str] | None) -> dict:
    """The numbers no embedding space changes: classifier scores and the paired MR-STFT distance."""
    out: dict[str, Any] = {}
    if gen_probs is not None:
        out["classifier"] = _classifier(messages, gen_probs, ref_probs)
    if paired_folders is not None:
        out["mr_stft"] = _mr_stft(messages, *paired_folders)
    return out


NOISE_BATCH = 64  # noise signals prepared and embedded at once


def noise_references(real: Stats, encoder: Encoder, seed: int = 0,
                     kinds: Sequence[str] | None = None) -> dict[str, Stats]:
    """The noise sets of ``real`` (:mod:`.noise`: one file per real file, its length, rate and speaker label),
    embedded by ``encoder`` as files are (decoded at its rate, then ``prepare_signal``), as ``{kind: Stats}``.

    A noise file the encoder refuses is a failure of its set; a set of fewer than 2 embeddings is left out."""
    from ..data.audio import AudioError, resample
    from .noise import NOISE_KINDS, noise_set

    out: dict[str, Stats] = {}
    for kind in (NOISE_KINDS if kinds is None else kinds):
        rows, labels, paths, failures, batch = [], [], [], [], []

        def flush() -> None:
            if batch:
                rows.append(encoder.embed_prepared([b[2] for b in batch]))
                labels.extend(b[1] for b in batch)
                paths.extend(b[0] for b in batch)
                batch.clear()

        for item in noise_set(kind, real.paths.tolist(), real.labels.tolist(), seed):
            where = f"{kind} noise of {item.path}"
            try:
                prepared = encoder.prepare_signal(resample(item.signal, item.sample_rate, encoder.sample_rate),
                                                  encoder.sample_rate, where)
            except AudioError as exc:
                failures.append(exc.failure)
                continue
            batch.append((where, item.label, prepared))
            if len(batch) >= NOISE_BATCH:
                flush()
        flush()
        if sum(len(r) for r in rows) < 2:
            continue
        out[kind] = make_stats(np.concatenate(rows), labels, paths, encoder.identity, encoder.settings,
                               f"{kind} noise of {real.source}", failures, encoder.name)
    return out


ANCHOR_SIM_DISTANCE = ("2-Wasserstein distance between per-utterance cosines to the speaker's real centroid; "
                       "reference: the real utterances' leave-one-out cosines")


def _anchor(d_real: float, d_noise: Mapping[str, float]) -> dict:
    """The anchored score of one distance to real and the distances to each noise set (metrics.anchored)."""
    from ..metrics.anchored import nearest_noise, noise_anchored_score

    kinds = list(d_noise)
    # FD is reported as computed and can be a rounding-size negative for (nearly) equal sets: 0 here.
    real = max(float(d_real), 0.0)
    noise = np.maximum(np.array([d_noise[k] for k in kinds], dtype=np.float64), 0.0)
    return {"score": noise_anchored_score(real, noise), "d_real": float(d_real),
            "d_noise": {k: float(d_noise[k]) for k in kinds}, "nearest_noise": kinds[nearest_noise(noise)]}


def _fd_to_each(x: np.ndarray, others: Mapping[str, np.ndarray]) -> dict[str, float]:
    """FD of the set ``x`` to each set of ``others`` (metrics.frechet_distance; ``x``'s square root taken once)."""
    from ..metrics.distances import _frechet_with_root, _sqrt_psd

    mu, sigma = metrics.gaussian_stats(x)
    root = _sqrt_psd(sigma)
    return {k: _frechet_with_root(mu, sigma, root, *metrics.gaussian_stats(y)) for k, y in others.items()}


def _anchored_sim(real: Stats, generated: Stats, noise: Mapping[str, Stats]) -> dict:
    """SIM anchored: W2 of the generated set's SECS terms to the real leave-one-out target scores and to each noise
    set's cosines to its (real file's) speaker's real centroid."""
    from ..metrics.anchored import wasserstein_1d
    from ..metrics.distances import _centroid_cosines
    from ..metrics.similarity import real_trials

    x = real.embeddings.astype(np.float64)
    gen, known = _centroid_cosines(generated.embeddings.astype(np.float64), generated.labels, x, real.labels)
    if not known.any():
        raise DeepSpeakerError("no generated speaker has real utterances")
    scores, is_target = real_trials(x, real.labels)
    reference = scores[is_target == 1]
    if reference.size == 0:
        raise DeepSpeakerError("no real speaker has 2 utterances for the leave-one-out reference")
    d_noise = {}
    for kind, stats in noise.items():
        cos, _ = _centroid_cosines(stats.embeddings.astype(np.float64), stats.labels, x, real.labels)
        if cos.size:
            d_noise[kind] = wasserstein_1d(gen, cos)
    if not d_noise:
        raise DeepSpeakerError("no noise set has utterances of the real speakers")
    return {**_anchor(wasserstein_1d(gen, reference), d_noise), "distance": ANCHOR_SIM_DISTANCE,
            "n_generated": int(gen.size), "n_reference": int(reference.size)}


def _anchored(messages: list[str], real: Stats, generated: Stats, noise: Mapping[str, Stats] | None,
              seed: int) -> dict | None:
    """The noise-anchored FD and SIM scores (docs metrics.md) beside the raw ones, or None with a message."""
    if noise is None:
        if real.embedder is None:
            messages.append("anchored scores: not computed: no encoder to embed the noise sets with (statistics "
                            "made without one; pass noise= to compare)")
            return None
        try:
            encoder = real.embedder()
            noise = noise_references(real, encoder, seed)
        except DeepSpeakerError as exc:
            messages.append(f"anchored scores: not computed: {exc}")
            return None
    for kind, stats in noise.items():
        check_compatible(real, stats)
        messages.extend(f"anchored scores: {kind} noise: skipped {f}" for f in stats.failures)
    if not noise:
        messages.append("anchored scores: not computed: no noise set has 2 embeddings")
        return None
    x, y = real.embeddings, generated.embeddings
    noise_sets = {k: s.embeddings for k, s in noise.items()}
    out: dict[str, Any] = {"noise_kinds": list(noise), "seed": seed,
                           "noise_n": {k: int(s.embeddings.shape[0]) for k, s in noise.items()}}
    # d_real is the report's "FD, full sets"; the baseline anchors one real half against the other (as the
    # baseline FD) and against the noise sets.
    out["fd"] = _attempt(messages, "anchored FD", lambda: _anchor(
        metrics.frechet_distance(real.mu, real.sigma, generated.mu, generated.sigma), _fd_to_each(y, noise_sets)))
    half_a, half_b = split_per_label(real.labels, np.random.default_rng(seed))
    a, b = x[half_a], x[half_b]

    def baseline() -> dict:
        d = _fd_to_each(a, {"": b, **noise_sets})
        return _anchor(d.pop(""), d)

    out["fd_baseline"] = (_attempt(messages, "anchored FD baseline", baseline) if min(len(a), len(b)) >= 2
                          else None)
    out["sim"] = _attempt(messages, "anchored SIM", _anchored_sim, real, generated, noise)
    return out


def _config(config: CompareConfig | None, options: Mapping[str, Any]) -> CompareConfig:
    """``config`` (default: :class:`CompareConfig`'s defaults) with the keyword ``options`` of the older API
    (``seed=3, bootstrap=100``, ...) in place of its fields; checked either way."""
    config = config if config is not None else CompareConfig()
    return replace(config, **options) if options else config


def compare(real: Stats, generated: Stats, config: CompareConfig | None = None, *,
            gen_probs: np.ndarray | None = None, ref_probs: np.ndarray | None = None,
            paired_folders: tuple[str, str] | None = None, noise: Mapping[str, Stats] | None = None,
            **options: Any) -> dict:
    """The comparison report (JSON-ready): every distance for generated vs real and for the real-halves baseline.

    ``config`` holds the numbers (:class:`~deep_speaker.eval.config.CompareConfig`: seeds, subset sizes, ``far``,
    ``bootstrap``, ``worst``); its fields may also be given as keywords (``compare(real, gen, seed=3)``).
    ``paired_folders`` = (real_dir, generated_dir) adds the paired MR-STFT distance; ``gen_probs`` (and
    ``ref_probs``) [n, K] softmax rows add IS, mIS (and AM). Acceptance is at the real EER threshold and at the
    ``far`` false-accept threshold; ``bootstrap`` replicates (0: none) give 95 % intervals; ``worst`` files are listed.
    ``anchor_noise`` adds the noise-anchored FD and SIM scores (``anchored``), against ``noise`` (``{kind: Stats}``)
    or, when not given, the noise sets of :func:`noise_references` embedded by ``real.embedder``.
    """
    config = _config(config, options)
    seed, num_splits, subset_size = config.seed, config.num_splits, config.subset_size
    num_subsets, ndb_bins, fd_inf_points = config.num_subsets, config.ndb_bins, config.fd_inf_points
    far, bootstrap, worst = config.far, config.bootstrap, config.worst
    check_compatible(real, generated)
    msgs: list[str] = []
    x, y = real.embeddings, generated.embeddings
    # The baseline halves are split per speaker, the same split (same seed) as the SECS ceiling's.
    half_a, half_b = split_per_label(real.labels, np.random.default_rng(seed))
    a, b = x[half_a], x[half_b]
    similarity = _attempt(msgs, "acceptance/rescaled SECS", metrics.comparable_similarity, y, generated.labels, x,
                          real.labels, far)
    rows = _utterance_rows(generated, similarity.pop("per_utterance")) if similarity else []
    report: dict[str, Any] = {
        "settings": {**config.report_settings(), "encoder": real.encoder, "model_identity": real.model_identity,
                     "feature_settings": real.feature_settings},
        "real": _describe(real),
        "generated": _describe(generated),
        "baseline_halves": {"n_a": int(a.shape[0]), "n_b": int(b.shape[0])},
        "fd": {"full": metrics.frechet_distance(real.mu, real.sigma, generated.mu, generated.sigma),
               "splits": _attempt(msgs, "FD", metrics.frechet_distance_splits, x, y, num_splits, seed)},
        "kd": _kd(msgs, "KD", x, y, num_subsets, subset_size, seed),
        "fd_inf": _attempt(msgs, "FD∞", metrics.fd_infinity, x, y, fd_inf_points, seed=seed),
        "conditional": _attempt(msgs, "cFD/cKD", metrics.conditional_distances, x, real.labels, y,
                                generated.labels, num_subsets, subset_size, seed),
        "conditional_all": _conditional_all(msgs, x, real.labels, y, generated.labels, num_subsets, subset_size, seed),
        "speaker_similarity": _attempt(msgs, "SECS", metrics.speaker_similarity, y, generated.labels, x,
                                       real.labels),
        "similarity": similarity,
        "worst": worst_utterances(rows, worst),
        "sap_san": _sap_san(msgs, "SAP/SAN generated", generated),
        "ndb": _ndb(msgs, "NDB", x, y, ndb_bins, seed),
        "baseline": {
            "fd": {"full": metrics.frechet_distance(*metrics.gaussian_stats(a), *metrics.gaussian_stats(b))
                   if min(len(a), len(b)) >= 2 else None,
                   "splits": _attempt(msgs, "baseline FD", metrics.frechet_distance_splits, a, b, num_splits, seed)},
            "kd": _kd(msgs, "baseline KD", a, b, num_subsets, subset_size, seed),
            "fd_inf": _attempt(msgs, "baseline FD∞", metrics.fd_infinity, a, b, fd_inf_points, seed=seed),
            "speaker_similarity": _attempt(msgs, "SECS ceiling", metrics.speaker_similarity_ceiling, x, real.labels,
                                           seed),
            "sap_san": _sap_san(msgs, "SAP/SAN real", real),
            "ndb": _ndb(msgs, "baseline NDB", a, b, ndb_bins, seed),
        },
    }
    if bootstrap:
        report["intervals"] = _intervals(msgs, real, generated, far, num_subsets, subset_size, seed, bootstrap)
    if config.anchor_noise:  # no key at all when off: reports stay as they were
        report["anchored"] = _anchored(msgs, real, generated, noise, seed)
    report.update(_shared(msgs, gen_probs, ref_probs, paired_folders))
    safe = to_json_safe(report, msgs)
    safe["messages"] = list(msgs)
    return safe


def compare_spaces(spaces: Mapping[str, tuple[Stats, Stats]], config: CompareConfig | None = None, *,
                   gen_probs: np.ndarray | None = None, ref_probs: np.ndarray | None = None,
                   paired_folders: tuple[str, str] | None = None, **options: Any) -> dict:
    """One report of several embedding spaces, ``spaces[encoder] = (real, generated)``: each a :func:`compare`
    report beside its own real baseline (``config`` and ``options`` as there); classifier scores and MR-STFT, which
    no space changes, once."""
    config = _config(config, options)
    msgs: list[str] = []
    report: dict[str, Any] = {"encoders": list(spaces),
                              "spaces": {name: compare(real, gen, config) for name, (real, gen) in spaces.items()}}
    report.update(to_json_safe(_shared(msgs, gen_probs, ref_probs, paired_folders), msgs))
    report["messages"] = msgs
    return report


def _describe(stats: Stats) -> dict:
    return {"source": stats.source, "n": int(stats.embeddings.shape[0]), "speakers": len(stats.speakers),
            "dimension": int(stats.embeddings.shape[1]), "failures": [f.to_dict() for f in stats.failures]}


def to_json_safe(value: Any, messages: list[str], where: str = "") -> Any:
    """Plain Python types only; a non-finite or complex number becomes None with a message (never NaN in JSON)."""
    if isinstance(value, dict):
        return {str(k): to_json_safe(v, messages, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json_safe(v, messages, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating, complex, np.complexfloating)):
        if isinstance(value, (complex, np.complexfloating)) or not math.isfinite(float(value)):
            messages.append(f"{where}: value {value!r} is not a finite real number; reported as null")
            return None
        return float(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _interval_text(interval: dict | None, scale: float = 1.0, digits: str = ".3g") -> str:
    return "" if interval is None else f" [{scale * interval['low']:{digits}}, {scale * interval['high']:{digits}}]"


def _fmt(value: Any, std: Any = None, interval: dict | None = None) -> str:
    """``value ± std [low, high]`` (4 significant digits), "n/a" for a missing value."""
    if value is None:
        return "n/a"
    text = f"{value:.4g}" + ("" if std is None else f" ± {std:.2g}")
    return text + _interval_text(interval)


def _pct(value: Any, interval: dict | None = None) -> str:
    """A share as ``12.3 % [low, high]``."""
    return "n/a" if value is None else f"{100 * value:.1f} %" + _interval_text(interval, 100.0, ".1f")


def _get(report: dict, *keys: str) -> Any:
    """``report[k1][k2]...``, None where a level is missing or None."""
    for key in keys:
        if not isinstance(report, dict) or report.get(key) is None:
            return None
        report = report[key]
    return report


def _space_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """``(key, label, generated cell, baseline cell)`` of one space's report, in table order."""
    s, base, cond = report["settings"], report["baseline"], report.get("conditional") or {}
    fd_split = _get(report, "fd", "splits") or {}
    kd = report.get("kd") or {}
    fit = report.get("fd_inf") or {}
    dsd = report.get("conditional_all") or {}
    g, r = _get(report, "similarity", "generated") or {}, _get(report, "similarity", "real") or {}

    def iv(key: str) -> dict | None:
        return _get(report, "intervals", "values", key)

    return [
        ("fd_splits", f"FD, mean ± std over {s['num_splits']} splits (of {fd_split.get('split_size', '?')})",
         _fmt(fd_split.get("fd"), fd_split.get("fd_std")),
         _fmt(_get(base, "fd", "splits", "fd"), _get(base, "fd", "splits", "fd_std"))),
        ("fd", "FD, full sets", _fmt(_get(report, "fd", "full"), interval=iv("fd")), _fmt(_get(base, "fd", "full"))),
        ("fd_inf", f"FD∞, fit of FD(N) = FD∞ + c/N, N = {min(fit.get('ns', [0]))}..{max(fit.get('ns', [0]))}",
         _fmt(fit.get("fd_inf")), _fmt(_get(base, "fd_inf", "fd_inf"))),
        ("kd", f"KD, {kd.get('num_subsets', s['num_subsets'])} subsets of {kd.get('subset_size', s['subset_size'])}",
         _fmt(kd.get("kd"), kd.get("kd_std"), iv("kd")), _fmt(_get(base, "kd", "kd"), _get(base, "kd", "kd_std"))),
        ("cfd", "cFD, vs a per-speaker half of real of the same speakers", _fmt(_get(cond, "generated", "cfd")),
         _fmt(_get(cond, "real_baseline", "cfd"))),
        ("fd_other", "FD, vs real of other speakers", _fmt(_get(cond, "generated", "fd")),
         _fmt(_get(cond, "real_baseline", "fd"))),
        ("ckd", "cKD, vs a per-speaker half of real of the same speakers",
         _fmt(_get(cond, "generated", "ckd"), _get(cond, "generated", "ckd_std")),
         _fmt(_get(cond, "real_baseline", "ckd"), _get(cond, "real_baseline", "ckd_std"))),
        ("kd_other", "KD, vs real of other speakers",
         _fmt(_get(cond, "generated", "kd"), _get(cond, "generated", "kd_std")),
         _fmt(_get(cond, "real_baseline", "kd"), _get(cond, "real_baseline", "kd_std"))),
        ("cfd_all", "cFD, vs all real of the same speakers (DeepSpeechDistances)", _fmt(dsd.get("cfd")), ""),
        ("ckd_all", "cKD, vs all real of the same speakers (DeepSpeechDistances)",
         _fmt(dsd.get("ckd"), dsd.get("ckd_std")), ""),
        ("secs", "SECS, cosine to the speaker's real centroid",
         _fmt(_get(report, "speaker_similarity", "secs"), _get(report, "speaker_similarity", "secs_std"), iv("secs")),
         _fmt(_get(base, "speaker_similarity", "secs"), _get(base, "speaker_similarity", "secs_std"))),
        ("secs_rescaled", "SECS rescaled: 0 = real different-, 1 = same-speaker mean",
         _fmt(g.get("secs_rescaled"), interval=iv("secs_rescaled")), "1" if g.get("secs_rescaled") is not None else ""),
        ("accept_eer", "accepted as its speaker at the real EER threshold",
         _pct(g.get("accept_eer"), iv("accept_eer")), _pct(r.get("accept_eer"), iv("real_accept_eer"))),
        ("accept_far", f"accepted at the real {100 * s.get('far_target', FAR_TARGET):g} % false-accept threshold",
         _pct(g.get("accept_far"), iv("accept_far")), _pct(r.get("accept_far"), iv("real_accept_far"))),
        ("eer", "EER, verified against the real speakers' centroids", _pct(g.get("eer"), iv("eer")),
         _pct(r.get("eer"), iv("real_eer"))),
        ("identified", "nearest real speaker is its own", _pct(g.get("identified")), ""),
        ("sap", "SAP, same-speaker cosine (within the set)", _fmt(_get(report, "sap_san", "sap")),
         _fmt(_get(base, "sap_san", "sap"))),
        ("san", "SAN, different-speaker cosine", _fmt(_get(report, "sap_san", "san")),
         _fmt(_get(base, "sap_san", "san"))),
        ("ndb", f"NDB/K, {s['ndb_bins']} k-means bins on real",
         _fmt(_get(report, "ndb", "ndb_over_k")), _fmt(_get(base, "ndb", "ndb_over_k"))),
    ] + (_anchored_rows(report) if "anchored" in report else [])


def _anchored_cell(value: dict | None) -> str:
    return "n/a" if value is None else f"{value['score']:.1f} (nearest: {value['nearest_noise']})"


def _anchored_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """The noise-anchored scores' rows, only in a report that asked for them."""
    anchored = report.get("anchored") or {}
    return [("fd_anchored", "FD anchored: 100 = real, 0 = nearest noise set (TTSDS)",
             _anchored_cell(anchored.get("fd")), _anchored_cell(anchored.get("fd_baseline"))),
            ("sim_anchored", "SIM anchored: W2 of cosines to the centroid, 100 = real, 0 = noise",
             _anchored_cell(anchored.get("sim")), "")]


def _shared_rows(report: dict) -> list[tuple[str, str]]:
    """``(label, value)`` of the classifier scores and MR-STFT: numbers of the audio, not of a space."""
    rows = []
    if "classifier" in report:
        c = report["classifier"]
        rows += [("IS (class score)", _fmt(c.get("is"), c.get("is_std"))), ("mIS", _fmt(c.get("mis"))),
                 ("AM score", "inf" if c.get("am_unbounded") else _fmt(c.get("am")))]
    if report.get("mr_stft"):
        m = report["mr_stft"]
        rows += [(f"MR-STFT spectral convergence ({m['pairs']} pairs)",
                  _fmt(m["spectral_convergence"], m["spectral_convergence_std"])),
                 ("MR-STFT log-magnitude distance", _fmt(m["log_magnitude"], m["log_magnitude_std"]))]
    return rows


def _spaces(report: dict) -> list[tuple[str, dict]]:
    """``(encoder, report)`` of each space: one for a :func:`compare` report, several for :func:`compare_spaces`."""
    if "spaces" in report:
        return [(name, report["spaces"][name]) for name in report["encoders"]]
    return [(report["settings"]["encoder"], report)]


def report_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """The table of a :func:`compare` or :func:`compare_spaces` report as ``(header, rows)`` (for ``tables``):
    one generated and one baseline column per space, then the numbers shared by all spaces."""
    spaces = _spaces(report)
    if "spaces" in report:
        header = ["metric"] + [f"{name}: {col}" for name, _ in spaces for col in ("generated vs real", "real baseline")]
    else:
        header = ["metric", "generated vs real", "real half vs half"]
    cells = [{key: (gen, base) for key, _, gen, base in _space_rows(sp)} for _, sp in spaces]
    rows = [[label] + [c for space in cells for c in space.get(key, ("n/a", "n/a"))]
            for key, label, _, _ in _space_rows(spaces[0][1])]
    rows += [[label, value] + [""] * (len(header) - 2) for label, value in _shared_rows(report)]
    return header, rows


def _space_lines(name: str, report: dict, several: bool) -> list[str]:
    """What was compared in one space: the sets, the encoder, the baseline and the verifier's thresholds."""
    s, real, gen = report["settings"], report["real"], report["generated"]
    th = _get(report, "similarity", "thresholds")
    verifier = (f"; verifier thresholds on real trials: EER {th['eer']:.4g}, {100 * th['far_target']:g} % false "
                f"accepts {th['far']:.4g}" if th else "")
    lines = [f"generated: {gen['source']} ({gen['n']} utterances, {gen['speakers']} speakers)",
             f"real:      {real['source']} ({real['n']} utterances, {real['speakers']} speakers)",
             f"encoder {s['encoder']}, model {s['model_identity']}, seed {s['seed']}; baseline = two disjoint "
             f"per-speaker halves of the real set ({report['baseline_halves']['n_a']} + "
             f"{report['baseline_halves']['n_b']}){verifier}"]
    return [f"[{name}] {line}" for line in lines] if several else lines


def _worst_lines(name: str, report: dict, several: bool) -> list[str]:
    if not report.get("worst"):
        return []
    lines = [f"{f'[{name}] ' if several else ''}least similar generated files (cosine to their speaker's real "
             f"centroid; nearest real speaker):"]
    lines += [f"  {w['similarity']:.4f}  {w['path']}  (speaker {w['speaker']}; nearest {w['nearest_speaker']}, "
              f"{w['nearest_similarity']:.4f})" for w in report["worst"]]
    return lines


def format_table(report: dict) -> str:
    """The report as a table for people: generated vs real beside each space's real baseline, then the least
    similar files and the messages. Takes a :func:`compare` or a :func:`compare_spaces` report."""
    spaces = _spaces(report)
    several = "spaces" in report
    lines = [line for name, sp in spaces for line in _space_lines(name, sp, several)] + [""]
    lines.append(text_table(*report_table(report)))
    lines.append("similarities: cosine similarity, higher is closer; distances: lower is closer; acceptance and "
                 "EER baselines: the real trials that set the thresholds")
    for name, sp in spaces:
        iv = sp.get("intervals")
        if iv:
            lines.append(f"{f'[{name}] ' if several else ''}" + (
                f"[low, high]: 95 % bootstrap interval, {iv['replicates']} resamples of the speakers, then of each "
                f"speaker's utterances (seed {iv['seed']})" if "values" in iv else f"no intervals: {iv['skipped']}"))
    for name, sp in spaces:
        lines += _worst_lines(name, sp, several)
    notes = [f"{f'[{name}] ' if several else ''}{m}" for name, sp in spaces for m in sp.get("messages", [])]
    notes += report.get("messages", []) if several else []
    if notes:
        lines += ["", "notes:"] + [f"  - {m}" for m in notes]
    return "\n".join(lines)
