"""Speaker verification over sets, the numbers: labelled embeddings (``eval.embedded.Embedded``) from a folder or cache,
VoxCeleb trial lists, the report (its words, tables and plots: ``eval.verification_report``; the trial-score file:
``eval.formats``). Any :class:`~deep_speaker.encoders.Encoder` gives the embeddings; only a feature cache needs Deep
Speaker's."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.audio import AudioError, read_audio
from ..data.corpus import Utterance, scan_corpus
from ..data.sources import FeatureSource, is_feature_folder, open_features
from ..encoders import FILES_PER_CHUNK, Encoder
from ..errors import DeepSpeakerError, Failure
from ..metrics import pair_scores, sap_san, verification_report
from ..metrics.score_norm import DEFAULT_TOP_K
from ..validate import checked_array
from .config import CalibrateConfig, EvaluateConfig
from .embedded import Embedded
from .formats import read_embeddings, read_trial_scores
from .scoring import (NO_NORM, CalibrationRecord, ScoreNorm, calibrated_part, comparison_part,
                      fit_record, interval_part)
from .trials import Trials, read_trials

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
    utterances, rejected, _ = scan_corpus(audio_dir, layout=layout)
    if not utterances:
        raise DeepSpeakerError(f"{audio_dir}: no audio files in a speaker layout found")
    if speakers is not None:
        check_speakers(speakers, sorted({u.speaker for u in utterances}), str(audio_dir))
        return [u for u in utterances if u.speaker in speakers], []
    return utterances, rejected


def embed_utterances(encoder: Encoder, utterances: Sequence[Utterance], failures: Sequence[Failure] = ()) -> Embedded:
    """Embeddings of the utterances, labelled with their speakers; ``failures`` and the files that failed."""
    speaker_of = {u.path: u.speaker for u in utterances}
    result = encoder.embed_files_with_failures([u.path for u in utterances])
    return Embedded(result.embeddings, [speaker_of[p] for p in result.paths], result.paths,
                    [*failures, *result.failures], encoder.name, encoder.identity)


def embed_segments(encoder: Encoder, utterances: Sequence[Utterance], segments: int, *,
                   failures: Sequence[Failure] = ()) -> Embedded:
    """Each utterance cut into ``segments`` equal contiguous parts, each embedded as an item of its speaker
    (paths ``path#k``): same-speaker trials from corpora with one utterance per speaker (same-session ones)."""
    if segments < 2:
        raise DeepSpeakerError(f"segments must be at least 2, got {segments}")
    rows, sources, speakers, failed = [], [], [], list(failures)
    for start in range(0, len(utterances), FILES_PER_CHUNK):
        inputs = []
        for u in utterances[start:start + FILES_PER_CHUNK]:
            try:
                signal = read_audio(u.path, sample_rate=encoder.sample_rate, trim=False)
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
    if not rows:
        return Embedded.empty(encoder, failed)
    return Embedded(np.concatenate(rows), speakers, sources, failed, encoder.name, encoder.identity)


def embed_folder(encoder: Encoder, audio_dir: str | os.PathLike, *, layout: str = "auto",
                 speakers: Sequence[str] | None = None) -> Embedded:
    """Embeddings of the utterances of a labelled folder (:func:`folder_utterances`, :func:`embed_utterances`)."""
    return embed_utterances(encoder, *folder_utterances(audio_dir, layout, speakers))


def embed_cache(encoder: Encoder, cache: FeatureSource, speakers: Sequence[str] | None = None) -> Embedded:
    """Embeddings of the cached utterances (of ``speakers`` when given; an unknown one lists the known ones).

    The cache holds Deep Speaker's filterbank features, so the encoder must declare ``embeds_cached_features``;
    another one gets a one-line error.
    """
    if not encoder.declaration.embeds_cached_features:
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
        rows.append(encoder.embed_features_batch([cache.load(s, u) for s, u in ids[i:i + FILES_PER_CHUNK]]))
    if not rows:
        return Embedded.empty(encoder)
    return Embedded(np.concatenate(rows), [s for s, _ in ids], [f"{s}/{u}" for s, u in ids], [], encoder.name,
                    encoder.identity)


@dataclass
class TrialSet:
    """Embedded items (files, or cached utterances; for a trial list each speaker is the first folder of its path
    under the root) and the trials between them as row indices."""

    items: Embedded
    first: np.ndarray  # int [n_trials]
    second: np.ndarray  # int [n_trials]
    labels: np.ndarray  # int8 [n_trials], 1 = same speaker
    all_pairs: bool = False  # the trials are every pair of a labelled set (else: a trial list's)

    @property
    def labelled(self) -> Embedded | None:
        """The labelled set whose all pairs are the trials; None for a trial list."""
        return self.items if self.all_pairs else None


def all_pairs(labelled: Embedded) -> TrialSet:
    """Every unordered pair ``i < j`` of a labelled set as a trial (``np.triu_indices`` order)."""
    if len(labelled.speakers) < 2:
        raise DeepSpeakerError(f"need at least two embedded utterances for pairs, got {len(labelled.speakers)}")
    first, second = np.triu_indices(len(labelled.speakers), k=1)
    spk = np.asarray(labelled.speakers)
    return TrialSet(labelled, first, second, (spk[first] == spk[second]).astype(np.int8), True)


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
    items = Embedded(result.embeddings, [speaker_of_path(p, root) for p in result.paths], result.paths,
                     result.failures, encoder.name, encoder.identity)
    return TrialSet(items, first, second, trials.labels[keep])


def trial_set(encoder: Encoder, source: dict[str, str]) -> TrialSet:
    """The trials of a :func:`verification_source`: all pairs of a labelled folder or cache, or the trial list."""
    if "trials" in source:
        return trial_list_set(encoder, read_trials(source["trials"], source["root"]), source["root"])
    if source.get("segments"):
        utterances, rejected = _segments_input(source)
        return all_pairs(embed_segments(encoder, utterances, int(source["segments"]), failures=rejected))
    return all_pairs(embed_folder(encoder, source["audio_dir"]) if "audio_dir" in source
                     else embed_cache(encoder, open_features(source["cache"])))


def _segments_input(source: dict[str, Any]) -> tuple[list[Utterance], list[Failure]]:
    if "audio_dir" not in source:
        raise DeepSpeakerError("segments are cut from the audio of a labelled folder, not a cache or trial list")
    return folder_utterances(source["audio_dir"])


def calibrate(encoder: Encoder, source: dict[str, Any], config: CalibrateConfig | None = None, *,
              score_norm: ScoreNorm = NO_NORM) -> tuple[CalibrationRecord, list[Failure]]:
    """A linear calibration fitted at ``config.prior`` on the trials of a :func:`verification_source` (made with
    ``config.segments``; scores normalised as given)."""
    prior = (config or CalibrateConfig()).prior
    trials = trial_set(encoder, source)
    if trials.labels.size == 0:
        raise DeepSpeakerError("no trial left to fit on: every trial has a file that could not be embedded")
    scores = score_norm.scores(trials.items.embeddings, trials.first, trials.second)
    files = [s.split("#")[0] if source.get("segments") else s for s in trials.items.paths]
    record = fit_record(scores, trials.labels, files, source=source, encoder=encoder.name,
                        model_identity=encoder.identity, score_norm=score_norm, prior=prior)
    return record, trials.items.failures


def load_cohort(encoder: Encoder, path: str | os.PathLike, method: str, *, top_k: int = DEFAULT_TOP_K) -> ScoreNorm:
    """A cohort for S-norm/AS-norm: one L2-normalised mean embedding per speaker of a labelled folder or feature
    cache, or the rows of an embedding file (``deep-speaker embed -o cohort.npz``, made with the same model)."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        cohort, labelled = read_embeddings(path)
        if cohort.identity != encoder.identity:
            raise DeepSpeakerError(f"{path}: cohort embedded with model {cohort.identity}, not {encoder.identity}: a "
                                   f"cohort must come from the same encoder")
        # The same identity and yet another width: not what that encoder wrote.
        checked_array(cohort.embeddings, str(path), "embeddings", shape=(None, encoder.embedding_size))
    elif path.is_dir():
        cohort, labelled = (embed_cache(encoder, open_features(path)) if is_feature_folder(path)
                            else embed_folder(encoder, path)), True
    else:
        raise DeepSpeakerError(f"{path}: a cohort is a labelled folder, a feature cache or an embedding .npz")
    embeddings, files = cohort.embeddings, cohort.paths
    if labelled:  # a speaker-level cohort: the mean embedding of each speaker, as WeSpeaker's
        names, inverse = np.unique(np.asarray(cohort.speakers), return_inverse=True)
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
        return self.trials.items.failures

    @property
    def labelled(self) -> Embedded | None:
        return self.trials.labelled

    def trial_speakers(self) -> tuple[list[str], list[str]]:
        spk = np.asarray(self.trials.items.speakers)
        return spk[self.trials.first].tolist(), spk[self.trials.second].tolist()

    def trial_keys(self) -> np.ndarray:
        """``first<TAB>second`` source of each trial: what pairs two systems' scores of the same trials."""
        src = np.asarray(self.trials.items.paths)
        return np.char.add(np.char.add(src[self.trials.first], "\t"), src[self.trials.second])


def compare_with(result: Evaluation, other_report: str | os.PathLike, *, replicates: int, seed: int) -> dict[str, Any]:
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
    first, second = result.trial_speakers()
    return comparison_part(result.scores, other["scores"][rows], result.labels, first_speakers=first,
                           second_speakers=second, other=str(other_report), replicates=replicates, seed=seed)


def verification_source(audio_dir: str | os.PathLike | None = None, *, trials: str | os.PathLike | None = None,
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


def evaluate(encoder: Encoder, source: dict[str, Any], config: EvaluateConfig | None = None, *,
             score_norm: ScoreNorm = NO_NORM, calibration: CalibrationRecord | None = None) -> Evaluation:
    """The verification report of a :func:`verification_source` (all pairs of a labelled set, or the trial list)
    with the source, the encoder, its identity, the failed inputs; scores normalised by ``score_norm``; minCllr,
    and with a ``calibration`` its Cllr and actDCF; speaker-bootstrap intervals (``config.bootstrap`` resamples,
    ``config.seed``) unless the bootstrap is 0."""
    config = config or EvaluateConfig()
    replicates, seed = config.bootstrap, config.seed
    if calibration is not None:
        calibration.check_applies(encoder.name, encoder.identity, score_norm)
    trials = trial_set(encoder, source)
    if trials.labels.size == 0:
        raise DeepSpeakerError("no trial left to score: every trial has a file that could not be embedded")
    scores = score_norm.scores(trials.items.embeddings, trials.first, trials.second)
    labelled = trials.labelled
    spaces = {"embeddings": labelled.embeddings, "speakers": labelled.speakers} if labelled else {}
    report = verification_report(scores, trials.labels, **spaces)
    if labelled is not None:
        report["n_utterances"], report["n_speakers"] = len(labelled.speakers), len(set(labelled.speakers))
    norm = score_norm.describe()
    if score_norm.cohort_files:
        resolved = {str(Path(p).resolve()) for p in trials.items.paths}
        norm["cohort_files_also_in_these_trials"] = len(score_norm.cohort_files & resolved)
    report["score_norm"] = norm
    report.update(calibrated_part(scores, trials.labels, trials.items.paths, calibration=calibration))
    result = Evaluation(report, scores, trials)
    if replicates:
        first, second = result.trial_speakers()
        report["intervals"] = interval_part(scores, trials.labels, first_speakers=first, second_speakers=second,
                                            replicates=replicates, seed=seed)
    report.update({"source": source, "encoder": encoder.name, "model_identity": encoder.identity,
                   "weights": encoder.weights.to_dict(), "failures": [f.to_dict() for f in trials.items.failures]})
    return result


def speaker_pair_similarity(labelled: Embedded, first: str, second: str) -> dict[str, Any]:
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
