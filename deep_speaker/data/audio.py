"""Audio reading: any WAV/FLAC file becomes mono float32 at the model's sample rate, trimmed."""

from __future__ import annotations

import logging
import os
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from ..errors import InputError
from ..settings import check_choice
from .constants import AUDIO_EXTENSIONS, MIN_SPEECH_SECONDS, TRIM_MODES

SAMPLE_RATE = 16000
TrimMode = Literal["percentile", "vad", "none"]
# Bounds on what a header may claim before anything is decoded: a 32 KB file whose header says 1 Hz would
# otherwise resample to hundreds of MB. Recordings longer than MAX_AUDIO_SECONDS are to be split first.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 384000
MAX_AUDIO_SECONDS = 3 * 3600.0

logger = logging.getLogger(__name__)
_warned_rates: set[int] = set()
# Below this peak amplitude a file holds no usable speech (16-bit dither is ~3e-5).
SILENCE_PEAK = 1e-4


class AudioError(InputError):
    """A file that cannot give speech: unreadable, empty, silent or too short."""


def check_trim(mode: str) -> str:
    """The trim mode if it is one of TRIM_MODES, else a one-line DeepSpeakerError."""
    return check_choice(mode, TRIM_MODES, "trim mode")


def resample(signal: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling with soxr 'HQ', the same filter as ``librosa.load``'s default."""
    if orig_sr == target_sr:
        return signal.astype(np.float32, copy=False)
    return soxr.resample(signal, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def trim_percentile(signal: np.ndarray) -> np.ndarray:
    """The original Deep Speaker trim: keep ``x[first:last]`` of samples louder than the 95th percentile of |x|."""
    energy = np.abs(signal)
    loud = np.flatnonzero(energy > np.percentile(energy, 95))
    if loud.size == 0:
        return signal[:0]
    return signal[loud[0]:loud[-1]]


def trim_vad(signal: np.ndarray, sample_rate: int = SAMPLE_RATE, top_db: float = 30.0) -> np.ndarray:
    """Energy voice-activity trim: drop leading/trailing audio more than ``top_db`` below the peak (librosa.effects.trim)."""
    import librosa

    trimmed, _ = librosa.effects.trim(signal, top_db=top_db, frame_length=int(0.025 * sample_rate),
                                      hop_length=int(0.01 * sample_rate))
    return trimmed


def apply_trim(signal: np.ndarray, mode: TrimMode = "percentile", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Apply the named trim (``percentile`` = original, ``vad``, ``none``)."""
    if mode == "percentile":
        return trim_percentile(signal)
    if mode == "vad":
        return trim_vad(signal, sample_rate)
    check_trim(mode)
    return signal


def check_header(path: str | os.PathLike, sample_rate: int, frames: int) -> None:
    """Refuse a header whose rate or length is out of bounds; warn once per rate for speech below SAMPLE_RATE."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(path, f"sample rate {sample_rate} Hz outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz "
                               f"(a damaged header?)")
    if frames / sample_rate > MAX_AUDIO_SECONDS:
        raise AudioError(path, f"{frames / sample_rate / 3600:.1f} h of audio, more than the "
                               f"{MAX_AUDIO_SECONDS / 3600:g} h read at once; split the recording")
    if sample_rate < SAMPLE_RATE and sample_rate not in _warned_rates:
        _warned_rates.add(sample_rate)
        logger.warning("%s: recorded at %d Hz, below the %d Hz the features use: upsampled, it has no energy above "
                       "%d Hz, so its embeddings do not compare with those of %d Hz speech (warned once per rate)",
                       path, sample_rate, SAMPLE_RATE, sample_rate // 2, SAMPLE_RATE)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file to mono float32 at ``sample_rate`` (channels averaged, soxr resampling), untrimmed."""
    try:
        with sf.SoundFile(path) as f:  # one open: the header is checked before anything is decoded
            check_header(path, f.samplerate, f.frames)
            data, file_sr = f.read(dtype="float32", always_2d=True), f.samplerate
    except AudioError:
        raise
    except Exception as exc:  # soundfile raises several types for corrupt/unsupported files
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise AudioError(path, f"cannot open: {exc.strerror or exc}") from exc
        if not os.path.exists(path):
            raise AudioError(path, "no such file") from exc
        if os.path.getsize(path) == 0:
            raise AudioError(path, "empty file (0 bytes)") from exc
        raise AudioError(path, f"unreadable audio ({str(exc).splitlines()[0]})") from exc
    if data.shape[0] == 0:
        raise AudioError(path, "no audio samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return resample(np.ascontiguousarray(mono), file_sr, sample_rate)


def read_audio(path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE, trim: TrimMode | bool = True,
               min_seconds: float = 0.0) -> np.ndarray:
    """Read a speech file as mono float32 at ``sample_rate``, trimmed (``True`` = the original percentile trim).

    Raises :class:`AudioError` (path + reason) for unreadable, empty, silent or too-short audio.
    """
    signal = load_audio(path, sample_rate)
    if not np.all(np.isfinite(signal)):
        raise AudioError(path, "audio holds NaN or infinite samples")
    if float(np.max(np.abs(signal))) < SILENCE_PEAK:
        raise AudioError(path, "silent (peak amplitude below 1e-4)")
    mode = "percentile" if trim is True else "none" if trim is False else trim
    signal = apply_trim(signal, mode, sample_rate)
    if signal.size / sample_rate < max(min_seconds, 1e-9):
        raise AudioError(path, f"too short ({signal.size / sample_rate:.3f} s of audio after trim, "
                               f"need {min_seconds:g} s)")
    return signal
