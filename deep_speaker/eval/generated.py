"""Evaluating generated speech, the numbers: statistics of a set (files: ``eval.formats``) and the comparison report
of a generated set against real speech (its words and tables: ``eval.generated_report``).

Every number comes from :mod:`deep_speaker.metrics` (definitions in metrics.md); this module picks the sets,
adds the real-data baseline (two disjoint per-speaker halves of the real set, or the real trials for acceptance
and EER), collects each metric's messages instead of failing, and guarantees a report of finite real numbers
only. Several embedding spaces compare in one report (:func:`compare_spaces`), each beside its own baseline.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import metrics
from ..data.corpus import find_audio_files, scan_corpus
from ..encoders import Encoder
from ..errors import DeepSpeakerError
from ..metrics.distances import split_per_label
from ..metrics.moments import merge_moments, moments_gaussian
from ..metrics.similarity import FAR_TARGET
from ..settings import settings_difference
from .config import CompareConfig, StatsConfig
from .embedded import Embedded, Stats, make_stats
from .formats import read_stats


def compute_stats(source: str | os.PathLike | Sequence[str | os.PathLike], encoder: Encoder,
                  config: StatsConfig | None = None) -> Stats:
    """Embed a folder (speaker labels from its layout, ``config.layout``) or a list of files (unlabelled) into
    :class:`Stats`."""
    layout = (config or StatsConfig()).layout
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise DeepSpeakerError(f"{folder}: not a folder of audio files")
        utterances, rejected, _ = scan_corpus(folder, layout=layout)
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
    rows = Embedded(result.embeddings, [label_of[p] for p in result.paths], result.paths,
                    sorted(rejected) + result.failures, encoder.name, encoder.identity)
    stats = make_stats(rows, encoder.settings, name)
    stats.embedder = lambda: encoder
    return stats


def merge_stats(paths: Sequence[str | os.PathLike]) -> Stats:
    """One statistics set of several files of disjoint utterances (e.g. shards embedded on different machines):
    embeddings, labels and paths concatenated in order; mu and sigma from the merged moments. The files must come
    from the same encoder, model and settings, and no utterance may appear twice."""
    if not paths:
        raise DeepSpeakerError("no statistics files to merge")
    parts = [read_stats(p) for p in paths]  # each checked whole, so a bad part stops the merge before any write
    for other in parts[1:]:
        check_compatible(parts[0], other)
    seen: dict[str, str] = {}
    for part in parts:
        for path in part.paths.tolist():
            if path in seen:
                raise DeepSpeakerError(f"{seen[path]} and {part.source} both hold {path}: merge disjoint sets only")
            seen[path] = part.source
    # The moments of the embeddings just checked and concatenated (the same sums write_stats stored, to the bit),
    # not a second read of the files, which could differ from what was checked.
    merged = merge_moments(p.moments for p in parts)
    mu, sigma = moments_gaussian(merged)
    first = parts[0]
    rows = Embedded(np.concatenate([p.embeddings for p in parts]), [s for p in parts for s in p.embedded.speakers],
                    [f for p in parts for f in p.embedded.paths], [], first.encoder, first.model_identity)
    return Stats(rows, first.feature_settings, mu, sigma, " + ".join(p.source for p in parts))


def load_side(source: str | os.PathLike, encoder: Encoder | Callable[[], Encoder],
              config: StatsConfig | None = None) -> Stats:
    """A folder (embedded now, as ``config`` says) or a statistics ``.npz``; ``encoder`` may be a factory, called only
    for folders."""
    path = Path(source)
    if path.is_dir():
        return compute_stats(path, encoder() if callable(encoder) else encoder, config)
    if path.is_file():
        stats = read_stats(path)
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
    value = _attempt(messages, what, metrics.kernel_distance, x, y, num_subsets=num_subsets,
                     subset_size=subset_size, seed=seed)
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
    sim = metrics.comparable_similarity(generated.embeddings, generated.labels, real=real.embeddings,
                                        real_labels=real.labels, far=far)
    return _utterance_rows(generated, sim["per_utterance"])


def worst_utterances(rows: Sequence[dict], n: int) -> list[dict]:
    """The ``n`` files least similar to their speaker (of those whose speaker has real speech)."""
    return sorted((r for r in rows if r["similarity"] is not None), key=lambda r: r["similarity"])[:max(n, 0)]


INTERVAL_METHOD = "percentile, two-level bootstrap: speakers with replacement, then utterances within each"


def _intervals(messages: list[str], real: Stats, generated: Stats, far: float, num_subsets: int, subset_size: int,
               seed: int, replicates: int) -> dict:
    settings = {"replicates": replicates, "seed": seed, "level": 0.95, "method": INTERVAL_METHOD}
    try:
        found = metrics.set_intervals(real.embeddings, real.labels, gen=generated.embeddings,
                                      gen_labels=generated.labels, far=far,
                                      num_subsets=num_subsets, subset_size=subset_size, seed=seed,
                                      replicates=replicates)
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


def noise_references(real: Stats, encoder: Encoder, *, seed: int = 0,
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

        for item in noise_set(kind, real.paths.tolist(), real.labels.tolist(), seed=seed):
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
        out[kind] = make_stats(Embedded(np.concatenate(rows), labels, paths, failures, encoder.name, encoder.identity),
                               encoder.settings, f"{kind} noise of {real.source}")
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
            noise = noise_references(real, encoder, seed=seed)
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
    similarity = _attempt(msgs, "acceptance/rescaled SECS", metrics.comparable_similarity, y, generated.labels,
                          real=x, real_labels=real.labels, far=far)
    rows = _utterance_rows(generated, similarity.pop("per_utterance")) if similarity else []
    report: dict[str, Any] = {
        "settings": {**config.report_settings(), "encoder": real.encoder, "model_identity": real.model_identity,
                     "feature_settings": real.feature_settings},
        "real": _describe(real),
        "generated": _describe(generated),
        "baseline_halves": {"n_a": int(a.shape[0]), "n_b": int(b.shape[0])},
        "fd": {"full": metrics.frechet_distance(real.mu, real.sigma, generated.mu, generated.sigma),
               "splits": _attempt(msgs, "FD", metrics.frechet_distance_splits, x, y, num_splits=num_splits,
                                  seed=seed)},
        "kd": _kd(msgs, "KD", x, y, num_subsets, subset_size, seed),
        "fd_inf": _attempt(msgs, "FD∞", metrics.fd_infinity, x, y, num_points=fd_inf_points, seed=seed),
        "conditional": _attempt(msgs, "cFD/cKD", metrics.conditional_distances, x, real.labels, gen=y,
                                gen_labels=generated.labels, num_subsets=num_subsets, subset_size=subset_size,
                                seed=seed),
        "conditional_all": _conditional_all(msgs, x, real.labels, y, generated.labels, num_subsets, subset_size, seed),
        "speaker_similarity": _attempt(msgs, "SECS", metrics.speaker_similarity, y, generated.labels, real=x,
                                       real_labels=real.labels),
        "similarity": similarity,
        "worst": worst_utterances(rows, worst),
        "sap_san": _sap_san(msgs, "SAP/SAN generated", generated),
        "ndb": _ndb(msgs, "NDB", x, y, ndb_bins, seed),
        "baseline": {
            "fd": {"full": metrics.frechet_distance(*metrics.gaussian_stats(a), *metrics.gaussian_stats(b))
                   if min(len(a), len(b)) >= 2 else None,
                   "splits": _attempt(msgs, "baseline FD", metrics.frechet_distance_splits, a, b,
                                      num_splits=num_splits, seed=seed)},
            "kd": _kd(msgs, "baseline KD", a, b, num_subsets, subset_size, seed),
            "fd_inf": _attempt(msgs, "baseline FD∞", metrics.fd_infinity, a, b, num_points=fd_inf_points,
                              seed=seed),
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
