"""Teacher targets: one embedding per utterance of a feature cache or store, made by another (trusted) encoder, for
knowledge distillation (``--teacher``). The file is an ``.npz`` of unicode and float arrays (no pickle):
``keys`` ("speaker/utterance"), ``embeddings`` [N, D] (L2-normalised rows), ``teacher`` (the encoder's name),
``identity`` (its weights' identity) and ``format_version``. It is made by ``deep_speaker.encoders.teacher``; the
trainer reads it here, checked against the cache it trains on.

An augmented copy's target is the teacher's embedding of its *clean* source utterance (speed-perturbed as the copy
is, since a speed copy is another speaker): the student learns to place a noisy, reverberant or narrowband crop
where the teacher places the clean speech.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..errors import DeepSpeakerError
from ..validate import checked_array, checked_text, load_npz

TARGETS_FORMAT = 1
WHAT = "teacher-target file"


def target_key(speaker: str, utterance: str) -> str:
    """The key of an utterance's target: ``speaker/utterance``."""
    return f"{speaker}/{utterance}"


def clean_source(entry: dict) -> tuple[str, float]:
    """What the teacher embeds for a cache entry: the source audio path and the speed factor of a speed copy (1.0
    for an original or a copy without speed change)."""
    return str(entry["source"]), float(entry.get("augment", {}).get("speed", 1.0))


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's embedding of each utterance (rows of ``embeddings``, by ``keys``)."""

    keys: list[str]
    embeddings: np.ndarray  # float32 [N, D], unit rows
    teacher: str
    identity: str
    index: dict[str, int] = field(init=False, repr=False, compare=False)  # row of each key

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {k: i for i, k in enumerate(self.keys)})

    def rows(self, keys: list[str]) -> np.ndarray:
        """The rows of ``keys``, in order."""
        return self.embeddings[[self.index[k] for k in keys]]

    def missing(self, source: Any) -> list[str]:
        """The keys of the utterances of the feature source ``source`` that have no target here."""
        return [target_key(s, u) for s, u in source.utterances() if target_key(s, u) not in self.index]

    def check_covers(self, source: Any, where: str | os.PathLike) -> None:
        """Refuse (one line) targets that lack an utterance of the feature source ``source``."""
        missing = self.missing(source)
        if missing:
            raise DeepSpeakerError(f"{where}: no teacher target for {len(missing)} utterance(s) of {source.path} "
                                   f"(e.g. {missing[0]}): made for another cache; delete it to recompute")


def write_targets(path: str | os.PathLike, targets: TeacherTargets) -> Path:
    """Write ``targets`` atomically as the ``.npz`` described above."""
    embeddings = np.asarray(targets.embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(targets.keys):
        raise DeepSpeakerError(f"{path}: {len(targets.keys)} keys for embeddings of shape {embeddings.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as out:
        np.savez(out, format_version=np.int64(TARGETS_FORMAT), keys=np.asarray(targets.keys, dtype=str),
                 embeddings=embeddings, teacher=np.asarray(targets.teacher), identity=np.asarray(targets.identity))
    return Path(path)


def read_targets(path: str | os.PathLike, teacher: str | None = None) -> TeacherTargets:
    """A file of :func:`write_targets`, checked: its version, a text key per row, finite unit-norm rows, and (given
    ``teacher``) that encoder's."""
    data = load_npz(path, ("format_version", "keys", "embeddings", "teacher", "identity"), what=WHAT)
    version = checked_array(data["format_version"], path, "format_version", shape=(), kind="int")
    if int(version) != TARGETS_FORMAT:
        raise DeepSpeakerError(f"{path}: {WHAT} format {int(version)}, this version reads {TARGETS_FORMAT}")
    embeddings = checked_array(data["embeddings"], path, "embeddings", shape=(None, None)).astype(np.float32)
    keys = checked_array(data["keys"], path, "keys", shape=(len(embeddings),), kind="text").tolist()
    if len(set(keys)) != len(keys):
        raise DeepSpeakerError(f"{path}: a {WHAT} with repeated keys")
    norms = np.linalg.norm(embeddings, axis=1)
    if len(norms) and not np.allclose(norms, 1.0, atol=1e-3):
        raise DeepSpeakerError(f"{path}: a {WHAT} whose rows are not unit vectors")
    found = checked_text(data["teacher"], path, "teacher")
    if teacher is not None and found != teacher:
        raise DeepSpeakerError(f"{path}: targets of the teacher {found}, not {teacher}; delete it or use another "
                               f"output folder")
    return TeacherTargets(keys, embeddings, found, checked_text(data["identity"], path, "identity"))
