"""Paired multi-resolution STFT distance (docs metrics.md), as Parallel WaveGAN's loss (Yamamoto et al. 2020).

STFTs are Parallel WaveGAN's: periodic Hann window of ``win`` samples centred in ``fft``, centred frames
with reflect padding (torch.stft's defaults). Magnitudes are ``sqrt(max(|S|², 1e-7))``, the same floor as
Parallel WaveGAN, so silence gives a finite log (log-magnitude floor ≈ -8.06) and the numbers compare
with its losses. Resolutions are in samples, as Parallel WaveGAN defines them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import librosa
import numpy as np

from ..data.audio import AUDIO_EXTENSIONS
from ..errors import DeepSpeakerError

# (fft_size, win_length, hop_length): Parallel WaveGAN's defaults.
PWG_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((1024, 600, 120), (2048, 1200, 240), (512, 240, 50))
POWER_FLOOR = 1e-7


def stft_magnitude(signal: np.ndarray, *, fft_size: int, win_length: int, hop_length: int) -> np.ndarray:
    """``sqrt(max(|STFT|², 1e-7))`` [frames, bins], centred reflect-padded frames, Hann window, float64."""
    spec = librosa.stft(np.asarray(signal, dtype=np.float64), n_fft=fft_size, hop_length=hop_length,
                        win_length=win_length, window="hann", center=True, pad_mode="reflect")
    return np.sqrt(np.maximum(spec.real ** 2 + spec.imag ** 2, POWER_FLOOR)).T


def mr_stft_distance(generated: Any, reference: Any, sample_rate: int,
                     *, resolutions: tuple[tuple[int, int, int], ...] = PWG_RESOLUTIONS) -> dict[str, Any]:
    """SC ``‖|S(x)|-|S(x̂)|‖_F / ‖|S(x)|‖_F`` and log-magnitude ``mean |log|S(x)| - log|S(x̂)||``, averaged over resolutions.

    ``reference`` is x, ``generated`` x̂; both are trimmed to the shorter length.
    """
    gen = np.asarray(generated, dtype=np.float64).ravel()
    ref = np.asarray(reference, dtype=np.float64).ravel()
    n = min(gen.size, ref.size)
    shortest = max(fft for fft, _, _ in resolutions) // 2 + 1
    if n < shortest:
        raise DeepSpeakerError(f"signals of {n} samples are too short for an FFT of "
                               f"{max(fft for fft, _, _ in resolutions)} (need at least {shortest})")
    if not (np.all(np.isfinite(gen[:n])) and np.all(np.isfinite(ref[:n]))):
        raise DeepSpeakerError("signals hold NaN or infinite samples")
    per_resolution = []
    for fft_size, win_length, hop_length in resolutions:
        mag_gen = stft_magnitude(gen[:n], fft_size=fft_size, win_length=win_length, hop_length=hop_length)
        mag_ref = stft_magnitude(ref[:n], fft_size=fft_size, win_length=win_length, hop_length=hop_length)
        per_resolution.append({
            "fft_size": fft_size, "win_length": win_length, "hop_length": hop_length,
            "spectral_convergence": float(np.linalg.norm(mag_ref - mag_gen) / np.linalg.norm(mag_ref)),
            "log_magnitude": float(np.mean(np.abs(np.log(mag_ref) - np.log(mag_gen)))),
        })
    return {
        "spectral_convergence": float(np.mean([r["spectral_convergence"] for r in per_resolution])),
        "log_magnitude": float(np.mean([r["log_magnitude"] for r in per_resolution])),
        "per_resolution": per_resolution,
        "samples_compared": n,
        "samples_trimmed": max(gen.size, ref.size) - n,
        "sample_rate": sample_rate,
    }


class PairedFiles(NamedTuple):
    """Files of two folders paired by name (stem, so ``a.wav`` pairs with ``a.flac``), and the unpaired ones."""

    pairs: list[tuple[Path, Path]]
    only_generated: list[Path]
    only_reference: list[Path]


def _audio_by_stem(folder: str | os.PathLike) -> dict[str, Path]:
    root = Path(folder)
    if not root.is_dir():
        raise DeepSpeakerError(f"not a folder: {root}")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
            if path.stem in found:
                raise DeepSpeakerError(f"two files named {path.stem!r} in {root}: {found[path.stem]} and {path}")
            found[path.stem] = path
    return found


def paired_files(gen_dir: str | os.PathLike, ref_dir: str | os.PathLike) -> PairedFiles:
    """Pair audio files of ``gen_dir`` and ``ref_dir`` (searched recursively) by file name without extension."""
    gen, ref = _audio_by_stem(gen_dir), _audio_by_stem(ref_dir)
    common = sorted(gen.keys() & ref.keys())
    if not common:
        raise DeepSpeakerError(f"no audio file names in common between {gen_dir} and {ref_dir}")
    return PairedFiles([(gen[s], ref[s]) for s in common], [gen[s] for s in sorted(gen.keys() - ref.keys())],
                       [ref[s] for s in sorted(ref.keys() - gen.keys())])
