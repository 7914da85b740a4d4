"""Noise reference sets made from a real set, the 0 of the noise-anchored scores (docs metrics.md, TTSDS).

One noise file per real file and kind, with the real file's length and sample rate and, except ``silence``, its
RMS level: ``white`` (flat spectrum), ``pink`` (power ∝ 1/f), ``babble`` (the sum of :data:`BABBLE_TALKERS` real
utterances of *other* speakers, each at equal level, cut or looped to the length) and ``silence`` (white noise at
:data:`SILENCE_RMS`, quiet but not zero, so that every feature stays finite and no encoder refuses it as silent).
Each file's draw is seeded by ``(seed, kind, path)``: the same real set and seed give the same noise, in any order.
"""

from __future__ import annotations

import os
import zlib
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import soundfile as sf

from ..data.audio import load_audio
from ..data.augment import babble as augment_babble, colored_noise
from ..errors import DeepSpeakerError
from ..settings import check_choice

NOISE_KINDS = ("white", "pink", "babble", "silence")
BABBLE_TALKERS = 4  # utterances summed in one babble file (fewer where fewer other-speaker files exist)
SILENCE_RMS = 1e-4  # peaks of ~4e-4 (above data.audio.SILENCE_PEAK) at -80 dBFS: quiet, never digital zero


class NoiseFile(NamedTuple):
    """One noise file: the real file it stands for, that file's speaker label, the signal, its rate and the
    indices of the real files mixed into it (babble; empty for the other kinds)."""

    path: str
    label: str
    signal: np.ndarray
    sample_rate: int
    sources: tuple[int, ...]


def _scaled(x: np.ndarray, rms: float) -> np.ndarray:
    power = float(np.mean(x * x))
    return (x * (rms / np.sqrt(power)) if power > 0.0 else x).astype(np.float32)


def white_noise(n: int, rms: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of Gaussian white noise (the augmentations' :func:`~deep_speaker.data.augment.colored_noise`,
    exponent 0) at exactly ``rms``."""
    return _scaled(colored_noise(n, 0.0, rng), rms)


def pink_noise(n: int, rms: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of pink noise (power spectral density ∝ 1/f: ``colored_noise`` with exponent 1) at exactly
    ``rms``."""
    return _scaled(colored_noise(n, 1.0, rng), rms)


def babble(n: int, rms: float, talkers: Sequence[np.ndarray], *, rng: np.random.Generator) -> np.ndarray:
    """The augmentations' babble of ``talkers`` (:func:`~deep_speaker.data.augment.babble`: each at unit power, a
    random window of it, tiled when shorter than ``n`` samples), at ``rms``."""
    if not talkers:
        raise DeepSpeakerError("babble needs at least one other utterance")
    return _scaled(augment_babble(list(talkers), n, rng), rms)


def babble_sources(index: int, labels: Sequence[str], rng: np.random.Generator,
                   *, talkers: int = BABBLE_TALKERS) -> np.ndarray:
    """Indices of the files mixed into file ``index``'s babble: ``talkers`` drawn without replacement from the
    files of other speakers (unlabelled sets, label "": from every other file)."""
    labels = np.asarray(labels, dtype=str)
    own = labels[index]
    pool = np.flatnonzero(labels != own) if own else np.setdiff1d(np.arange(labels.size), [index])
    if pool.size == 0:
        raise DeepSpeakerError(f"babble needs utterances of speakers other than {own or 'the file itself'}")
    return np.sort(rng.choice(pool, size=min(talkers, pool.size), replace=False))


def file_rng(seed: int, kind: str, path: str) -> np.random.Generator:
    """The generator of one noise file: ``(seed, kind, path)``, independent of the order files come in."""
    return np.random.default_rng([seed, NOISE_KINDS.index(kind), zlib.crc32(str(path).encode())])


def _native(path: str) -> tuple[np.ndarray, int]:
    """A file decoded to mono at its own sample rate."""
    try:
        rate = sf.info(path).samplerate
    except Exception as exc:  # soundfile raises several types for missing or corrupt files
        raise DeepSpeakerError(f"{path}: cannot read the real file a noise file is made from ({exc})") from None
    return load_audio(path, rate), rate


def noise_set(kind: str, paths: Sequence[str | os.PathLike], labels: Sequence[str], *, seed: int = 0,
              talkers: int = BABBLE_TALKERS) -> Iterator[NoiseFile]:
    """The noise files of one ``kind`` (:data:`NOISE_KINDS`) for the real files ``paths`` (speakers ``labels``),
    one per real file, in order; made as they are consumed (a set never sits in memory whole)."""
    check_choice(kind, NOISE_KINDS, "noise kind")
    paths = [str(p) for p in paths]
    labels = [str(lab) for lab in labels]
    if len(labels) != len(paths):
        raise DeepSpeakerError("need one speaker label per real file")
    # Babble talkers are drawn in path order, so that a file's babble does not depend on the order files come in.
    order = np.argsort(np.asarray(paths, dtype=str), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    sorted_labels = [labels[j] for j in order]
    for i, path in enumerate(paths):
        signal, rate = _native(path)
        rng = file_rng(seed, kind, path)
        rms = max(float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))), SILENCE_RMS)
        sources: tuple[int, ...] = ()
        if kind == "white":
            out = white_noise(signal.size, rms, rng)
        elif kind == "pink":
            out = pink_noise(signal.size, rms, rng)
        elif kind == "silence":
            out = white_noise(signal.size, SILENCE_RMS, rng)
        else:
            picked = babble_sources(int(rank[i]), sorted_labels, rng, talkers=talkers)  # ascending: in path order
            sources = tuple(int(order[j]) for j in picked)
            out = babble(signal.size, rms, [load_audio(paths[j], rate) for j in sources], rng=rng)
        yield NoiseFile(path, labels[i], out, rate, sources)
