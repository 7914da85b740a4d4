"""Speaker verification over sets: labelled embeddings from a folder or cache, VoxCeleb trial lists, reports, tables,
plots. Any :class:`~deep_speaker.encoders.Encoder` gives the embeddings; only a feature cache needs Deep Speaker's."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import atomic_write
from ..data.audio import AudioError, read_audio
from ..data.corpus import Utterance, scan_corpus
from ..data.sources import FeatureSource, is_feature_folder, open_features
from ..encoders import FILES_PER_CHUNK, Encoder
from ..errors import DeepSpeakerError, Failure
from ..metrics import pair_scores, roc, sap_san, verification_report
from ..metrics.bootstrap import DEFAULT_REPLICATES, DEFAULT_SEED
from ..metrics.score_norm import DEFAULT_TOP_K
from ..validate import checked_array, checked_text, load_npz
from . import plots
from .scoring import (DEFAULT_PRIOR, NO_NORM, CalibrationRecord, ScoreNorm, calibrated_part, comparison_part,
                      fit_record, interval_part)
from .trials import Trials, read_trials

# Pictures of more utterances than this would be unreadable (and t-SNE slow): whole speakers are kept up to it.
MAX_PLOTTED = 1000


@dataclass
class Labelled:
    """Embeddings with their speaker and source (file path or cache id), and the inputs that failed."""

    embeddings: np.ndarray  # float32 [n, d]
    speakers: list[str]
    sources: list[str]
    failures: list[Failure] = field(default_factory=list)


def check_speakers(requested: Sequence[str], known: Sequence[str], where: str) -> None:
    """Raise a DeepSpeakerError naming the requested speakers missing from ``where`` and listing the known ones."""
    missing = [s for s in requested if s not in set(known)]
    if missing:
        shown = ", ".join(known[:50]) + (f", ... ({len(known)} in all)" if len(known) > 50 else "")
        raise DeepSpeakerError(f"unknown speaker {', '.join(missing)} in {where}; known speakers: {shown or 'none'}")


def folder_utterances(audio_dir: str | os.PathLike, layout: str = "auto", speakers: Sequence[str] | None = None
                      ) -> tuple[list[Utterance], list[Failure]]:
    """The utterances of a labelled folder, one walk (of ``speakers`` when given; an unknown one lists the known),
    and the files its layout rejects (when all speakers are asked for: they are reported, not dropped)."""
    utterances, rejected, _ = scan_corpus(audio_dir, layout)
    if not utterances:
        raise DeepSpeakerError(f"{audio_dir}: no audio files in a speaker layout found")
    if speakers is not None:
        check_speakers(speakers, sorted({u.speaker for u in utterances}), str(audio_dir))
        return [u for u in utterances if u.speaker in speakers], []
    return utterances, rejected


def embed_utterances(encoder: Encoder, utterances: Sequence[Utterance], failures: Sequence[Failure] = ()) -> Labelled:
    """Embeddings of the utterances, labelled with their speakers; ``failures`` and the files that failed."""
    speaker_of = {u.path: u.speaker for u in utterances}
    result = encoder.embed_files_with_failures([u.path for u in utterances])
    return Labelled(result.embeddings, [speaker_of[p] for p in result.paths], result.paths,
                    [*failures, *result.failures])


def embed_segments(encoder: Encoder, utterances: Sequence[Utterance], segments: int,
                   failures: Sequence[Failure] = ()) -> Labelled:
    """Each utterance cut into ``segments`` equal contiguous parts, each embedded as an item of its speaker
    (sources ``path#k``): same-speaker trials from corpora with one utterance per speaker (same-session ones)."""
    if segments < 2:
        raise DeepSpeakerError(f"segments must be at least 2, got {segments}")
    rows, sources, speakers, failed = [], [], [], list(failures)
    for start in range(0, len(utterances), FILES_PER_CHUNK):
        inputs = []
        for u in utterances[start:start + FILES_PER_CHUNK]:
            try:
                signal = read_audio(u.path, encoder.sample_rate, trim=False)
                parts = [encoder.prepare_signal(part, encoder.sample_rate, f"{u.path}#{k + 1}")
                         for k, part in enumerate(np.array_split(signal, segments))]
            except AudioError as e:
                failed.append(e.failure)
                continue
            inputs += parts
            sources += [f"{u.path}#{k + 1}" for k in range(segments)]
            speakers += [u.speaker] * segments
        if inputs:
            rows.append(encoder.embed_prepared(inputs))
    embeddings = np.concatenate(rows) if rows else np.zeros((0, encoder.embedding_size), np.float32)
    return Labelled(embeddings, speakers, sources, failed)


def embed_folder(encoder: Encoder, audio_dir: str | os.PathLike, layout: str = "auto",
                 speakers: Sequence[str] | None = None) -> Labelled:
    """Embeddings of the utterances of a labelled folder (:func:`folder_utterances`, :func:`embed_utterances`)."""
    return embed_utterances(encoder, *folder_utterances(audio_dir, layout, speakers))


def embed_cache(encoder: Encoder, cache: FeatureSource, speakers: Sequence[str] | None = None) -> Labelled:
    """Embeddings of the cached utterances (of ``speakers`` when given; an unknown one lists the known ones).

    The cache holds Deep Speaker's filterbank features, so the encoder must embed features
    (``embed_features_batch``); another one gets a one-line error.
    """
    embed_features_batch = getattr(encoder, "embed_features_batch", None)
    if embed_features_batch is None:
        raise DeepSpeakerError(f"encoder {encoder.name!r} cannot embed a feature cache (it holds Deep Speaker's "
                               f"filterbank features): embed the audio folder instead, or use --encoder deep-speaker")
    if speakers is not None:
        check_speakers(speakers, cache.speakers, f"the cache {cache.path}")
        ids = [u for s in speakers for u in cache.utterances(s)]
    else:
        ids = cache.utterances()
    rows = []
    # Chunks keep memory bounded: the arrays are memory-mapped and read only while their chunk is embedded.
    for i in range(0, len(ids), FILES_PER_CHUNK):
        rows.append(embed_features_batch([cache.load(s, u) for s, u in ids[i:i + FILES_PER_CHUNK]]))
    embeddings = np.concatenate(rows) if rows else np.zeros((0, encoder.embedding_size), np.float32)
    return Labelled(embeddings, [s for s, _ in ids], [f"{s}/{u}" for s, u in ids])


@dataclass
class TrialSet:
    """Embedded items (files, or cached utterances) and the trials between them as row indices."""

    embeddings: np.ndarray  # float32 [n_items, d]
    sources: list[str]  # the file (or cache id) of each row
    speakers: list[str]  # the speaker of each row (for a trial list: the first folder of its path under the root)
    first: np.ndarray  # int [n_trials]
    second: np.ndarray  # int [n_trials]
    labels: np.ndarray  # int8 [n_trials], 1 = same speaker
    failures: list[Failure]
    labelled: Labelled | None = None  # the labelled set whose all pairs are the trials; None for a trial list


def all_pairs(labelled: Labelled) -> TrialSet:
    """Every unordered pair ``i < j`` of a labelled set as a trial (``np.triu_indices`` order)."""
    if len(labelled.speakers) < 2:
        raise DeepSpeakerError(f"need at least two embedded utterances for pairs, got {len(labelled.speakers)}")
    first, second = np.triu_indices(len(labelled.speakers), k=1)
    spk = np.asarray(labelled.speakers)
    return TrialSet(labelled.embeddings, labelled.sources, labelled.speakers, first, second,
                    (spk[first] == spk[second]).astype(np.int8), labelled.failures, labelled)


def speaker_of_path(path: str, root: str | os.PathLike) -> str:
    """The speaker of a trial-list file: the first folder of its path under ``root`` (VoxCeleb: ``id10270/...``)."""
    rel = Path(os.path.relpath(path, root)).parts
    return rel[0] if len(rel) > 1 else path  # a file directly under the root is its own unit


def trial_list_set(encoder: Encoder, trials: Trials, root: str | os.PathLike) -> TrialSet:
    """The trials whose two files embed (each file embedded once), with the failures of the others."""
    unique = sorted(set(trials.first) | set(trials.second))
    result = encoder.embed_files_with_failures(unique)
    row = {p: i for i, p in enumerate(result.paths)}
    keep = np.asarray([a in row and b in row for a, b in zip(trials.first, trials.second)], dtype=bool)
    first = np.asarray([row[p] for p, k in zip(trials.first, keep) if k], dtype=np.int64)
    second = np.asarray([row[p] for p, k in zip(trials.second, keep) if k], dtype=np.int64)
    return TrialSet(result.embeddings, result.paths, [speaker_of_path(p, root) for p in result.paths], first, second,
                    trials.labels[keep], result.failures)


def trial_set(encoder: Encoder, source: dict[str, str]) -> TrialSet:
    """The trials of a :func:`verification_source`: all pairs of a labelled folder or cache, or the trial list."""
    if "trials" in source:
        return trial_list_set(encoder, read_trials(source["trials"], source["root"]), source["root"])
    if source.get("segments"):
        return all_pairs(embed_segments(encoder, *_segments_input(source)))
    return all_pairs(embed_folder(encoder, source["audio_dir"]) if "audio_dir" in source
                     else embed_cache(encoder, open_features(source["cache"])))


def _segments_input(source: dict[str, Any]) -> tuple[list[Utterance], int, list[Failure]]:
    if "audio_dir" not in source:
        raise DeepSpeakerError("segments are cut from the audio of a labelled folder, not a cache or trial list")
    utterances, rejected = folder_utterances(source["audio_dir"])
    return utterances, int(source["segments"]), rejected


def calibrate(encoder: Encoder, source: dict[str, Any], score_norm: ScoreNorm = NO_NORM,
              prior: float = DEFAULT_PRIOR) -> tuple[CalibrationRecord, list[Failure]]:
    """A linear calibration fitted on the trials of a :func:`verification_source` (scores normalised as given)."""
    trials = trial_set(encoder, source)
    if trials.labels.size == 0:
        raise DeepSpeakerError("no trial left to fit on: every trial has a file that could not be embedded")
    scores = score_norm.scores(trials.embeddings, trials.first, trials.second)
    files = [s.split("#")[0] if source.get("segments") else s for s in trials.sources]
    record = fit_record(scores, trials.labels, files, source, encoder.name, encoder.identity, score_norm, prior)
    return record, trials.failures


def load_cohort(encoder: Encoder, path: str | os.PathLike, method: str, top_k: int = DEFAULT_TOP_K) -> ScoreNorm:
    """A cohort for S-norm/AS-norm: one L2-normalised mean embedding per speaker of a labelled folder or feature
    cache, or the rows of an embedding file (``deep-speaker embed -o cohort.npz``, made with the same model)."""
    path = Path(path)
    speakers: list[str] | None
    if path.suffix == ".npz" and path.is_file():
        where = str(path)
        data = load_npz(path, ("embeddings", "model_identity", "paths"), ("speakers",), "embedding file")
        identity = checked_text(data["model_identity"], where, "model_identity")
        if identity != encoder.identity:
            raise DeepSpeakerError(f"{path}: cohort embedded with model {identity}, not {encoder.identity}: a cohort "
                                   f"must come from the same encoder")
        # The same identity and yet another width or non-finite rows: not what that encoder wrote.
        embeddings = checked_array(data["embeddings"], where, "embeddings", (None, encoder.embedding_size))
        files = checked_array(data["paths"], where, "paths", (len(embeddings),), "text").tolist()
        speakers = (checked_array(data["speakers"], where, "speakers", (len(embeddings),), "text").tolist()
                    if "speakers" in data else None)
    elif path.is_dir():
        labelled = (embed_cache(encoder, open_features(path)) if is_feature_folder(path)
                    else embed_folder(encoder, path))
        embeddings, files, speakers = labelled.embeddings, labelled.sources, labelled.speakers
    else:
        raise DeepSpeakerError(f"{path}: a cohort is a labelled folder, a feature cache or an embedding .npz")
    if speakers is not None:  # a speaker-level cohort: the mean embedding of each speaker, as WeSpeaker's
        names, inverse = np.unique(np.asarray(speakers), return_inverse=True)
        sums = np.zeros((names.size, embeddings.shape[1]))
        np.add.at(sums, inverse, embeddings)
        embeddings = sums
    return ScoreNorm(method, embeddings, str(path), top_k, frozenset(str(Path(f).resolve()) for f in files))


@dataclass
class Evaluation:
    """A verification report (JSON-ready) with the trial set and the scores it was computed from."""

    report: dict[str, Any]
    scores: np.ndarray
    trials: TrialSet

    @property
    def labels(self) -> np.ndarray:
        return self.trials.labels

    @property
    def failures(self) -> list[Failure]:
        return self.trials.failures

    @property
    def labelled(self) -> Labelled | None:
        return self.trials.labelled

    def trial_speakers(self) -> tuple[list[str], list[str]]:
        spk = np.asarray(self.trials.speakers)
        return spk[self.trials.first].tolist(), spk[self.trials.second].tolist()

    def trial_keys(self) -> np.ndarray:
        """``first<TAB>second`` source of each trial: what pairs two systems' scores of the same trials."""
        src = np.asarray(self.trials.sources)
        return np.char.add(np.char.add(src[self.trials.first], "\t"), src[self.trials.second])


TRIAL_SCORES_KEYS = ("scores", "labels", "keys")  # what a paired comparison reads of a report's trial scores


def trial_scores_path(report: str | os.PathLike) -> Path:
    """The trial scores beside a report: ``REPORT.trials.npz`` (what ``--compare`` pairs two systems on)."""
    report = Path(report)
    return report.with_name(report.stem + ".trials.npz")


def save_trial_scores(report: str | os.PathLike, result: Evaluation) -> Path:
    """Write the scores, labels and keys (and speakers) of an evaluation's trials beside its report, atomically."""
    first, second = result.trial_speakers()
    path = trial_scores_path(report)
    with atomic_write(path) as out:
        np.savez(out, scores=result.scores, labels=result.labels, keys=result.trial_keys(),
                 first_speakers=np.asarray(first, dtype=str), second_speakers=np.asarray(second, dtype=str))
    return path


def read_trial_scores(report: str | os.PathLike) -> dict[str, np.ndarray]:
    """The trial scores beside a report, checked against what :func:`save_trial_scores` writes: one finite
    score, a 0/1 label and a text key per trial. One line naming the file otherwise."""
    path = trial_scores_path(report)
    where = str(path)
    data = load_npz(path, TRIAL_SCORES_KEYS, what="trial-score file")
    keys = checked_array(data["keys"], where, "keys", (None,), "text")
    labels = checked_array(data["labels"], where, "labels", keys.shape, "label")
    if not np.isin(labels, (0, 1)).all():
        raise DeepSpeakerError(f"{where}: labels must be 0 or 1 (1 = same speaker)")
    return {"keys": keys, "labels": labels, "scores": checked_array(data["scores"], where, "scores", keys.shape)}


def compare_with(result: Evaluation, other_report: str | os.PathLike, replicates: int, seed: int) -> dict[str, Any]:
    """The paired comparison of this evaluation with another report's scores of the same trials."""
    other = read_trial_scores(other_report)
    keys = result.trial_keys()
    index = {k: i for i, k in enumerate(other["keys"].tolist())}
    missing = sum(k not in index for k in keys.tolist())
    if missing or len(index) != keys.size:
        raise DeepSpeakerError(f"{other_report} was scored on other trials ({missing} of these {keys.size} "
                               f"missing there, {len(index)} there): a paired comparison needs the same trials")
    rows = np.asarray([index[k] for k in keys.tolist()])
    if not np.array_equal(other["labels"][rows], result.labels):
        raise DeepSpeakerError(f"{other_report} labels the same trials differently")
    return comparison_part(result.scores, other["scores"][rows], result.labels, *result.trial_speakers(),
                           other=str(other_report), replicates=replicates, seed=seed)


def verification_source(audio_dir: str | os.PathLike | None = None, trials: str | os.PathLike | None = None,
                        root: str | os.PathLike | None = None,
                        cache: str | os.PathLike | None = None, segments: int = 0) -> dict[str, Any]:
    """What to evaluate, as the report records it; exactly one of a labelled folder (its files whole, or cut into
    ``segments`` parts each), a trial list, a cache."""
    if sum(bool(x) for x in (audio_dir, trials, cache)) != 1:
        raise DeepSpeakerError("give exactly one of: a labelled folder DIR, --trials FILE (with --root), --cache DIR")
    if segments and not audio_dir:
        raise DeepSpeakerError("--segments cuts the files of a labelled folder DIR; not a cache or trial list")
    if trials:
        return {"trials": str(trials), "root": str(root or Path(trials).parent)}
    if audio_dir:
        return {"audio_dir": str(audio_dir), **({"segments": segments} if segments else {})}
    return {"cache": str(cache)}


def evaluate(encoder: Encoder, source: dict[str, Any], score_norm: ScoreNorm = NO_NORM,
             calibration: CalibrationRecord | None = None, replicates: int = DEFAULT_REPLICATES,
             seed: int = DEFAULT_SEED) -> Evaluation:
    """The verification report of a :func:`verification_source` (all pairs of a labelled set, or the trial list)
    with the source, the encoder, its identity, the failed inputs; scores normalised by ``score_norm``; minCllr,
    and with a ``calibration`` its Cllr and actDCF; speaker-bootstrap intervals unless ``replicates`` is 0."""
    if calibration is not None:
        calibration.check_applies(encoder.name, encoder.identity, score_norm)
    trials = trial_set(encoder, source)
    if trials.labels.size == 0:
        raise DeepSpeakerError("no trial left to score: every trial has a file that could not be embedded")
    scores = score_norm.scores(trials.embeddings, trials.first, trials.second)
    labelled = trials.labelled
    report = verification_report(scores, trials.labels, *((labelled.embeddings, labelled.speakers) if labelled else ()))
    if labelled is not None:
        report["n_utterances"], report["n_speakers"] = len(labelled.speakers), len(set(labelled.speakers))
    norm = score_norm.describe()
    if score_norm.cohort_files:
        resolved = {str(Path(p).resolve()) for p in trials.sources}
        norm["cohort_files_also_in_these_trials"] = len(score_norm.cohort_files & resolved)
    report["score_norm"] = norm
    report.update(calibrated_part(scores, trials.labels, trials.sources, calibration))
    result = Evaluation(report, scores, trials)
    if replicates:
        report["intervals"] = interval_part(scores, trials.labels, *result.trial_speakers(), replicates, seed)
    report.update({"source": source, "encoder": encoder.name, "model_identity": encoder.identity,
                   "failures": [f.to_dict() for f in trials.failures]})
    return result


def ci_text(report: dict[str, Any], name: str, scale: float = 1.0) -> str:
    """`` [95 % CI low–high]`` of a metric when the report has its bootstrap interval, else empty."""
    interval = report.get("intervals", {}).get(name)
    if interval is None:
        return ""
    digits = 2 if scale == 100 else 4
    return f" [95 % CI {scale * interval['low']:.{digits}f}–{scale * interval['high']:.{digits}f}]"


def calibration_line(report: dict[str, Any]) -> str:
    """Where the calibration came from, and in the same line whether it saw any of these trials' files."""
    cal = report["calibration"]
    seen = cal["files_also_in_these_trials"]
    fitted = json.dumps(cal["fitted_on"], sort_keys=True)
    note = (f"FITTED ON {seen} OF THESE {cal['n_files']} FILES: Cllr/actDCF are optimistic" if seen
            else "fitted on other files than these trials'")
    return f"{cal['file'] or 'given'} ({fitted}); {note}"


def table_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The report as (metric, value) rows: trials, SAP/SAN (or mean scores), EER and minDCF with their intervals,
    minCllr, the calibrated Cllr/actDCF, best F-measure, the score normalisation and calibration used."""
    best = report["best_f"]
    rows = [("trials", f"{report['n_trials']} ({report['n_target']} target, {report['n_nontarget']} non-target)")]
    norm = report.get("score_norm", {"method": "none"})
    if norm["method"] != "none":
        overlap = norm.get("cohort_files_also_in_these_trials", 0)
        top = f" (top {norm['top_k']})" if "top_k" in norm else ""
        warn = f"; THE COHORT SHARES {overlap} FILES WITH THESE TRIALS" if overlap else ""
        rows.append(("score normalisation", f"{norm['method']}{top} against {norm['n_cohort']} cohort embeddings "
                                            f"from {norm['cohort']}{warn}"))
    if "sap" in report:
        rows += [("SAP", f"{report['sap']:.4f}  (mean cosine similarity, same speaker)"),
                 ("SAN", f"{report['san']:.4f}  (mean cosine similarity, different speakers)")]
    else:
        rows += [("mean target score", f"{report['mean_target_score']:.4f}"),
                 ("mean non-target score", f"{report['mean_nontarget_score']:.4f}")]
    rows.append(("EER", f"{100 * report['eer']:.2f} %{ci_text(report, 'eer', 100)}  at threshold "
                        f"{report['eer_threshold']:.4f}"))
    for name, value in report["min_dcf"].items():
        key = "min_dcf_" + name.split("=")[1]
        rows.append((f"minDCF ({name})", f"{value['min_dcf']:.4f}{ci_text(report, key)}  at threshold "
                                         f"{value['threshold']:.4f}"))
    if "min_cllr" in report:
        rows.append(("minCllr", f"{report['min_cllr']:.4f} bits  (after the best monotone calibration of these trials)"))
    if report.get("calibration"):
        rows.append(("Cllr", f"{report['cllr']:.4f} bits  (calibrated: {calibration_line(report)})"))
        for name, value in report["act_dcf"].items():
            rows.append((f"actDCF ({name})", f"{value:.4f}  (at the Bayes threshold of the calibrated LLR)"))
    elif "min_cllr" in report:
        rows.append(("Cllr, actDCF", "not computed: no calibration for this model (deep-speaker calibrate)"))
    rows.append(("best F-measure", f"{best['f_measure']:.4f}  at threshold {best['threshold']:.4f} "
                                   f"(TPR {best['tpr']:.4f}, accuracy {best['accuracy']:.4f})"))
    if "intervals" in report:
        iv = report["intervals"]
        rows.append(("intervals", f"none: {iv['skipped']}" if "skipped" in iv else f"95 % speaker bootstrap: {iv['replicates']} resamples of {iv['n_speakers']} "
                                  f"speakers, seed {iv['seed']}"))
    return rows


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table (:func:`table_rows`)."""
    rows = table_rows(report)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def plotted_subset(labelled: Labelled, limit: int = MAX_PLOTTED) -> np.ndarray:
    """Indices of whole speakers (sorted ids) up to ``limit`` utterances, for pictures."""
    speakers = np.asarray(labelled.speakers)
    keep: list[int] = []
    for name in sorted(set(labelled.speakers)):
        rows = np.flatnonzero(speakers == name)
        if keep and len(keep) + rows.size > limit:
            break
        keep.extend(rows.tolist())
    return np.asarray(keep, dtype=int)


def write_plots(out_dir: str | os.PathLike, scores: np.ndarray, labels: np.ndarray, eer: float,
                labelled: Labelled | None = None, projection: str = "tsne") -> list[str]:
    """DET curve of the trials; similarity matrix and 2-D projection when the set is labelled. The PNG paths."""
    out = Path(out_dir)
    _, far, frr = roc(scores, labels)
    written = [plots.plot_det(far, frr, eer, out / "det.png",
                              title=f"DET curve ({labels.sum()} target, {(labels == 0).sum()} non-target trials)")]
    if labelled is not None:
        rows = plotted_subset(labelled)
        emb = labelled.embeddings[rows]
        spk = [labelled.speakers[i] for i in rows]
        shown = "" if rows.size == len(labelled.speakers) else f" (first {rows.size} of {len(labelled.speakers)})"
        written.append(plots.plot_similarity_matrix(
            emb, spk, out / "similarity_matrix.png",
            title=f"Cosine similarity of {rows.size} utterances, grouped by speaker{shown}"))
        written.append(plots.plot_projection(emb, spk, out / f"projection_{projection}.png", method=projection))
    return [str(p) for p in written]


def speaker_pair_similarity(labelled: Labelled, first: str, second: str) -> dict[str, Any]:
    """SAP (mean cosine of ``first``'s utterance pairs) and SAN (mean cosine of ``first`` against ``second``)."""
    speakers = np.asarray(labelled.speakers)
    one = speakers == first
    if one.sum() < 2:
        raise DeepSpeakerError(f"speaker {first} has {one.sum()} utterance(s); SAP needs at least two")
    sap = float(pair_scores(labelled.embeddings[one], speakers[one])[0].mean())
    both = one | (speakers == second)
    # With only the two speakers present, SAN over different-speaker pairs is exactly first against second.
    san = sap_san(labelled.embeddings[both], speakers[both])[1]
    n1, n2 = int(one.sum()), int((speakers == second).sum())
    return {"sap": sap, "san": san, "first": first, "second": second, "n_first": n1, "n_second": n2,
            "sap_pairs": n1 * (n1 - 1) // 2, "san_pairs": n1 * n2}
