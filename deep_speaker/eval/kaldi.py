"""Embeddings as Kaldi ``.ark`` + ``.scp`` (kaldiio), the field's exchange format (e.g. Kaldi's ivector-*,
x-vector recipes, ESPnet, Lhotse): one binary float vector (``BFV``) per utterance, keyed by utterance id.

Ids are the file names without suffix (LibriSpeech's ``84-121123-0000`` already starts with its speaker), with
the speaker prepended (``p225-...``) when one is known and the name does not start with it, as Kaldi sorts
utterances of a speaker together; whitespace, which Kaldi ids cannot hold, becomes ``_``. Entries are written
in byte order of their ids (Kaldi's ``LC_ALL=C`` sort); two files with the same id are refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_write
from ..errors import DeepSpeakerError
from .constants import KALDI_SUFFIX


def kaldi_ids(paths: Sequence[str], speakers: Sequence[str] | None = None) -> list[str]:
    """The Kaldi utterance id of each file (see the module docstring); a one-line error for a repeated id."""
    ids, owner = [], {}
    for i, path in enumerate(paths):
        stem = re.sub(r"\s", "_", Path(path).stem)
        speaker = "" if speakers is None else re.sub(r"\s", "_", str(speakers[i]))
        uid = f"{speaker}-{stem}" if speaker and not stem.startswith(speaker) else stem
        if uid in owner:
            raise DeepSpeakerError(f"{owner[uid]} and {path} both give the Kaldi utterance id {uid}; rename one")
        owner[uid] = path
        ids.append(uid)
    return ids


def save_kaldi(path: str | os.PathLike, embeddings: np.ndarray, sources: Sequence[str],
               *, speakers: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write ``path`` (.ark, float32 vectors) and the ``.scp`` beside it, each atomically; their paths."""
    import kaldiio

    ark = Path(path)
    if ark.suffix.lower() != KALDI_SUFFIX:
        raise DeepSpeakerError(f"{ark}: a Kaldi archive needs the suffix {KALDI_SUFFIX}")
    scp = ark.with_suffix(".scp")
    rows = np.asarray(embeddings, dtype=np.float32)
    ids = kaldi_ids(sources, speakers)
    order = sorted(range(len(ids)), key=lambda i: ids[i].encode("utf8"))
    lines = []
    with atomic_write(ark) as f:
        for i in order:
            # An entry is '<id> ' then the vector; the table points at the vector, as kaldiio's own scp does.
            lines.append(f"{ids[i]} {ark}:{f.tell() + len((ids[i] + ' ').encode('utf8'))}\n")
            kaldiio.save_ark(f, {ids[i]: rows[i]})
    with atomic_write(scp) as f:
        f.write("".join(lines).encode("utf8"))
    return ark, scp
