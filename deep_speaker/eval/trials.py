"""Trial lists: read VoxCeleb and NIST/Kaldi-style lists, make balanced seeded ones from a labelled folder, write them.

Formats, detected per file from its first trial (blank lines and ``#`` comments are skipped):

- VoxCeleb: ``1 id10270/5r0dWxy17C8/00001.wav id10300/ujBuGMNr5Sk/00004.wav`` (label 1 = same speaker, 0 = not);
  the paths are joined to ``root`` as written (a missing file is reported when it is scored).
- NIST/Kaldi: ``ENROLL TEST target|nontarget`` (the ``trials`` file of Kaldi's VoxCeleb recipes). Each id is
  resolved against the audio files under ``root``, first match wins: a file path relative to ``root``; that path
  without its audio extension; a Kaldi utterance id, the path without extension with ``/`` replaced by ``-``
  (``id10270-5r0dWxy17C8-00001`` is ``id10270/5r0dWxy17C8/00001.wav``); a file name without extension
  (LibriSpeech ``1688-142285-0000``, VCTK ``p225_001``). An id that matches no file, or several at the same step,
  is a one-line error with file:line.

:func:`make_trials` draws target pairs (two utterances of one speaker) and non-target pairs (of two speakers)
uniformly without replacement, with a seeded generator: the same folder and seed give the same list byte for
byte. :func:`write_trials` writes the VoxCeleb format, paths relative to a root, atomically.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from ..atomic import write_atomic
from ..data.audio import AUDIO_EXTENSIONS
from ..data.corpus import Utterance, find_audio_files, scan_corpus
from ..errors import DeepSpeakerError, Failure
from ..settings import check_choice
from .constants import GENDER_RULES

logger = logging.getLogger(__name__)

NIST_LABELS = {"target": 1, "nontarget": 0}
# Speaker metadata files of the corpora, looked for in the audio folder and its parent (LibriSpeech/SPEAKERS.TXT
# beside test-other/, VCTK-Corpus/speaker-info.txt beside wav48/).
GENDER_FILES = ("SPEAKERS.TXT", "speaker-info.txt")
_GENDER_WORDS = {"male": "m", "female": "f"}
_NAMES_SHOWN = 10


@dataclass
class Trials:
    """A trial list: label (1 = same speaker) and the two files of each trial."""

    labels: np.ndarray  # int8 [n]
    first: list[str]
    second: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_target(self) -> int:
        return int(np.sum(self.labels == 1))

    @property
    def n_nontarget(self) -> int:
        return int(np.sum(self.labels == 0))


def _read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of a text file; a one-line error for an unreadable or binary one."""
    try:
        return Path(path).read_text(encoding="utf8").splitlines()
    except OSError as e:
        raise DeepSpeakerError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DeepSpeakerError(f"{path}: not a text {what} (binary content)") from None


class _AudioIds:
    """Resolves NIST/Kaldi ids to the audio files under ``base`` (the module docstring's steps); walks it once."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.steps: list[dict[str, set[str]]] | None = None
        self.resolved: dict[str, str] = {}

    def _index(self, where: str) -> list[dict[str, set[str]]]:
        if self.steps is None:
            if not self.base.is_dir():
                raise DeepSpeakerError(f"{where}: the trial ids are looked up under {self.base}, which is not a folder")
            self.steps = [{}, {}, {}]  # path without extension, Kaldi id, file name without extension
            for file in find_audio_files(self.base)[0]:
                rel = Path(os.path.splitext(os.path.relpath(file, self.base))[0])
                for step, key in zip(self.steps, (rel.as_posix(), "-".join(rel.parts), rel.name)):
                    step.setdefault(key, set()).add(file)
        return self.steps

    def __call__(self, token: str, where: str) -> str:
        if token not in self.resolved:
            direct = self.base / token
            if direct.is_file() and token.lower().endswith(AUDIO_EXTENSIONS):
                self.resolved[token] = str(direct)
            else:
                for step in self._index(where):
                    files = sorted(step.get(token, ()))
                    if len(files) > 1:
                        raise DeepSpeakerError(f"{where}: id {token!r} names several files under {self.base}: "
                                               f"{files[0]}, {files[1]}; write paths relative to {self.base}")
                    if files:
                        self.resolved[token] = files[0]
                        break
                else:
                    raise DeepSpeakerError(f"{where}: id {token!r} matches no audio file under {self.base} (as a path, "
                                           f"a path without extension, a Kaldi id or a file name without extension)")
        return self.resolved[token]


def read_trials(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Trials:
    """Parse a VoxCeleb (``1 a.wav b.wav``) or NIST/Kaldi (``a b target|nontarget``) trial list, format detected per
    file; paths relative to ``root`` (default: the list's folder), NIST ids resolved as the module docstring says."""
    base = Path(root) if root is not None else Path(path).parent
    labels, first, second = [], [], []
    kind, resolve = None, _AudioIds(base)
    for number, line in enumerate(_read_lines(path, "trial list"), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        where = f"{path}:{number}"
        voxceleb = len(parts) == 3 and parts[0] in ("0", "1")
        nist = len(parts) == 3 and parts[2].lower() in NIST_LABELS
        if kind is None:
            if not (voxceleb or nist):
                raise DeepSpeakerError(f"{where}: expected 'LABEL PATH_A PATH_B' with label 0 or 1 (VoxCeleb) or "
                                       f"'ENROLL TEST target|nontarget' (NIST/Kaldi), got {line!r}")
            kind = "voxceleb" if voxceleb else "nist"
        if kind == "voxceleb":
            if not voxceleb:
                raise DeepSpeakerError(f"{where}: expected 'LABEL PATH_A PATH_B' with label 0 or 1, got {line!r}")
            labels.append(int(parts[0]))
            first.append(str(base / parts[1]))
            second.append(str(base / parts[2]))
        else:
            if not nist:
                raise DeepSpeakerError(f"{where}: expected 'ENROLL TEST target|nontarget' (a NIST/Kaldi list, as "
                                       f"its first trial), got {line!r}")
            labels.append(NIST_LABELS[parts[2].lower()])
            first.append(resolve(parts[0], where))
            second.append(resolve(parts[1], where))
    if not labels:
        raise DeepSpeakerError(f"{path}: no trials in the file")
    return Trials(np.asarray(labels, dtype=np.int8), first, second)


def write_trials(path: str | os.PathLike, trials: Trials, root: str | os.PathLike) -> Path:
    """Write ``LABEL PATH_A PATH_B`` lines (VoxCeleb format), paths relative to ``root`` with ``/``, atomically."""
    base = os.path.abspath(root)

    def relative(file: str) -> str:
        rel = os.path.relpath(os.path.abspath(file), base)
        if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
            raise DeepSpeakerError(f"{file}: not under {root}, the folder the trial paths are relative to")
        if len(rel.split()) != 1:
            raise DeepSpeakerError(f"{file}: a path with white space cannot be written in a trial list")
        return Path(rel).as_posix()

    lines = [f"{int(label)} {relative(a)} {relative(b)}\n"
             for label, a, b in zip(trials.labels, trials.first, trials.second)]
    write_atomic(path, "".join(lines).encode("utf8"))
    return Path(path)


# --- speakers' genders -------------------------------------------------------------------------------------------

def _gender(text: str) -> str:
    word = text.strip().lower()
    return _GENDER_WORDS.get(word, word)


def read_genders(path: str | os.PathLike) -> dict[str, str]:
    """Speaker -> gender (lower case, ``male``/``female`` as ``m``/``f``) from LibriSpeech ``SPEAKERS.TXT``
    (``id | sex | ...``), VCTK ``speaker-info.txt`` (columns, a ``GENDER`` header; ids ``225`` also as ``p225``)
    or a file of ``speaker gender`` lines (``#`` comments)."""
    lines = _read_lines(path, "speaker gender list")
    name = Path(path).name
    genders: dict[str, str] = {}
    gender_column = None
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith((";", "#")):
            continue
        where = f"{path}:{number}"
        if name == "speaker-info.txt":
            parts = text.split()
            if gender_column is None:  # the header line names the columns
                upper = [p.upper() for p in parts]
                if "GENDER" not in upper:
                    raise DeepSpeakerError(f"{where}: expected a header with a GENDER column, got {line!r}")
                gender_column = upper.index("GENDER")
                continue
            if len(parts) <= gender_column:
                raise DeepSpeakerError(f"{where}: expected 'ID AGE GENDER ...' columns, got {line!r}")
            speaker, gender = parts[0], parts[gender_column]
        elif name == "SPEAKERS.TXT":
            parts = text.split("|")
            if len(parts) < 2:
                raise DeepSpeakerError(f"{where}: expected 'ID | SEX | SUBSET | MINUTES | NAME', got {line!r}")
            speaker, gender = parts[0].strip(), parts[1]
        else:
            parts = text.split()
            if len(parts) != 2:
                raise DeepSpeakerError(f"{where}: expected 'SPEAKER GENDER', got {line!r}")
            speaker, gender = parts
        for key in (speaker, f"p{speaker}") if speaker.isdigit() and name == "speaker-info.txt" else (speaker,):
            value = _gender(gender)
            if genders.setdefault(key, value) != value:
                raise DeepSpeakerError(f"{where}: speaker {key} is given two genders ({genders[key]}, {value})")
    return genders


def find_gender_file(audio_dir: str | os.PathLike) -> Path | None:
    """The corpus' speaker metadata (:data:`GENDER_FILES`) in ``audio_dir`` or its parent, or None."""
    folder = Path(audio_dir).resolve()
    for place in (folder, folder.parent):
        for name in GENDER_FILES:
            if (place / name).is_file():
                return place / name
    return None


# --- making trial lists ------------------------------------------------------------------------------------------

@dataclass
class MadeTrials:
    """A trial list drawn from a folder, the utterances it was drawn from and the files left out."""

    trials: Trials
    utterances: list[Utterance]  # the eligible utterances (sorted by speaker, utterance)
    failures: list[Failure] = field(default_factory=list)  # files the layout rejects or whose header is unreadable
    too_short: list[str] = field(default_factory=list)  # files shorter than min_seconds, left out
    gender_file: str | None = None  # where the genders came from, under a gender rule

    @property
    def speakers(self) -> list[str]:
        """The speakers with a file in some trial (sorted)."""
        speaker_of = {u.path: u.speaker for u in self.utterances}
        return sorted({speaker_of[p] for p in (*self.trials.first, *self.trials.second)})


def _sample_ranges(lo: np.ndarray, hi: np.ndarray, n: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """``n`` distinct pairs (row p, column q) drawn uniformly from ``q in [lo[p], hi[p])`` (all when fewer exist),
    and how many exist: pair number k is decoded by the cumulative row lengths, never enumerating the pairs."""
    lengths = np.maximum(hi - lo, 0)
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if ends.size else 0
    picked = np.arange(total) if n >= total else np.sort(rng.choice(total, n, replace=False))
    rows = np.searchsorted(ends, picked, side="right")
    return rows, lo[rows] + (picked - (ends[rows] - lengths[rows])), total


def _seconds(path: str) -> float | Failure:
    """The duration in the file's header (soundfile.info: nothing is decoded), or why it cannot be read."""
    try:
        return float(sf.info(path).duration)
    except Exception as exc:  # soundfile raises several types for corrupt/unsupported files
        return Failure(path, f"unreadable audio header ({(str(exc).splitlines() or [type(exc).__name__])[0]})")


def _genders_of(speakers: list[str], genders: dict[str, str], source: str) -> list[str]:
    """The genders of ``speakers``; a one-line error naming the speakers with none in ``source``."""
    missing = [s for s in speakers if s not in genders]
    if missing:
        more = f" ({len(missing)} in all)" if len(missing) > _NAMES_SHOWN else ""
        raise DeepSpeakerError(f"no gender known for speaker {', '.join(missing[:_NAMES_SHOWN])}{more} in {source}; "
                               f"give a --genders FILE of 'speaker gender' lines")
    return [genders[s] for s in speakers]


def make_trials(audio_dir: str | os.PathLike, *, n_targets: int = 10000, n_nontargets: int | None = None,
                seed: int = 0, nontarget_gender: str = "any", genders: str | os.PathLike | None = None,
                min_seconds: float = 0.0, layout: str = "auto") -> MadeTrials:
    """A balanced trial list of a labelled folder: ``n_targets`` same-speaker pairs and ``n_nontargets`` (default:
    as many as the target trials drawn) different-speaker pairs, uniform without replacement (seeded), never a file
    with itself or a pair twice; fewer when fewer exist (a warning says so).

    ``nontarget_gender`` ``same``/``different`` keeps non-target pairs of speakers of the same/different gender
    (from ``genders``, else the folder's or its parent's ``SPEAKERS.TXT``/``speaker-info.txt``); ``min_seconds``
    keeps files at least that long by their header. Trials are ordered by (first, second) in corpus order.
    """
    check_choice(nontarget_gender, GENDER_RULES, "non-target gender rule")
    if n_targets < 0 or (n_nontargets is not None and n_nontargets < 0):
        raise DeepSpeakerError(f"trial counts must be at least 0, got {n_targets} target, {n_nontargets} non-target")
    if not np.isfinite(min_seconds) or min_seconds < 0:
        raise DeepSpeakerError(f"min_seconds must be a number of seconds at least 0, got {min_seconds}")
    utterances, failures, _ = scan_corpus(audio_dir, layout=layout)
    if not utterances:
        raise DeepSpeakerError(f"{audio_dir}: no audio files in a speaker layout found")
    too_short: list[str] = []
    if min_seconds > 0:
        kept = []
        for u in utterances:
            seconds = _seconds(u.path)
            if isinstance(seconds, Failure):
                failures.append(seconds)
            elif seconds < min_seconds:
                too_short.append(u.path)
            else:
                kept.append(u)
        utterances = kept
    if not utterances:
        raise DeepSpeakerError(f"{audio_dir}: no file of at least {min_seconds:g} s ({len(too_short)} shorter)")
    speakers = sorted({u.speaker for u in utterances})
    gender_file = None
    if nontarget_gender == "any":
        gender_of = dict.fromkeys(speakers, "")
    else:
        found = genders if genders is not None else find_gender_file(audio_dir)
        if found is None:
            raise DeepSpeakerError(f"non-target gender rule {nontarget_gender!r} needs the speakers' genders: no "
                                   f"{' or '.join(GENDER_FILES)} in {audio_dir} or its parent; give --genders FILE")
        gender_file = str(found)
        gender_of = dict(zip(speakers, _genders_of(speakers, read_genders(gender_file), gender_file)))

    # Positions in (gender, speaker) order: each speaker's and each gender's utterances are one contiguous block, so
    # the partners of position p form one range q in [lo, hi) with q > p for every kind of pair.
    order = sorted(range(len(utterances)), key=lambda i: (gender_of[utterances[i].speaker], i))
    speaker_end = _block_ends([utterances[i].speaker for i in order])
    gender_end = _block_ends([gender_of[utterances[i].speaker] for i in order])
    n = len(order)
    position = np.arange(n)
    rng = np.random.default_rng(seed)
    t_rows, t_cols, t_total = _sample_ranges(position + 1, speaker_end, n_targets, rng)
    lo, hi = {"any": (speaker_end, np.full(n, n)), "same": (speaker_end, gender_end),
              "different": (gender_end, np.full(n, n))}[nontarget_gender]
    wanted = len(t_rows) if n_nontargets is None else n_nontargets
    f_rows, f_cols, f_total = _sample_ranges(lo, hi, wanted, rng)
    rule = "" if nontarget_gender == "any" else f" ({nontarget_gender}-gender)"
    if n_targets > t_total:
        logger.warning("%s: %d target trials asked for, only %d same-speaker pairs exist: all of them are taken",
                       audio_dir, n_targets, t_total)
    if wanted > f_total:
        logger.warning("%s: %d non-target trials asked for, only %d different-speaker pairs%s exist: all of them "
                       "are taken", audio_dir, wanted, f_total, rule)
    if t_rows.size + f_rows.size == 0:
        hint = "; ask for non-target trials explicitly (--nontargets N)" if f_total and n_nontargets is None else ""
        raise DeepSpeakerError(f"{audio_dir}: no trials made: {t_total} same-speaker and {f_total} "
                               f"different-speaker pairs{rule} among {n} utterances{hint}")
    index = np.asarray(order)
    a = index[np.concatenate([t_rows, f_rows])]
    b = index[np.concatenate([t_cols, f_cols])]
    a, b = np.minimum(a, b), np.maximum(a, b)  # corpus order within a trial
    labels = np.concatenate([np.ones(t_rows.size, np.int8), np.zeros(f_rows.size, np.int8)])
    rows = np.lexsort((b, a))
    trials = Trials(labels[rows], [utterances[i].path for i in a[rows]], [utterances[i].path for i in b[rows]])
    return MadeTrials(trials, utterances, failures, too_short, gender_file)


def _block_ends(keys: list[str]) -> np.ndarray:
    """For each position of a sequence of contiguous equal-key blocks, the end (exclusive) of its block."""
    starts = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]
    ends = starts[1:] + [len(keys)]
    return np.repeat(np.asarray(ends, dtype=np.int64), np.subtract(ends, starts).astype(np.int64))
