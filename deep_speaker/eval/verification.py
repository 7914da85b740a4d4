"""Speaker verification over sets: labelled embeddings from a folder or cache, VoxCeleb trial lists, reports, plots."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import plots
from ..data.cache import FeatureCache
from ..data.corpus import list_utterances
from ..encoders.deepspeaker import FILES_PER_CHUNK, EmbedFailure, Embedder
from ..errors import DeepSpeakerError
from ..metrics import cosine_scores, pair_scores, roc, sap_san, verification_report
from ..model.rescnn import EMBEDDING_SIZE

# Pictures of more utterances than this would be unreadable (and t-SNE slow): whole speakers are kept up to it.
MAX_PLOTTED = 1000


@dataclass
class Labelled:
    """Embeddings with their speaker and source (file path or cache id), and the inputs that failed."""

    embeddings: np.ndarray  # float32 [n, 512]
    speakers: list[str]
    sources: list[str]
    failures: list[EmbedFailure] = field(default_factory=list)


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


def embed_folder(embedder: Embedder, audio_dir: str | os.PathLike, layout: str = "auto",
                 speakers: Sequence[str] | None = None) -> Labelled:
    """Embeddings of the utterances of a labelled folder (of ``speakers`` when given; an unknown one lists the known)."""
    utterances = list_utterances(audio_dir, layout)
    if not utterances:
        raise DeepSpeakerError(f"{audio_dir}: no audio files in a speaker layout found")
    if speakers is not None:
        check_speakers(speakers, sorted({u.speaker for u in utterances}), str(audio_dir))
        utterances = [u for u in utterances if u.speaker in speakers]
    speaker_of = {u.path: u.speaker for u in utterances}
    result = embedder.embed_files_with_failures([u.path for u in utterances])
    return Labelled(result.embeddings, [speaker_of[p] for p in result.paths], result.paths, result.failures)


def embed_cache(embedder: Embedder, cache: FeatureCache, speakers: Sequence[str] | None = None) -> Labelled:
    """Embeddings of the cached utterances (of ``speakers`` when given; an unknown one lists the known ones)."""
    if speakers is not None:
        check_speakers(speakers, cache.speakers, f"the cache {cache.path}")
        ids = [u for s in speakers for u in cache.utterances(s)]
    else:
        ids = cache.utterances()
    rows = []
    # Chunks keep memory bounded: the arrays are memory-mapped and read only while their chunk is embedded.
    for i in range(0, len(ids), FILES_PER_CHUNK):
        rows.append(embedder.embed_features_batch([cache.load(s, u) for s, u in ids[i:i + FILES_PER_CHUNK]]))
    embeddings = np.concatenate(rows) if rows else np.zeros((0, EMBEDDING_SIZE), np.float32)
    return Labelled(embeddings, [s for s, _ in ids], [f"{s}/{u}" for s, u in ids])


def read_trials(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Trials:
    """Parse a VoxCeleb trial list (``1 id10270/x.wav id10300/y.wav`` per line), paths joined to ``root``."""
    base = Path(root) if root is not None else Path(path).parent
    labels, first, second = [], [], []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise DeepSpeakerError(f"{path}: cannot read trial list ({e.strerror or e})") from None
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


def score_trials(embedder: Embedder, trials: Trials) -> tuple[np.ndarray, np.ndarray, list[EmbedFailure]]:
    """Cosine scores and labels of the trials whose two files embed (each file once); the failures."""
    unique = sorted(set(trials.first) | set(trials.second))
    result = embedder.embed_files_with_failures(unique)
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
