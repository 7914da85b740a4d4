"""Deep Speaker features: 64 linear mel filterbank energies (python_speech_features.fbank), normalised per frame."""

from __future__ import annotations

import os

import numpy as np
import scipy.fft
import scipy.sparse
from python_speech_features import get_filterbanks

from .audio import SAMPLE_RATE, TrimMode, read_audio

NUM_FILTERS = 64
WIN_LENGTH = 400  # 0.025 s at 16 kHz
HOP_LENGTH = 160  # 0.01 s
NFFT = 512
PREEMPH = 0.97

# Everything a model depends on; stored in caches, checkpoints and statistics files and compared on load.
FEATURE_SETTINGS = {
    "sample_rate": SAMPLE_RATE,
    "features": "fbank",
    "num_filters": NUM_FILTERS,
    "win_length": WIN_LENGTH,
    "hop_length": HOP_LENGTH,
    "nfft": NFFT,
    "preemph": PREEMPH,
    "window": "rectangular",
    "normalisation": "per-frame mean/std",
}

_MEL_CACHE: dict[int, np.ndarray] = {}
_SPARSE_MEL_CACHE: dict[int, scipy.sparse.csr_array] = {}


def mel_matrix(sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The [257, 64] triangular mel filterbank of python_speech_features (transposed for a right-multiply)."""
    if sample_rate not in _MEL_CACHE:
        fb = get_filterbanks(NUM_FILTERS, NFFT, sample_rate, 0, sample_rate / 2)
        _MEL_CACHE[sample_rate] = np.ascontiguousarray(fb.T, dtype=np.float32)
    return _MEL_CACHE[sample_rate]


def _sparse_mel(sample_rate: int) -> scipy.sparse.csr_array:
    # Each bin feeds at most two triangles (438 of the 16,448 weights are non-zero): the sparse product is faster
    # than BLAS, and gives the same bits whatever BLAS's thread count, which a multi-threaded BLAS product does
    # not; so the features of a file are identical whichever path (cache, store, Dask, embedder) computes them.
    if sample_rate not in _SPARSE_MEL_CACHE:
        _SPARSE_MEL_CACHE[sample_rate] = scipy.sparse.csr_array(mel_matrix(sample_rate))
    return _SPARSE_MEL_CACHE[sample_rate]


def frame_signal(signal: np.ndarray, win_length: int = WIN_LENGTH, hop_length: int = HOP_LENGTH) -> np.ndarray:
    """Frames as python_speech_features.framesig cuts them: 1 + ceil((n - win) / hop), last frame zero-padded."""
    n = signal.shape[0]
    num_frames = 1 if n <= win_length else 1 + int(np.ceil((n - win_length) / hop_length))
    padded = np.zeros((num_frames - 1) * hop_length + win_length, dtype=signal.dtype)
    padded[:n] = signal
    return np.lib.stride_tricks.sliding_window_view(padded, win_length)[::hop_length]


def normalize_frames(frames: np.ndarray, epsilon: float = 1e-12) -> np.ndarray:
    """Per-frame standardisation ``(v - mean(v)) / max(std(v), eps)`` with the population std."""
    mean = frames.mean(axis=1, keepdims=True)
    centred = frames - mean
    std = np.sqrt(np.mean(centred * centred, axis=1, keepdims=True))
    return centred / np.maximum(std, epsilon)


def fbank_features(signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Normalised 64-band filterbank energies ``[T, 64]`` float32, as the original ``read_mfcc`` computes them."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"features are defined at {SAMPLE_RATE} Hz; resample first (got {sample_rate})")
    x = np.asarray(signal, dtype=np.float32)
    emphasized = np.empty_like(x)
    emphasized[:1] = x[:1]
    emphasized[1:] = x[1:] - PREEMPH * x[:-1]
    frames = frame_signal(emphasized)
    spectrum = scipy.fft.rfft(frames, n=NFFT, axis=1)
    power = (spectrum.real ** 2 + spectrum.imag ** 2) * np.float32(1.0 / NFFT)
    # The sparse product comes out column-major: C order, so that a cached array's frames are contiguous (a crop
    # of a column-major array is a strided copy: random-crop batches took 6x as long on a 2-core EPYC).
    energies = np.ascontiguousarray(power @ _sparse_mel(sample_rate))
    energies[energies == 0] = np.finfo(np.float64).eps
    return normalize_frames(energies).astype(np.float32, copy=False)


def extract_features(path: str | os.PathLike, trim: TrimMode | bool = True, min_seconds: float = 0.0) -> np.ndarray:
    """Read a file and compute its features: ``fbank_features(read_audio(path))``."""
    return fbank_features(read_audio(path, trim=trim, min_seconds=min_seconds))
