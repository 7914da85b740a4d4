"""Embedding files for other tools: ``.npz`` (embeddings, paths, identity, encoder[, speakers]), ``.npy``, ``.csv``."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_write
from ..encoders import DEFAULT_ENCODER
from ..errors import DeepSpeakerError
from .constants import EXPORT_SUFFIXES
from .embedded import Embedded
from .formats import write_embeddings


def save_embeddings(path: str | os.PathLike, embeddings: np.ndarray, sources: Sequence[str], *, model_id: str,
                    speakers: Sequence[str] | None = None, encoder: str = DEFAULT_ENCODER) -> Path:
    """Write embeddings by suffix: .npz (``formats.write_embeddings``: embeddings, paths, model_identity,
    encoder[, speakers]), .npy, .csv."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise DeepSpeakerError(f"{path}: unknown output format; use one of {', '.join(EXPORT_SUFFIXES)}")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if suffix == ".npz":
        rows = Embedded(embeddings, list(speakers) if speakers is not None else [], list(sources), [], encoder,
                        model_id)
        write_embeddings(path, rows, speakers=speakers is not None)
        return path
    with atomic_write(path) as out:
        if suffix == ".npy":
            np.save(out, embeddings, allow_pickle=False)
        else:
            f = io.TextIOWrapper(out, encoding="utf8", newline="", write_through=True)
            writer = csv.writer(f)
            label = [] if speakers is None else ["speaker"]
            writer.writerow(["path", *label, *(f"e{i}" for i in range(embeddings.shape[1]))])
            for i, row in enumerate(embeddings):
                writer.writerow([sources[i], *([] if speakers is None else [speakers[i]]),
                                 *(f"{v:.8g}" for v in row)])
            f.detach()  # the bytes are written through; atomic_write closes and renames the file
    return path
