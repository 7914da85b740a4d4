"""The mean-MFCC baseline (issue #33: a trained encoder must at least beat "a mean-MFCC cosine"): the mean over
frames of 13 MFCCs of the untrimmed 16 kHz signal, ``python_speech_features.mfcc`` with its defaults (25 ms
windows every 10 ms, 26 mel filters, c0 replaced by the log frame energy), as ``benchmarks/train_quality.py``'s
``mean_mfcc``. No weights: the identity is a digest of these settings.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from typing import Any, Sequence

import numpy as np

from .base import Encoder, waveform
from .options import MEAN_MFCC

NAME = "mean-mfcc"
SAMPLE_RATE = 16000
NUMCEP, WINLEN, WINSTEP = 13, 0.025, 0.01  # python_speech_features.mfcc's defaults, named for the settings record


class MeanMFCCEncoder(Encoder):
    """``mean_t mfcc(x)[t]``: 13-d, not normalised (the cosine normalises)."""

    name = NAME
    declaration = MEAN_MFCC
    sample_rate = SAMPLE_RATE
    embedding_size = NUMCEP

    @property
    def settings(self) -> dict[str, Any]:
        return {"features": f"python_speech_features {version('python_speech_features')} mfcc",
                "sample_rate": SAMPLE_RATE, "numcep": NUMCEP, "winlen": WINLEN, "winstep": WINSTEP,
                "trim": "none", "pooling": "mean over frames"}

    @property
    def identity(self) -> str:
        """sha256(settings)[:16]: there are no weights."""
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]

    def prepare_signal(self, signal: np.ndarray, sample_rate: int, where: str) -> np.ndarray:
        """The MFCC frames ``[T, 13]`` of the signal at 16 kHz; an AudioError below one 25 ms window."""
        from python_speech_features import mfcc

        x = waveform(signal, sample_rate, rate=SAMPLE_RATE, min_samples=int(WINLEN * SAMPLE_RATE), where=where,
                     name=NAME)
        return mfcc(x, samplerate=SAMPLE_RATE, winlen=WINLEN, winstep=WINSTEP, numcep=NUMCEP)

    def embed_prepared(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([frames.mean(axis=0) for frames in inputs]).astype(np.float32)
