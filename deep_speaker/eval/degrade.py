"""Degraded copies of real speech (noise, low-pass, Griffin-Lim and mel-vocoder resynthesis, a low-bitrate codec,
pitch and tempo changes) for metric sanity checks and out-of-domain evaluation copies (``eval.dev``)."""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from scipy.signal import butter, sosfiltfilt

from ..atomic import atomic_write
from ..data.audio import AUDIO_EXTENSIONS, resample
from ..data.corpus import find_audio_files
from ..errors import DeepSpeakerError
from ..settings import check_choice
from .constants import DEGRADATION_KINDS as KINDS

Kind = Literal["noise", "lowpass", "griffinlim", "melvocoder", "codec", "pitch", "tempo"]
# What ``level`` means for each kind, and its default.
LEVELS = {"noise": ("SNR in dB", 20.0), "lowpass": ("cut-off in Hz", 4000.0),
          "griffinlim": ("Griffin-Lim iterations", 8.0), "melvocoder": ("mel bands", 80.0),
          "codec": ("Opus compression level", 0.97), "pitch": ("semitones", 2.0), "tempo": ("rate", 1.25)}
MEL_VOCODER_ITERATIONS = 16
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # the only rates Opus encodes; others go through 48 kHz
# A full-scale peak would clip when written back as 16-bit PCM.
MAX_PEAK = 0.99


def add_noise(signal: np.ndarray, snr_db: float, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Add white Gaussian noise so that mean(signal²) / mean(noise²) is ``snr_db`` decibels."""
    x = np.asarray(signal, dtype=np.float64)
    power = float(np.mean(x * x))
    if power <= 0.0:
        raise DeepSpeakerError("cannot set an SNR on a silent signal")
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(x.shape)
    # Scale the drawn noise to the exact target power, not just its expectation.
    noise *= np.sqrt(power / 10.0 ** (snr_db / 10.0) / np.mean(noise * noise))
    return (x + noise).astype(np.float32)


def lowpass(signal: np.ndarray, sample_rate: int, cutoff_hz: float, *, order: int = 8) -> np.ndarray:
    """Zero-phase Butterworth low-pass (sosfiltfilt), as a band-limited codec or vocoder would sound."""
    if not 0.0 < cutoff_hz < sample_rate / 2:
        raise DeepSpeakerError(f"low-pass cut-off must lie in (0, {sample_rate / 2:g}) Hz, got {cutoff_hz:g}")
    sos = butter(order, cutoff_hz, btype="lowpass", fs=sample_rate, output="sos")
    return sosfiltfilt(sos, np.asarray(signal, dtype=np.float64)).astype(np.float32)


def griffin_lim(signal: np.ndarray, n_iter: int, *, seed: int | np.random.Generator = 0,
                n_fft: int = 1024, hop_length: int = 256) -> np.ndarray:
    """Vocoder-like resynthesis: keep the STFT magnitude, re-estimate the phase with ``n_iter`` Griffin-Lim steps."""
    import librosa

    if n_iter < 1:
        raise DeepSpeakerError(f"Griffin-Lim needs at least 1 iteration, got {n_iter}")
    x = np.asarray(signal, dtype=np.float32)
    magnitude = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop_length))
    # Random initial phase (seeded): with few iterations the phasiness is the audible artefact we want.
    out = librosa.griffinlim(magnitude, n_iter=n_iter, hop_length=hop_length, n_fft=n_fft,
                             init="random", random_state=np.random.default_rng(seed), length=x.size)
    return out.astype(np.float32)


def mel_vocoder(signal: np.ndarray, sample_rate: int, n_mels: int, *, seed: int | np.random.Generator = 0,
                n_fft: int = 1024, hop_length: int = 256) -> np.ndarray:
    """Mel-vocoder-like resynthesis: STFT magnitude -> ``n_mels`` mel bands -> pseudo-inverse -> Griffin-Lim.

    Unlike :func:`griffin_lim`, which keeps the exact magnitude (and so is nearly invisible to magnitude
    features), the mel bottleneck loses spectral detail as a mel-spectrogram vocoder does; fewer bands, more loss.
    """
    import librosa

    if n_mels < 1:
        raise DeepSpeakerError(f"the mel vocoder needs at least 1 mel band, got {n_mels}")
    x = np.asarray(signal, dtype=np.float32)
    magnitude = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop_length))
    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
    # A least-squares inverse (clipped at 0) is the fast, deterministic part of librosa's mel_to_stft.
    restored = np.maximum(np.linalg.pinv(basis) @ (basis @ magnitude), 0.0)
    out = librosa.griffinlim(restored, n_iter=MEL_VOCODER_ITERATIONS, hop_length=hop_length, n_fft=n_fft,
                             init="random", random_state=np.random.default_rng(seed), length=x.size)
    return out.astype(np.float32)


def opus_codec(signal: np.ndarray, sample_rate: int, compression_level: float) -> np.ndarray:
    """Opus round trip: ``decode(encode(x))`` in an in-memory Ogg file through libsndfile (soundfile), at its
    ``compression_level`` in [0, 1] (1 = the lowest bitrate: on 16 kHz speech 0 gave about 260 kbit/s, 0.97 about
    14 kbit/s, 1 about 7 kbit/s). Deterministic: the encoder draws nothing at random."""
    if not 0.0 <= compression_level <= 1.0:
        raise DeepSpeakerError(f"the Opus compression level must lie in [0, 1], got {compression_level:g}")
    rate = sample_rate if sample_rate in OPUS_RATES else 48000
    x = resample(np.asarray(signal, dtype=np.float32), sample_rate, rate)
    buffer = io.BytesIO()
    sf.write(buffer, x, rate, format="OGG", subtype="OPUS", compression_level=compression_level)
    buffer.seek(0)
    decoded = resample(sf.read(buffer, dtype="float32")[0], rate, sample_rate)
    # The decoder drops the encoder's pre-skip, so an Opus rate keeps the length; going through 48 kHz may round it.
    return np.pad(decoded, (0, max(0, len(signal) - decoded.size)))[:len(signal)]


def pitch_shift(signal: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Pitch (and formants) times ``2 ** (semitones / 12)`` at the same duration (librosa.effects.pitch_shift)."""
    import librosa

    return librosa.effects.pitch_shift(np.asarray(signal, dtype=np.float32), sr=sample_rate,
                                       n_steps=semitones).astype(np.float32)


def tempo_change(signal: np.ndarray, rate: float) -> np.ndarray:
    """Duration divided by ``rate`` at the same pitch: a phase-vocoder time stretch (librosa.effects.time_stretch)."""
    import librosa

    if rate <= 0:
        raise DeepSpeakerError(f"the tempo rate must be positive, got {rate:g}")
    return librosa.effects.time_stretch(np.asarray(signal, dtype=np.float32), rate=rate).astype(np.float32)


def degrade_signal(signal: np.ndarray, sample_rate: int, *, kind: Kind, level: float,
                   seed: int | np.random.Generator = 0) -> np.ndarray:
    """Apply one degradation: ``noise`` (level = SNR dB), ``lowpass`` (cut-off Hz), ``griffinlim`` (iterations),
    ``melvocoder`` (mel bands), ``codec`` (Opus compression level), ``pitch`` (semitones), ``tempo`` (rate)."""
    check_choice(kind, KINDS, "degradation")
    if kind == "noise":
        return add_noise(signal, level, seed)
    if kind == "lowpass":
        return lowpass(signal, sample_rate, level)
    if kind == "griffinlim":
        return griffin_lim(signal, int(level), seed=seed)
    if kind == "codec":
        return opus_codec(signal, sample_rate, level)
    if kind == "pitch":
        return pitch_shift(signal, sample_rate, level)
    if kind == "tempo":
        return tempo_change(signal, level)
    return mel_vocoder(signal, sample_rate, int(level), seed=seed)


def degrade_folder(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, *, kind: Kind, level: float,
                   seed: int = 0) -> list[Path]:
    """Write a degraded copy of every audio file under ``src_dir`` to the same relative path under ``dst_dir``.

    Names and layout are kept, so speaker labels and pairing by name still work; files keep their sample rate
    and format. Each file gets its own seed derived from ``seed`` and its relative path (order-independent).
    """
    src, dst = Path(src_dir), Path(dst_dir)
    if not src.is_dir():
        raise DeepSpeakerError(f"no such folder: {src}")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise DeepSpeakerError(f"destination {dst} must lie outside the source folder {src}")
    files = [Path(p) for p in find_audio_files(src)[0]]  # as the corpus finds them: symlinked folders too
    if not files:
        raise DeepSpeakerError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {src}")
    written = []
    for path in files:
        rel = path.relative_to(src)
        info = sf.info(str(path))
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
        file_seed = np.random.default_rng([seed, zlib.crc32(rel.as_posix().encode())])
        out = np.stack([degrade_signal(data[:, c], sample_rate, kind=kind, level=level, seed=file_seed)
                        for c in range(data.shape[1])], axis=1)
        peak = float(np.max(np.abs(out)))
        if peak > MAX_PEAK:  # one gain for the whole file keeps the SNR and spectrum shape
            out *= MAX_PEAK / peak
        with atomic_write(dst / rel) as f:  # a killed run never leaves half a file
            sf.write(f, out, sample_rate, format=info.format, subtype=info.subtype)
        written.append(dst / rel)
    return written
