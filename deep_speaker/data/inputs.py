"""Training inputs for softmax pre-training: fixed-length crops per speaker with a held-out split, in one ``.npz``.

The original wrote ``full_inputs.pkl``; any ``.pkl`` path maps to the ``.npz`` beside it and a pickle is
never opened. The file records the feature settings and the crop length so that training can refuse
inputs that do not match its model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..atomic import atomic_write
from ..errors import DeepSpeakerError
from ..settings import settings_difference
from .build import INPUTS_NAME
from .constants import DEFAULT_CROP_FRAMES
from .features import FEATURE_SETTINGS, NUM_FILTERS
from .sources import FeatureSource, open_features

INPUTS_FORMAT_VERSION = 1

# (utterance id, first frame, last frame + 1) of an utterance segment that crops are cut from.
Segment = tuple[str, int, int]


def inputs_path(path: str | os.PathLike) -> Path:
    """The ``.npz`` actually read or written for ``path`` (the original ``full_inputs.pkl`` -> ``full_inputs.npz``)."""
    path = Path(path)
    return path.with_suffix(".npz") if path.suffix.lower() == ".pkl" else path


def split_speaker(frames: dict[str, int], holdout: float, rng: np.random.Generator) -> tuple[list[Segment], list[Segment]]:
    """Train and held-out segments of one speaker: whole utterances, or for a single one its last part."""
    utts = sorted(frames)
    if len(utts) >= 2:
        n_test = min(len(utts) - 1, max(1, round(len(utts) * holdout))) if holdout > 0 else 0
        test = set(rng.permutation(utts)[:n_test].tolist())
        return ([(u, 0, frames[u]) for u in utts if u not in test],
                [(u, 0, frames[u]) for u in utts if u in test])
    (utt,) = utts
    total = frames[utt]
    n_test = round(total * holdout) if holdout > 0 else 0
    if n_test < 1 or n_test >= total:  # too short to split in time: all of it trains
        return [(utt, 0, total)], []
    return [(utt, 0, total - n_test)], [(utt, total - n_test, total)]


def segment_crops(segment: Segment, crop_frames: int, rng: np.random.Generator) -> list[tuple[str, int, int]]:
    """Random crops ``(utterance, start, length)`` inside a segment, about one per ``crop_frames`` of it.

    A segment shorter than a crop gives one crop of its whole length (zero-padded at the end later).
    """
    utt, lo, hi = segment
    length = hi - lo
    if length <= crop_frames:
        return [(utt, lo, length)]
    count = max(1, round(length / crop_frames))
    starts = np.sort(rng.integers(lo, hi - crop_frames + 1, size=count))
    return [(utt, int(s), crop_frames) for s in starts]


def fill_crops(cache: FeatureSource, speaker: str, crops: list[tuple[str, int, int]], *, out: np.ndarray) -> None:
    """Copy crops of a speaker's cached features into ``out`` [n, crop, 64, 1] (already zeroed)."""
    for row, (utt, start, length) in enumerate(crops):
        out[row, :length, :, 0] = cache.load(speaker, utt)[start:start + length]


def generate_training_inputs(cache: FeatureSource | str | os.PathLike, output_path: str | os.PathLike | None = None,
                             *, crop_frames: int = DEFAULT_CROP_FRAMES, holdout: float = 0.2, seed: int = 0,
                             speakers: Optional[Sequence[str]] = None) -> Path:
    """Cut fixed-length crops per speaker from a feature cache and save them as ``.npz``; returns its path.

    Arrays: ``x_train``/``x_test`` float32 [N, crop_frames, 64, 1], ``y_train``/``y_test`` int64 indices
    into ``speakers``; plus ``crop_frames`` and the cache's feature ``settings`` (JSON).
    """
    cache = open_features(cache) if isinstance(cache, (str, os.PathLike)) else cache
    if crop_frames < 1 or not 0 <= holdout < 1:
        raise DeepSpeakerError(f"need crop_frames >= 1 and 0 <= holdout < 1 (got {crop_frames}, {holdout})")
    chosen = sorted(speakers) if speakers is not None else cache.speakers
    missing = sorted(set(chosen) - set(cache.speakers))
    if missing:
        raise DeepSpeakerError(f"{cache.path}: speakers not in the cache: {', '.join(missing)}")
    if not chosen:
        raise DeepSpeakerError(f"{cache.path}: the cache holds no utterances")
    rng = np.random.default_rng(seed)
    plans = []  # per speaker: (train crops, test crops); planned from the manifest before any array is read
    for speaker in chosen:
        frames = {utt: cache.entry(speaker, utt)["frames"] for _, utt in cache.utterances(speaker)}
        train, test = split_speaker(frames, holdout, rng)
        plans.append(([c for s in train for c in segment_crops(s, crop_frames, rng)],
                      [c for s in test for c in segment_crops(s, crop_frames, rng)]))
    arrays = {}
    for part, index in (("train", 0), ("test", 1)):
        counts = [len(plan[index]) for plan in plans]
        x = np.zeros((sum(counts), crop_frames, NUM_FILTERS, 1), dtype=np.float32)
        offsets = np.cumsum([0] + counts)
        for label, (speaker, plan) in enumerate(zip(chosen, plans)):
            fill_crops(cache, speaker, plan[index], out=x[offsets[label]:offsets[label + 1]])
        arrays[f"x_{part}"] = x
        arrays[f"y_{part}"] = np.repeat(np.arange(len(chosen), dtype=np.int64), counts)
    path = inputs_path(output_path if output_path is not None else cache.path / INPUTS_NAME)
    with atomic_write(path) as f:
        np.savez(f, **arrays, speakers=np.array(chosen, dtype=str), crop_frames=np.int64(crop_frames),
                 settings=np.array(json.dumps(cache.settings, sort_keys=True)),
                 format_version=np.int64(INPUTS_FORMAT_VERSION))
    return path


def load_training_inputs(path: str | os.PathLike, crop_frames: Optional[int] = None) -> dict:
    """Read training inputs (a ``.pkl`` path reads the ``.npz`` beside it); refuse other features or crop length.

    Returns x_train, y_train, x_test, y_test, speakers (list), crop_frames (int), settings (dict).
    """
    path = inputs_path(path)
    if not path.is_file():
        raise DeepSpeakerError(f"{path}: training inputs not found; make them with "
                               f"'python cli.py --generate_training_inputs --cache_output_dir CACHE_DIR' "
                               f"(pickle files are never read)")
    with np.load(path, allow_pickle=False) as data:
        if "format_version" not in data or int(data["format_version"]) != INPUTS_FORMAT_VERSION:
            raise DeepSpeakerError(f"{path}: not deep-speaker training inputs (version {INPUTS_FORMAT_VERSION})")
        inputs = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        inputs["speakers"] = [str(s) for s in data["speakers"]]
        inputs["crop_frames"] = int(data["crop_frames"])
        inputs["settings"] = json.loads(str(data["settings"]))
    features = {k: v for k, v in inputs["settings"].items() if k in FEATURE_SETTINGS}
    if features != FEATURE_SETTINGS:
        raise DeepSpeakerError(f"{path}: computed with other feature settings "
                               f"({settings_difference(features, FEATURE_SETTINGS)}); regenerate the cache")
    if crop_frames is not None and inputs["crop_frames"] != crop_frames:
        raise DeepSpeakerError(f"{path}: crops of {inputs['crop_frames']} frames, the model needs {crop_frames}")
    return inputs
