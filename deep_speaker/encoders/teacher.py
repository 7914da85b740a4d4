"""A teacher for knowledge distillation (``--teacher NAME``): any registered encoder embeds every utterance of the
training features' source audio once; the student (ResCNN) regresses those embeddings through a learned projection,
or matches their pairwise cosines, beside its speaker loss or alone (``deep_speaker.model.layers.TeacherProjection``,
``TeacherPairwise``; ``--teacher_loss``, ``--speaker_weight``). The file format and its checks are
``deep_speaker.data.targets``; this module only makes the file.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.audio import SAMPLE_RATE, read_audio
from ..data.augment import speed_perturb
from ..data.sources import open_features
from ..data.targets import TeacherTargets, clean_source, read_targets, target_key, write_targets
from ..metrics import normalize_rows
from . import get_encoder
from .base import Encoder

log = logging.getLogger(__name__)
SIGNALS_PER_BATCH = 16  # utterances embedded per call: bounded memory for any corpus


def teacher_targets(encoder: Encoder, source: Any) -> TeacherTargets:
    """The encoder's embedding of each utterance of a feature source, from its clean source audio read as the
    features were (the source's trim), speed-perturbed for a speed copy; one embedding per (audio, speed)."""
    trim = source.settings.get("trim", True)
    keys, wanted = [], []
    for speaker, utterance in source.utterances():
        keys.append(target_key(speaker, utterance))
        wanted.append(clean_source(source.entry(speaker, utterance)))
    distinct = sorted(set(wanted))
    rows: list[np.ndarray] = []
    for start in range(0, len(distinct), SIGNALS_PER_BATCH):
        signals = []
        for path, speed in distinct[start:start + SIGNALS_PER_BATCH]:
            signal = read_audio(path, trim=trim)
            signals.append(signal if speed == 1.0 else speed_perturb(signal, speed, SAMPLE_RATE))
        rows.append(encoder.embed_signals(signals, SAMPLE_RATE))
    index = {item: i for i, item in enumerate(distinct)}
    embeddings = normalize_rows(np.concatenate(rows))[[index[w] for w in wanted]]
    return TeacherTargets(keys, embeddings.astype(np.float32), encoder.name, encoder.identity)


def ensure_teacher_targets(teacher: str, features_dir: str | os.PathLike, path: str | os.PathLike) -> TeacherTargets:
    """The targets of ``teacher`` (a registered encoder's name) for the features in ``features_dir``: read from
    ``path`` when it holds this teacher's for every utterance there, else computed and written there."""
    source = open_features(features_dir)
    path = Path(path)
    if path.is_file():
        found = read_targets(path, teacher)
        missing = found.missing(source)
        if not missing:
            return found
        log.info("teacher targets: %s lacks %d utterance(s) of %s; recomputing", path, len(missing), source.path)
    encoder = get_encoder(teacher)
    log.info("teacher targets: %s embeds %d utterance(s) of %s", teacher, len(source.utterances()), source.path)
    targets = teacher_targets(encoder, source)
    write_targets(path, targets)
    return targets


def teacher_card(teacher: str, identity: str) -> dict[str, str | None]:
    """What a model card says of its teacher: the encoder, its weights' identity, and the licence of the package
    its weights come from (from the installed package's metadata), when the encoder names one."""
    package = get_encoder(teacher).weights.package
    return {"encoder": teacher, "identity": identity, "weights_package": package,
            "licence": package_licence(package.split()[0]) if package else None}


def package_licence(distribution: str) -> str | None:
    """The licence an installed distribution declares: its License-Expression, License field, or licence
    classifier (trove names, e.g. ``Apache Software License``); None when it declares none."""
    try:
        metadata = importlib.metadata.metadata(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for field in ("License-Expression", "License"):
        value = metadata.get(field)
        if value and value.strip().upper() != "UNKNOWN":
            return value.strip()
    classifiers = [c.split(" :: ")[-1] for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")]
    return ", ".join(classifiers) or None
