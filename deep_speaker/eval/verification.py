"""Speaker verification over sets: labelled embeddings from a folder or cache, VoxCeleb trial lists, reports, tables,
plots. Any :class:`~deep_speaker.encoders.Encoder` gives the embeddings; only a feature cache needs Deep Speaker's."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.cache import FeatureCache
from ..data.corpus import Utterance, scan_corpus
from ..encoders import FILES_PER_CHUNK, Encoder
from ..errors import DeepSpeakerError, Failure
from ..metrics import cosine_scores, pair_scores, roc, sap_san, verification_report
from . import plots

# Pictures of more utterances than this would be unreadable (and t-SNE slow): whole speakers are kept up to it.
MAX_PLOTTED = 1000


@dataclass
class Labelled:
    """Embeddings with their speaker and source (file path or cache id), and the inputs that failed."""

    embeddings: np.ndarray  # float32 [n, d]
    speakers: list[str]
    sources: list[str]
    failures: list[Failure] = field(default_factory=list)


@dataclass
class Trials:
    """A VoxCeleb-style trial list: label (1 = same speaker) and the two files of each trial."""

    labels: np.ndarray  # int8 [n]
    first: list[str]
    second: list[str]


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


def embed_folder(encoder: Encoder, audio_dir: str | os.PathLike, layout: str = "auto",
                 speakers: Sequence[str] | None = None) -> Labelled:
    """Embeddings of the utterances of a labelled folder (:func:`folder_utterances`, :func:`embed_utterances`)."""
    return embed_utterances(encoder, *folder_utterances(audio_dir, layout, speakers))


def embed_cache(encoder: Encoder, cache: FeatureCache, speakers: Sequence[str] | None = None) -> Labelled:
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


def read_trials(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Trials:
    """Parse a VoxCeleb trial list (``1 id10270/x.wav id10300/y.wav`` per line), paths joined to ``root``."""
    base = Path(root) if root is not None else Path(path).parent
    labels, first, second = [], [], []
    try:
        lines = Path(path).read_text(encoding="utf8").splitlines()
    except OSError as e:
        raise DeepSpeakerError(f"{path}: cannot read trial list ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DeepSpeakerError(f"{path}: not a text trial list (binary content)") from None
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise DeepSpeakerError(f"{path}:{number}: expected 'LABEL PATH_A PATH_B' with label 0 or 1, got {line!r}")
        labels.append(int(parts[0]))
        first.append(str(base / parts[1]))
        second.append(str(base / parts[2]))
    if not labels:
        raise DeepSpeakerError(f"{path}: no trials in the file")
    return Trials(np.asarray(labels, dtype=np.int8), first, second)


def score_trials(encoder: Encoder, trials: Trials) -> tuple[np.ndarray, np.ndarray, list[Failure]]:
    """Cosine scores and labels of the trials whose two files embed (each file once); the failures."""
    unique = sorted(set(trials.first) | set(trials.second))
    result = encoder.embed_files_with_failures(unique)
    row = {p: i for i, p in enumerate(result.paths)}
    keep = np.asarray([a in row and b in row for a, b in zip(trials.first, trials.second)], dtype=bool)
    a = [row[p] for p, k in zip(trials.first, keep) if k]
    b = [row[p] for p, k in zip(trials.second, keep) if k]
    scores = cosine_scores(result.embeddings[a], result.embeddings[b]) if a else np.zeros(0)
    return scores, trials.labels[keep], result.failures


def labelled_report(labelled: Labelled) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The verification report of all same/different-speaker pairs of a labelled set, and the pair scores/labels."""
    if len(labelled.speakers) < 2:
        raise DeepSpeakerError(f"need at least two embedded utterances for pairs, got {len(labelled.speakers)}")
    scores, labels = pair_scores(labelled.embeddings, labelled.speakers)
    report = verification_report(scores, labels, labelled.embeddings, labelled.speakers)
    report["n_utterances"] = len(labelled.speakers)
    report["n_speakers"] = len(set(labelled.speakers))
    return report, scores, labels


@dataclass
class Evaluation:
    """A verification report (JSON-ready) with the trial scores and labels it was computed from."""

    report: dict[str, Any]
    scores: np.ndarray
    labels: np.ndarray
    labelled: Labelled | None  # the labelled set, None for a trial list
    failures: list[Failure]


def verification_source(audio_dir: str | os.PathLike | None = None, trials: str | os.PathLike | None = None,
                        root: str | os.PathLike | None = None,
                        cache: str | os.PathLike | None = None) -> dict[str, str]:
    """What to evaluate, as the report records it; exactly one of a labelled folder, a trial list, a cache."""
    if sum(bool(x) for x in (audio_dir, trials, cache)) != 1:
        raise DeepSpeakerError("give exactly one of: a labelled folder DIR, --trials FILE (with --root), --cache DIR")
    if trials:
        return {"trials": str(trials), "root": str(root or Path(trials).parent)}
    return {"audio_dir": str(audio_dir)} if audio_dir else {"cache": str(cache)}


def evaluate(encoder: Encoder, source: dict[str, str]) -> Evaluation:
    """The verification report of a :func:`verification_source`: all pairs of a labelled set, or the trial list,
    with the source, the encoder, its identity and the failed inputs."""
    labelled: Labelled | None = None
    if "trials" in source:
        scores, labels, failures = score_trials(encoder, read_trials(source["trials"], source["root"]))
        report = verification_report(scores, labels)
    else:
        labelled = (embed_folder(encoder, source["audio_dir"]) if "audio_dir" in source
                    else embed_cache(encoder, FeatureCache(source["cache"])))
        failures = labelled.failures
        report, scores, labels = labelled_report(labelled)
    report = {**report, "source": source, "encoder": encoder.name, "model_identity": encoder.identity,
              "failures": [f.to_dict() for f in failures]}
    return Evaluation(report, scores, labels, labelled, failures)


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table: trials, SAP/SAN (or mean scores), EER, minDCF, best F-measure."""
    best = report["best_f"]
    rows = [("trials", f"{report['n_trials']} ({report['n_target']} target, {report['n_nontarget']} non-target)")]
    if "sap" in report:
        rows += [("SAP", f"{report['sap']:.4f}  (mean cosine similarity, same speaker)"),
                 ("SAN", f"{report['san']:.4f}  (mean cosine similarity, different speakers)")]
    else:
        rows += [("mean target score", f"{report['mean_target_score']:.4f}"),
                 ("mean non-target score", f"{report['mean_nontarget_score']:.4f}")]
    rows.append(("EER", f"{100 * report['eer']:.2f} %  at threshold {report['eer_threshold']:.4f}"))
    for name, value in report["min_dcf"].items():
        rows.append((f"minDCF ({name})", f"{value['min_dcf']:.4f}  at threshold {value['threshold']:.4f}"))
    rows.append(("best F-measure", f"{best['f_measure']:.4f}  at threshold {best['threshold']:.4f} "
                                   f"(TPR {best['tpr']:.4f}, accuracy {best['accuracy']:.4f})"))
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
