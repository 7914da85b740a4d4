"""Evaluating generated speech: statistics files, and the comparison report of a generated set against real speech.

Every number comes from :mod:`deep_speaker.metrics` (definitions in metrics.md); this module picks the sets,
adds the real-data baseline (two disjoint per-speaker halves of the real set), collects each metric's
messages instead of failing, and guarantees a report of finite real numbers only.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import metrics
from ..atomic import atomic_write
from ..data.corpus import find_audio_files, scan_corpus
from ..encoders import DEFAULT_ENCODER, Encoder
from ..errors import DeepSpeakerError, Failure
from ..metrics.distances import split_per_label
from ..settings import settings_difference

STATS_FORMAT = 1
STATS_KEYS = ("mu", "sigma", "embeddings", "labels", "paths", "model_identity", "feature_settings")
# Written since the Encoder interface; a file without it was made by the only encoder there was.
ENCODER_KEY = "encoder"


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

    @property
    def speakers(self) -> list[str]:
        return sorted(set(self.labels.tolist()) - {""})


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
    return make_stats(result.embeddings, [label_of[p] for p in result.paths], result.paths, encoder.identity,
                      encoder.settings, name, sorted(rejected) + result.failures, encoder.name)


def save_stats(path: str | os.PathLike, stats: Stats) -> None:
    """Write a statistics ``.npz`` (plain arrays and JSON strings, no objects), atomically."""
    with atomic_write(path) as f:
        np.savez(f, format_version=np.int64(STATS_FORMAT), mu=stats.mu, sigma=stats.sigma,
                 embeddings=stats.embeddings, labels=stats.labels.astype(str), paths=stats.paths.astype(str),
                 model_identity=np.str_(stats.model_identity), encoder=np.str_(stats.encoder),
                 feature_settings=np.str_(json.dumps(stats.feature_settings, sort_keys=True)))


def load_stats(path: str | os.PathLike) -> Stats:
    """Read a statistics file written by :func:`save_stats` (``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in STATS_KEYS if k not in data.files]
            if missing:
                raise DeepSpeakerError(f"{path}: not a deep-speaker statistics file (missing {', '.join(missing)})")
            arrays = {k: data[k] for k in STATS_KEYS}
            encoder = str(data[ENCODER_KEY]) if ENCODER_KEY in data.files else DEFAULT_ENCODER
    except (OSError, ValueError) as exc:
        raise DeepSpeakerError(f"{path}: cannot read statistics file ({exc})") from exc
    n, d = arrays["embeddings"].shape
    if arrays["mu"].shape != (d,) or arrays["sigma"].shape != (d, d) or arrays["labels"].shape != (n,) \
            or arrays["paths"].shape != (n,):
        raise DeepSpeakerError(f"{path}: statistics file arrays have inconsistent shapes")
    if not all(np.all(np.isfinite(arrays[k])) for k in ("mu", "sigma", "embeddings")):
        raise DeepSpeakerError(f"{path}: statistics file holds NaN or infinite values; recompute it")
    return Stats(arrays["embeddings"], arrays["labels"], arrays["paths"], str(arrays["model_identity"]),
                 json.loads(str(arrays["feature_settings"])), arrays["mu"], arrays["sigma"], str(path), [], encoder)


def load_side(source: str | os.PathLike, encoder: Encoder | Callable[[], Encoder], layout: str = "auto") -> Stats:
    """A folder (embedded now) or a statistics ``.npz``; ``encoder`` may be a factory, called only for folders."""
    path = Path(source)
    if path.is_dir():
        return compute_stats(path, encoder() if callable(encoder) else encoder, layout)
    if path.is_file():
        return load_stats(path)
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
    return out


def _ndb(messages: list[str], what: str, ref: np.ndarray, gen: np.ndarray, bins: int, seed: int) -> dict | None:
    value = _attempt(messages, what, metrics.ndb, ref, gen, bins=bins, seed=seed)
    return None if value is None else {k: value[k] for k in ("ndb", "ndb_over_k", "bins", "alpha", "seed")}


def compare(real: Stats, generated: Stats, *, seed: int = 0, num_splits: int = 5, subset_size: int = 1000,
            num_subsets: int = 100, ndb_bins: int = 50, fd_inf_points: int = 15, gen_probs: np.ndarray | None = None,
            ref_probs: np.ndarray | None = None, paired_folders: tuple[str, str] | None = None) -> dict:
    """The comparison report (JSON-ready): every distance for generated vs real and for the real-halves baseline.

    ``paired_folders`` = (real_dir, generated_dir) adds the paired MR-STFT distance; ``gen_probs`` (and
    ``ref_probs``) [n, K] softmax rows add IS, mIS (and AM).
    """
    check_compatible(real, generated)
    msgs: list[str] = []
    x, y = real.embeddings, generated.embeddings
    # The baseline halves are split per speaker, the same split (same seed) as the SECS ceiling's.
    half_a, half_b = split_per_label(real.labels, np.random.default_rng(seed))
    a, b = x[half_a], x[half_b]
    report: dict[str, Any] = {
        "settings": {"seed": seed, "num_splits": num_splits, "subset_size": subset_size, "num_subsets": num_subsets,
                     "ndb_bins": ndb_bins, "fd_inf_points": fd_inf_points, "encoder": real.encoder,
                     "model_identity": real.model_identity,
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
        "speaker_similarity": _attempt(msgs, "SECS", metrics.speaker_similarity, y, generated.labels, x,
                                       real.labels),
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
    if gen_probs is not None:
        report["classifier"] = _classifier(msgs, gen_probs, ref_probs)
    if paired_folders is not None:
        report["mr_stft"] = _mr_stft(msgs, *paired_folders)
    safe = to_json_safe(report, msgs)
    safe["messages"] = list(msgs)
    return safe


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


def _fmt(value: Any, std: Any = None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.4g}"
    return text if std is None else f"{text} ± {std:.2g}"


def _get(report: dict, *keys: str) -> Any:
    """``report[k1][k2]...``, None where a level is missing or None."""
    for key in keys:
        if not isinstance(report, dict) or report.get(key) is None:
            return None
        report = report[key]
    return report


def format_table(report: dict) -> str:
    """The report as a table for people: generated vs real, beside the real-halves baseline, then messages."""
    s, base, cond = report["settings"], report["baseline"], report.get("conditional") or {}
    fd_split = _get(report, "fd", "splits") or {}
    kd = report.get("kd") or {}
    fit = report.get("fd_inf") or {}
    rows = [
        (f"FD, mean ± std over {s['num_splits']} splits (of {fd_split.get('split_size', '?')})",
         _fmt(fd_split.get("fd"), fd_split.get("fd_std")),
         _fmt(_get(base, "fd", "splits", "fd"), _get(base, "fd", "splits", "fd_std"))),
        ("FD, full sets", _fmt(_get(report, "fd", "full")), _fmt(_get(base, "fd", "full"))),
        (f"FD∞, fit of FD(N) = FD∞ + c/N, N = {min(fit.get('ns', [0]))}..{max(fit.get('ns', [0]))}",
         _fmt(fit.get("fd_inf")), _fmt(_get(base, "fd_inf", "fd_inf"))),
        (f"KD, {kd.get('num_subsets', s['num_subsets'])} subsets of {kd.get('subset_size', s['subset_size'])}",
         _fmt(kd.get("kd"), kd.get("kd_std")), _fmt(_get(base, "kd", "kd"), _get(base, "kd", "kd_std"))),
        ("cFD, vs real of the same speakers", _fmt(_get(cond, "generated", "cfd")),
         _fmt(_get(cond, "real_baseline", "cfd"))),
        ("FD, vs real of other speakers", _fmt(_get(cond, "generated", "fd")),
         _fmt(_get(cond, "real_baseline", "fd"))),
        ("cKD, vs real of the same speakers", _fmt(_get(cond, "generated", "ckd"), _get(cond, "generated", "ckd_std")),
         _fmt(_get(cond, "real_baseline", "ckd"), _get(cond, "real_baseline", "ckd_std"))),
        ("KD, vs real of other speakers", _fmt(_get(cond, "generated", "kd"), _get(cond, "generated", "kd_std")),
         _fmt(_get(cond, "real_baseline", "kd"), _get(cond, "real_baseline", "kd_std"))),
        ("SECS, cosine to the speaker's real centroid",
         _fmt(_get(report, "speaker_similarity", "secs"), _get(report, "speaker_similarity", "secs_std")),
         _fmt(_get(base, "speaker_similarity", "secs"), _get(base, "speaker_similarity", "secs_std"))),
        ("SAP, same-speaker cosine (within the set)", _fmt(_get(report, "sap_san", "sap")),
         _fmt(_get(base, "sap_san", "sap"))),
        ("SAN, different-speaker cosine", _fmt(_get(report, "sap_san", "san")), _fmt(_get(base, "sap_san", "san"))),
        (f"NDB/K, {s['ndb_bins']} k-means bins on real",
         _fmt(_get(report, "ndb", "ndb_over_k")), _fmt(_get(base, "ndb", "ndb_over_k"))),
    ]
    if "classifier" in report:
        c = report["classifier"]
        rows += [("IS (class score)", _fmt(c.get("is"), c.get("is_std")), ""), ("mIS", _fmt(c.get("mis")), ""),
                 ("AM score", _fmt(c.get("am")), "")]
    if report.get("mr_stft"):
        m = report["mr_stft"]
        rows += [(f"MR-STFT spectral convergence ({m['pairs']} pairs)",
                  _fmt(m["spectral_convergence"], m["spectral_convergence_std"]), ""),
                 ("MR-STFT log-magnitude distance", _fmt(m["log_magnitude"], m["log_magnitude_std"]), "")]
    width = max(len(r[0]) for r in rows) + 2
    col = max(len(r[1]) for r in rows) + 2
    real, gen = report["real"], report["generated"]
    lines = [f"generated: {gen['source']} ({gen['n']} utterances, {gen['speakers']} speakers)",
             f"real:      {real['source']} ({real['n']} utterances, {real['speakers']} speakers)",
             f"encoder {s['encoder']}, model {s['model_identity']}, seed {s['seed']}; baseline = two disjoint "
             f"per-speaker halves of the real set ({report['baseline_halves']['n_a']} + "
             f"{report['baseline_halves']['n_b']})",
             "",
             f"{'metric':<{width}}{'generated vs real':<{col}}real half vs half",
             "-" * (width + col + 20)]
    lines += [f"{name:<{width}}{value:<{col}}{floor}".rstrip() for name, value, floor in rows]
    lines.append("similarities: cosine similarity, higher is closer; distances: lower is closer")
    if report.get("messages"):
        lines += ["", "notes:"] + [f"  - {m}" for m in report["messages"]]
    return "\n".join(lines)
