"""Speaker similarity the way zero-shot TTS papers report it (SIM): one cosine per (reference, generated) pair.

A pair list is a CSV with a header holding ``reference`` and ``generated`` (paths absolute or relative to the
CSV's folder; other columns are carried through to every output) or a seed-tts-eval ``meta.lst``
(``utt|prompt_text|prompt_wav|infer_text[|gt_wav]``, prompts relative to its folder) whose generated files are
``<generated_dir>/<utt>.wav``. A ``reference_dir`` replaces every reference by the file of the same name there
(SIM-r: the vocoder's resynthesis of each prompt instead of the original, SIM-o).

In each embedding space every distinct file is embedded once, whatever the number of pairs it appears in (with
the real folder of the baseline in the same call). A pair with a file that some space could not embed is left
out of every space, so the spaces are compared on the same pairs. The report gives the mean SIM with 95 %
bootstrap intervals over pairs (and over reference speakers when the list names them), the worst pairs, and,
given real speech, where the mean sits between that space's real same- and different-speaker cosines and the
share of pairs a verifier accepts at the real EER threshold and at a false-accept rate.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..encoders import Encoder
from ..errors import DeepSpeakerError, Failure, failures_message
from ..metrics.bootstrap import DEFAULT_REPLICATES, DEFAULT_SEED, MIN_SPEAKERS, Interval, percentile_interval
from ..metrics.constants import check_replicates
from ..metrics.resample import two_level_indices
from ..metrics.similarity import FAR_TARGET, far_threshold
from ..metrics.verification import equal_error_rate_threshold, pair_scores, trial_scores
from .tables import text_table
from .verification import folder_utterances

PAIR_COLUMNS = ("reference", "generated")
PER_PAIR_COLUMNS = ("reference", "generated", "encoder", "similarity")
META_FIELDS = ("utt", "prompt_text", "prompt_wav", "infer_text", "gt_wav")  # the fifth is optional
META_CARRIED = ("utt", "prompt_text", "infer_text", "gt_wav")
SPEAKER_COLUMN = "speaker"  # a CSV column of this name groups the pairs by reference speaker unless told otherwise
QUANTILES = (5, 25, 50, 75, 95)
DEFAULT_WORST = 5


@dataclass
class PairList:
    """The pairs of a list, their files as they will be read, and the columns carried with each pair."""

    reference: list[str]
    generated: list[str]
    columns: list[str]  # carried column names, in the list's order
    carried: list[list[str]]  # one row of carried cells per pair
    source: str
    format: str  # "csv" or "meta.lst"
    speakers: list[str] | None = None  # the reference speaker of each pair, when a column names it
    speaker_column: str | None = None

    def __len__(self) -> int:
        return len(self.reference)

    def files(self) -> list[str]:
        """The distinct files of the pairs, in order of first appearance."""
        return list(dict.fromkeys(self.reference + self.generated))


def _beside(folder: str, path: str) -> str:
    """``path`` as given when absolute, else relative to ``folder`` (normalised, links left as they are)."""
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(folder, path))


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: spreadsheets write a BOM
            return f.read()
    except UnicodeDecodeError:
        raise DeepSpeakerError(f"{path}: a pair list is UTF-8 text") from None
    except IsADirectoryError:
        raise DeepSpeakerError(f"{path}: a pair list is a file (CSV or meta.lst), not a folder") from None
    except FileNotFoundError:
        raise DeepSpeakerError(f"{path}: no such pair list") from None


def read_csv_pairs(path: str, text: str, speaker_column: str | None = None) -> PairList:
    """The pairs of a CSV whose header holds ``reference`` and ``generated``; every other column is carried."""
    folder = os.path.dirname(path)
    try:
        rows = [(k + 1, r) for k, r in enumerate(csv.reader(io.StringIO(text))) if any(c.strip() for c in r)]
    except csv.Error as exc:
        raise DeepSpeakerError(f"{path}: not a readable CSV ({exc})") from None
    if not rows:
        raise DeepSpeakerError(f"{path}: empty pair list")
    header = [c.strip() for c in rows[0][1]]
    missing = [c for c in PAIR_COLUMNS if c not in header]
    if missing:
        raise DeepSpeakerError(f"{path}: the header needs columns {' and '.join(PAIR_COLUMNS)} "
                               f"(missing {', '.join(missing)}; found {', '.join(header) or 'none'})")
    if len(set(header)) != len(header):
        raise DeepSpeakerError(f"{path}: the header repeats a column name")
    if speaker_column is not None and speaker_column not in header:
        raise DeepSpeakerError(f"{path}: no column {speaker_column!r} for the reference speakers")
    speaker_column = speaker_column or (SPEAKER_COLUMN if SPEAKER_COLUMN in header else None)
    ref, gen = header.index("reference"), header.index("generated")
    columns = [c for c in header if c not in PAIR_COLUMNS]
    keep = [header.index(c) for c in columns]
    pairs = PairList([], [], columns, [], path, "csv", [] if speaker_column else None, speaker_column)
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise DeepSpeakerError(f"{path}: line {line} has {len(row)} fields for {len(header)} columns")
        if not row[ref].strip() or not row[gen].strip():
            raise DeepSpeakerError(f"{path}: line {line} has an empty reference or generated path")
        pairs.reference.append(_beside(folder, row[ref].strip()))
        pairs.generated.append(_beside(folder, row[gen].strip()))
        pairs.carried.append([row[j] for j in keep])
        if speaker_column:
            pairs.speakers.append(row[header.index(speaker_column)].strip())
    return pairs


def read_meta_list(path: str, text: str, generated_dir: str) -> PairList:
    """The pairs of a seed-tts-eval ``meta.lst``: each prompt (relative to the list's folder) with
    ``<generated_dir>/<utt>.wav``; the utterance id and texts (and the ground truth, if listed) are carried."""
    folder = os.path.dirname(path)
    lines = [(k + 1, line.strip()) for k, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise DeepSpeakerError(f"{path}: empty pair list")
    width = len(lines[0][1].split("|"))
    columns = list(META_CARRIED[:3 if width == 4 else 4])
    pairs = PairList([], [], columns, [], path, "meta.lst")
    for line, content in lines:
        fields = content.split("|")
        if len(fields) not in (4, 5) or len(fields) != width:
            raise DeepSpeakerError(f"{path}: line {line} has {len(fields)} '|'-separated fields; a meta.lst line "
                                   f"is {'|'.join(META_FIELDS[:4])}[|gt_wav], the same on every line")
        record = dict(zip(META_FIELDS, fields))
        if not record["utt"].strip() or not record["prompt_wav"].strip():
            raise DeepSpeakerError(f"{path}: line {line} has an empty utt or prompt_wav")
        pairs.reference.append(_beside(folder, record["prompt_wav"].strip()))
        pairs.generated.append(os.path.normpath(os.path.join(generated_dir, record["utt"].strip() + ".wav")))
        pairs.carried.append([record[c] for c in columns])
    return pairs


def _check_folder(path: str, option: str) -> None:
    if not os.path.isdir(path):
        raise DeepSpeakerError(f"{option} {path}: no such folder")


def read_pairs(path: str | os.PathLike, *, generated_dir: str | os.PathLike | None = None,
               reference_dir: str | os.PathLike | None = None, speaker_column: str | None = None) -> PairList:
    """A pair list: a CSV (``.csv``, or any file whose first line has no ``|``) or a seed-tts-eval meta.lst (which
    needs ``generated_dir``); with ``reference_dir`` every reference becomes the file of its name there (SIM-r).
    A malformed list is one DeepSpeakerError naming the file and line."""
    path = str(path)
    text = _read_text(path)
    first = next((line for line in text.splitlines() if line.strip()), "")
    is_meta = not path.lower().endswith(".csv") and "|" in first
    if is_meta:
        if generated_dir is None:
            raise DeepSpeakerError(f"{path} is a seed-tts-eval meta.lst: give --generated-dir DIR holding <utt>.wav")
        if speaker_column is not None:
            raise DeepSpeakerError(f"{path}: a meta.lst has no speaker column")
        _check_folder(str(generated_dir), "--generated-dir")
        pairs = read_meta_list(path, text, str(generated_dir))
    else:
        if generated_dir is not None:
            raise DeepSpeakerError(f"--generated-dir is for a seed-tts-eval meta.lst; {path} is a CSV naming its "
                                   f"generated files")
        pairs = read_csv_pairs(path, text, speaker_column)
    if not len(pairs):
        raise DeepSpeakerError(f"{path}: the list holds no pair")
    if reference_dir is not None:
        _check_folder(str(reference_dir), "--reference-dir")
        pairs.reference = [os.path.join(str(reference_dir), os.path.basename(p)) for p in pairs.reference]
    return pairs


# --- the math ------------------------------------------------------------------------------------------------

def mean_interval(values: Any, groups: Any | None = None, *, replicates: int = DEFAULT_REPLICATES,
                  seed: int = DEFAULT_SEED, level: float = 0.95) -> Interval:
    """``mean(values)`` with the percentile interval of ``replicates`` resampled means: the rows with replacement,
    or with ``groups`` the groups with replacement, then each drawn group's rows (:func:`two_level_indices`)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise DeepSpeakerError("a mean needs at least one value")
    check_replicates(replicates)
    rng = np.random.default_rng(seed)
    if groups is None:
        means = np.array([x[rng.integers(0, x.size, x.size)].mean() for _ in range(replicates)])
    else:
        labels = np.asarray(groups, dtype=str)
        if labels.shape != x.shape:
            raise DeepSpeakerError(f"need one group per value: {labels.size} for {x.size}")
        n_groups = np.setdiff1d(labels, [""]).size
        if n_groups < MIN_SPEAKERS:
            raise DeepSpeakerError(f"a speaker bootstrap needs at least {MIN_SPEAKERS} speakers, the pairs have "
                                   f"{n_groups}")
        nobody = np.empty(0, dtype=str)  # the two-level draw of one set: its "real" side is empty
        means = np.array([x[two_level_indices(nobody, labels, rng)[1]].mean() for _ in range(replicates)])
    return Interval(float(x.mean()), *percentile_interval(means, level))


def distribution(scores: np.ndarray) -> dict[str, Any]:
    """Count, mean, standard deviation and the :data:`QUANTILES` (percent) of a set of cosines."""
    q = np.percentile(scores, QUANTILES)
    return {"n": int(scores.size), "mean": float(scores.mean()), "std": float(scores.std()),
            "quantiles": {str(p): float(v) for p, v in zip(QUANTILES, q)}}


def real_baseline(real: Any, speakers: Any, similarity: Any, *, far: float = FAR_TARGET) -> dict[str, Any]:
    """Where pair similarities sit among one space's real cosines (all unordered real pairs ``i < j``).

    Same-speaker mean ``C`` and different-speaker mean ``D``; ``position = (mean SIM - D) / (C - D)`` (0: as alike
    as two real speakers, 1: as alike as two real utterances of one speaker); the share of real same- and
    different-speaker pairs below the mean SIM; and the share of pairs accepted (``SIM > θ``) at the real EER
    threshold and at the threshold of false-accept rate ``far`` (:func:`~deep_speaker.metrics.far_threshold`).
    """
    scores, labels = pair_scores(real, speakers)
    if not labels.any() or labels.all():
        raise DeepSpeakerError("the real speech needs a speaker with 2 utterances and 2 speakers for its "
                               "same- and different-speaker pairs")
    sim = np.asarray(similarity, dtype=np.float64)
    eer, theta_eer = equal_error_rate_threshold(scores, labels)
    theta_far = far_threshold(scores, labels, far)
    same, different = scores[labels == 1], scores[labels == 0]
    mean = float(sim.mean())
    ceiling, floor = float(same.mean()), float(different.mean())
    messages = [] if ceiling > floor else [
        f"position: the real same-speaker mean {ceiling:.4g} does not exceed the different-speaker mean "
        f"{floor:.4g}; the space does not separate speakers"]
    return {
        "n_utterances": int(np.asarray(speakers).size), "n_speakers": int(np.unique(np.asarray(speakers)).size),
        "same_speaker": distribution(same), "different_speaker": distribution(different),
        "eer": eer, "thresholds": {"eer": theta_eer, "far": theta_far, "far_target": far},
        "position": (mean - floor) / (ceiling - floor) if ceiling > floor else None,
        "same_speaker_below_mean": float(np.mean(same < mean)),
        "different_speaker_below_mean": float(np.mean(different < mean)),
        "accept_eer": float(np.mean(sim > theta_eer)), "accept_far": float(np.mean(sim > theta_far)),
        "real_accept_eer": float(np.mean(same > theta_eer)), "real_accept_far": float(np.mean(same > theta_far)),
        "messages": messages,
    }


# --- embedding and the report --------------------------------------------------------------------------------

@dataclass
class Space:
    """One encoder's embeddings of the distinct files, by path, and the files it could not embed."""

    name: str
    identity: str
    settings: dict[str, Any]
    embeddings: np.ndarray
    row: dict[str, int]
    failures: list[Failure] = field(default_factory=list)


def embed_space(encoder: Encoder, files: Sequence[str]) -> Space:
    """Each distinct file embedded once (one call of the encoder), its row by every path that names it."""
    # The same file under two names (a link, the real folder given another way than the list's paths) is one file.
    first_name: dict[str, str] = {}
    for path in files:
        first_name.setdefault(os.path.realpath(path), path)
    result = encoder.embed_files_with_failures(list(first_name.values()))
    embedded = {os.path.realpath(p): i for i, p in enumerate(result.paths)}
    row = {p: embedded[os.path.realpath(p)] for p in dict.fromkeys(files) if os.path.realpath(p) in embedded}
    return Space(encoder.name, encoder.identity, encoder.settings, result.embeddings, row, list(result.failures))


@dataclass
class SimilarityResult:
    """The JSON-ready report, the similarity of each usable pair per encoder, and every failure."""

    report: dict[str, Any]
    pairs: PairList
    usable: np.ndarray  # bool [n_pairs]: both files embedded in every space
    similarity: dict[str, np.ndarray]  # encoder -> float64 [n_usable]
    failures: list[Failure]

    def per_pair_rows(self) -> tuple[list[str], list[list[Any]]]:
        """Header and rows of the per-pair table: one row per usable pair and encoder."""
        rows = []
        kept = np.flatnonzero(self.usable)
        for name, sims in self.similarity.items():
            for k, s in zip(kept, sims):
                rows.append([self.pairs.reference[k], self.pairs.generated[k], name, float(s),
                             *self.pairs.carried[k]])
        return [*PER_PAIR_COLUMNS, *self.pairs.columns], rows


def _pair_record(pairs: PairList, k: int, similarity: float) -> dict[str, Any]:
    return {"reference": pairs.reference[k], "generated": pairs.generated[k], "similarity": similarity,
            **dict(zip(pairs.columns, pairs.carried[k]))}


def evaluate_pairs(pairs: PairList, encoders: Mapping[str, Callable[[], Encoder]],
                   *, real_dir: str | os.PathLike | None = None, layout: str = "auto",
                   replicates: int = DEFAULT_REPLICATES, seed: int = DEFAULT_SEED, far: float = FAR_TARGET,
                   worst: int = DEFAULT_WORST) -> SimilarityResult:
    """SIM of every pair in each encoder's space (``{name: factory}``), with the labelled folder ``real_dir``
    (speakers from ``layout``) for the baselines; ``replicates`` 0 gives no intervals. A DeepSpeakerError when no
    pair is usable."""
    real: list[tuple[str, str]] = []
    real_failures: list[Failure] = []
    if real_dir is not None:
        utterances, real_failures = folder_utterances(real_dir, layout)
        real = [(os.path.normpath(u.path), u.speaker) for u in utterances]
    real_paths = [p for p, _ in real]
    spaces = {name: embed_space(make(), pairs.files() + real_paths) for name, make in encoders.items()}
    failures = list(dict.fromkeys([*real_failures, *(f for s in spaces.values() for f in s.failures)]))
    usable = np.array([all(a in s.row and b in s.row for s in spaces.values())
                       for a, b in zip(pairs.reference, pairs.generated)], dtype=bool)
    if not usable.any():
        failed = [f for f in failures if f.path in set(pairs.files())]
        raise DeepSpeakerError(f"{pairs.source}: no usable pair: " + failures_message(failed, "file(s) failed"))
    kept = np.flatnonzero(usable)
    speakers = None if pairs.speakers is None else np.asarray(pairs.speakers, dtype=str)[kept]
    report: dict[str, Any] = {
        "pairs": pairs.source, "format": pairs.format, "n_pairs_listed": len(pairs), "n_pairs": int(kept.size),
        "n_pairs_skipped": int(len(pairs) - kept.size), "n_files": len({os.path.realpath(p) for p in pairs.files()}),
        "speaker_column": pairs.speaker_column, "columns": pairs.columns,
        "real": None if real_dir is None else str(real_dir),
        "bootstrap": {"replicates": replicates, "seed": seed, "level": 0.95}, "spaces": {},
        "failures": [f.to_dict() for f in failures]}
    similarity = {}
    for name, space in spaces.items():
        first = np.array([space.row[pairs.reference[k]] for k in kept])
        second = np.array([space.row[pairs.generated[k]] for k in kept])
        sims = trial_scores(space.embeddings, first, second)
        similarity[name] = sims
        report["spaces"][name] = _space_report(space, pairs, kept, sims, speakers, real, replicates, seed, far, worst)
    return SimilarityResult(report, pairs, usable, similarity, failures)


def _space_report(space: Space, pairs: PairList, kept: np.ndarray, sims: np.ndarray, speakers: np.ndarray | None,
                  real: list[tuple[str, str]], replicates: int, seed: int, far: float, worst: int) -> dict[str, Any]:
    """One encoder's part of the report: SIM, its intervals, the real baseline, the worst pairs."""
    messages: list[str] = []
    part: dict[str, Any] = {
        "encoder": space.name, "model_identity": space.identity, "settings": space.settings,
        "n_pairs": int(sims.size), "sim": float(sims.mean()), "sim_std": float(sims.std()),
        "sim_median": float(np.median(sims)), "intervals": {}}
    if replicates:
        part["intervals"]["pairs"] = mean_interval(sims, None, replicates=replicates, seed=seed).to_dict()
        if speakers is not None:
            try:
                part["intervals"]["speakers"] = mean_interval(sims, speakers, replicates=replicates,
                                                              seed=seed).to_dict()
            except DeepSpeakerError as exc:
                messages.append(f"no speaker interval: {exc}")
    if real:
        embedded = [(space.row[p], s) for p, s in real if p in space.row]
        rows = np.array([r for r, _ in embedded], dtype=np.int64)
        baseline = real_baseline(space.embeddings[rows], [s for _, s in embedded], sims, far=far)
        messages += baseline.pop("messages")
        part["real"] = baseline
    order = np.argsort(sims, kind="stable")[:worst]
    part["worst"] = [_pair_record(pairs, int(kept[i]), float(sims[i])) for i in order]
    part["messages"] = messages
    return part


def _interval_text(part: dict[str, Any], unit: str) -> str:
    iv = part["intervals"].get(unit)
    return "" if iv is None else f"{iv['low']:.4f}–{iv['high']:.4f}"


def format_table(report: dict[str, Any]) -> str:
    """The report for people: one row per encoder (SIM, intervals, real baselines, acceptance), the worst pairs
    and the notes."""
    spaces = report["spaces"].items()
    with_real = any("real" in part for _, part in spaces)
    header = ["encoder", "pairs", "SIM", "95 % CI pairs", "95 % CI speakers"]
    if with_real:
        header += ["real same", "real diff", "position", "accept θEER", "accept θFAR"]
    rows = []
    for name, part in spaces:
        row = [name, part["n_pairs"], f"{part['sim']:.4f}", _interval_text(part, "pairs"),
               _interval_text(part, "speakers")]
        if with_real:
            r = part.get("real")
            row += ["", "", "", "", ""] if r is None else [
                f"{r['same_speaker']['mean']:.4f}", f"{r['different_speaker']['mean']:.4f}",
                "" if r["position"] is None else f"{r['position']:.3f}", f"{100 * r['accept_eer']:.1f} %",
                f"{100 * r['accept_far']:.1f} %"]
        rows.append(row)
    skipped = f"; {report['n_pairs_skipped']} skipped" if report["n_pairs_skipped"] else ""
    lines = [f"{report['n_pairs']} pairs of {report['pairs']} ({report['n_files']} distinct files{skipped})",
             text_table(header, rows),
             "SIM: mean cosine of each generated utterance with its reference, higher is closer"]
    boot = report["bootstrap"]
    if boot["replicates"]:
        lines.append(f"95 % CI: percentile bootstrap, {boot['replicates']} resamples of the pairs (speakers: of the "
                     f"reference speakers, then of their pairs), seed {boot['seed']}")
    if with_real:
        far = next(p["real"]["thresholds"]["far_target"] for _, p in spaces if "real" in p)
        lines.append(f"real same/diff: mean cosine of real same-/different-speaker pairs; position: (SIM - diff) / "
                     f"(same - diff); accept: share of pairs above the real EER threshold and the real "
                     f"{100 * far:g} % false-accept threshold")
    for name, part in spaces:
        if part["worst"]:
            lines.append(f"least similar pairs ({name}):")
            lines += [f"  {w['similarity']:.4f}  {w['reference']}  {w['generated']}" for w in part["worst"]]
    notes = [f"[{name}] {m}" for name, part in spaces for m in part["messages"]]
    if notes:
        lines += ["notes:"] + [f"  - {m}" for m in notes]
    return "\n".join(lines)
