"""Training augmentation: pure signal functions (audio path) and SpecAugment masks (feature path).

Which runs where:
- on the audio (``deep-speaker cache build ... --augment noise,reverb,speed --copies K``, written as extra cache
  entries, see :func:`deep_speaker.data.sources.augment_features`; the recipe of the copies, which copies, their
  seeds and babble picks, is here, :func:`make_copy`, and both feature formats only write them): additive noise at
  a random SNR (:func:`add_noise`; babble of other training utterances, :func:`babble`, or generated coloured
  noise, :func:`colored_noise`), reverberation with a simulated room impulse response (:func:`room_rir`,
  pyroomacoustics' image-source shoebox, or :func:`exponential_rir`, the plain exponential-decay model), a
  narrowband channel (:func:`band_limit`, resampled to a random 6.8-12 kHz and back: what a telephone line or a
  low-rate codec leaves), and speed perturbation (:func:`speed_perturb`, 0.9 / 1.1 resampling: a new
  pseudo-speaker, as in WeSpeaker and Kaldi);
- on the features, on the fly in the training batchers (``--spec-augment``): :func:`spec_augment`, time and
  frequency masks on every crop.
"""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Sequence

import numpy as np
import scipy.signal
import soxr

from ..errors import DeepSpeakerError
from .audio import SAMPLE_RATE
from .constants import AUDIO_AUGMENTATIONS
from .features import fbank_features

CHANNEL_EFFECTS = ("reverb", "noise", "band")  # in the order they apply: room, then noise at the mic, then the line
SPEEDS = (0.9, 1.0, 1.1)  # Kaldi/WeSpeaker's; 0.9 and 1.1 make new speakers (pitch and formants move)
NOISE_SNR_DB = (5.0, 20.0)  # generated coloured noise
BABBLE_SNR_DB = (13.0, 20.0)  # babble of 3-7 speakers, the MUSAN babble range of the Kaldi/WeSpeaker recipes
RT60_S = (0.2, 0.8)
BAND_RATES_HZ = (6800.0, 12000.0)  # narrowband channels of 3.4-6 kHz bandwidth (telephone: 8 kHz)


def power(signal: np.ndarray) -> float:
    """mean(x^2), in float64."""
    return float(np.mean(np.square(signal, dtype=np.float64)))


def add_noise(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """x + g n with g such that 10 log10(P(x) / P(g n)) = snr_db (n tiled or cut to the length of x)."""
    noise = np.resize(np.asarray(noise, np.float64), signal.shape)  # np.resize repeats a shorter noise
    noise_power = power(noise)
    if noise_power == 0:
        raise DeepSpeakerError("add_noise: the noise is silent (zero power)")
    gain = math.sqrt(power(signal) / (noise_power * 10 ** (snr_db / 10)))
    return (signal + gain * noise).astype(np.float32)


def colored_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1 / f^exponent (0 white, 1 pink, 2 brown), unit power."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length)
    freqs[0] = freqs[1] if length > 1 else 1.0  # no infinite DC gain
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n=length)
    return (noise / math.sqrt(max(power(noise), 1e-30))).astype(np.float32)


def babble(others: list[np.ndarray], length: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of random windows (tiled when shorter) of other speakers' speech, each at unit power first."""
    mix = np.zeros(length, np.float64)
    for other in others:
        start = int(rng.integers(0, max(1, len(other) - length + 1)))
        window = np.resize(np.asarray(other[start:start + length], np.float64), length)
        mix += window / math.sqrt(max(power(window), 1e-30))
    return mix.astype(np.float32)


def exponential_rir(rt60: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """h[0] = 1 (direct path), then Gaussian noise x exp(-3 ln(10) t / rt60): energy 60 dB down at t = rt60."""
    t = np.arange(int(rt60 * sample_rate)) / sample_rate
    rir = rng.standard_normal(len(t)) * np.exp(-3 * math.log(10) * t / rt60) * 0.1
    rir[0] = 1.0
    return rir.astype(np.float32)


def room_rir(rt60: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A shoebox room (random size 3-10 x 3-8 x 2.5-4 m) of this RT60 with a random source and microphone,
    pyroomacoustics' image-source model (absorption from the inverse Sabine formula, reflection order <= 17)."""
    import pyroomacoustics as pra

    dims = rng.uniform([3.0, 3.0, 2.5], [10.0, 8.0, 4.0])
    try:
        absorption, max_order = pra.inverse_sabine(rt60, dims)
    except ValueError:  # a large room cannot be that dry (absorption > 1); half its size can
        dims = dims / 2
        absorption, max_order = pra.inverse_sabine(rt60, dims)
    # Image sources grow as order^3: order 17 (about 0.5 s of tail) keeps one RIR near 10 ms.
    room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption), max_order=min(max_order, 17))
    source, mic = (rng.uniform(0.5, dims - 0.5) for _ in range(2))
    room.add_source(source)
    room.add_microphone(mic)
    room.compute_rir()
    return np.asarray(room.rir[0][0], np.float32)


def reverberate(signal: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """(x * h)[:len(x)] from the direct path on (the RIR's propagation delay cut), rescaled to the power of x."""
    rir = np.asarray(rir, np.float64)
    direct = int(np.argmax(np.abs(rir)))
    wet = scipy.signal.fftconvolve(signal, rir[direct:])[: len(signal)]
    return (wet * math.sqrt(power(signal) / max(power(wet), 1e-30))).astype(np.float32)


def speed_perturb(signal: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The signal played `factor` times faster (tempo and pitch): read as if at sample_rate x factor, resampled."""
    return soxr.resample(signal, sample_rate * factor, sample_rate, quality="HQ").astype(np.float32)


def band_limit(signal: np.ndarray, rate: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The signal through a channel of bandwidth rate / 2: resampled to `rate` and back (soxr HQ), same length."""
    narrow = soxr.resample(signal, sample_rate, rate, quality="HQ")
    back = soxr.resample(narrow, rate, sample_rate, quality="HQ")[: len(signal)]
    return np.pad(back, (0, len(signal) - len(back))).astype(np.float32)


def spec_augment(features: np.ndarray, rng: np.random.Generator, *, masks: int = 2, max_frames: int = 20,
                 max_bins: int = 8) -> np.ndarray:
    """A copy of [T, F, ...] features with `masks` time masks (widths 0..max_frames) and `masks` frequency masks
    (widths 0..max_bins) set to 0, the mean of the per-frame-normalised features (SpecAugment without warping)."""
    out = np.array(features, copy=True)
    frames, bins = out.shape[:2]
    for size, limit, axis in ((frames, max_frames, 0), (bins, max_bins, 1)):
        for _ in range(masks):
            width = int(rng.integers(0, min(limit, size) + 1))
            start = int(rng.integers(0, size - width + 1))
            index = [slice(None)] * out.ndim
            index[axis] = slice(start, start + width)
            out[tuple(index)] = 0.0
    return out


def check_augmentations(kinds: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"noise,reverb"`` (or a list) -> ("noise", "reverb") in canonical order; unknown names are a one-line error."""
    names = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else list(kinds)
    unknown = [k for k in names if k not in AUDIO_AUGMENTATIONS]
    if unknown or not names:
        raise DeepSpeakerError(f"unknown augmentation {', '.join(unknown) or '(none)'}; choose from "
                               f"{', '.join(AUDIO_AUGMENTATIONS)}")
    return tuple(k for k in AUDIO_AUGMENTATIONS if k in names)


def check_recipe(kinds: str | list[str] | tuple[str, ...], copies: int) -> tuple[str, ...]:
    """The kinds of an augmentation checked (:func:`check_augmentations`), and its number of copies per utterance."""
    kinds = check_augmentations(kinds)
    if copies < 1:
        raise DeepSpeakerError(f"--copies must be at least 1, got {copies}")
    return kinds


def augment_signal(signal: np.ndarray, kinds: tuple[str, ...], others: list[np.ndarray],
                   *, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, dict]:
    """One augmented copy and what was done: speed (a factor of SPEEDS, uniformly; 1.0 only when a channel effect
    is enabled too, so that no copy equals its source) when "speed" is in kinds, then a non-empty random subset
    (uniformly) of the enabled channel effects, in CHANNEL_EFFECTS order: reverberation (room RIR, RT60 in
    RT60_S), noise (babble of `others` at BABBLE_SNR_DB, or white/pink/brown noise at NOISE_SNR_DB, half the time
    each), a narrowband channel (band_limit at a rate uniform in BAND_RATES_HZ)."""
    done: dict = {}
    channel = [k for k in CHANNEL_EFFECTS if k in kinds]
    if "speed" in kinds:
        factor = float(rng.choice([f for f in SPEEDS if channel or f != 1.0]))
        if factor != 1.0:
            done["speed"] = factor
            signal = speed_perturb(signal, factor, sample_rate)
    if channel:
        # By size, then in CHANNEL_EFFECTS order: without "band" the draws are those of the recipes made before it.
        subsets = [s for size in range(1, len(channel) + 1) for s in itertools.combinations(channel, size)]
        for kind in subsets[int(rng.integers(len(subsets)))]:
            if kind == "reverb":
                done["rt60"] = round(float(rng.uniform(*RT60_S)), 3)
                signal = reverberate(signal, room_rir(done["rt60"], rng, sample_rate))
            elif kind == "band":
                rate = float(rng.uniform(*BAND_RATES_HZ))
                done["band_hz"] = round(rate / 2)
                signal = band_limit(signal, rate, sample_rate)
            elif others and rng.random() < 0.5:
                done["snr_db"], done["noise"] = round(float(rng.uniform(*BABBLE_SNR_DB)), 2), f"babble{len(others)}"
                signal = add_noise(signal, babble(others, len(signal), rng), done["snr_db"])
            else:
                exponent = int(rng.integers(0, 3))
                done["snr_db"] = round(float(rng.uniform(*NOISE_SNR_DB)), 2)
                done["noise"] = ("white", "pink", "brown")[exponent]
                signal = add_noise(signal, colored_noise(len(signal), exponent, rng), done["snr_db"])
    return signal, done


def copy_generator(speaker: str, utt: str, *, k: int, seed: int, others: int,
                   babble_speakers: int) -> tuple[np.random.Generator, list[int]]:
    """Copy k of speaker/utt: its generator, seeded by (seed, crc32 of the ids, k), and the positions among the
    ``others`` original utterances of other speakers of those its babble mixes, drawn from it first."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{speaker}/{utt}".encode()), k])
    picks = rng.choice(others, size=min(babble_speakers, others), replace=False).tolist() if others else []
    return rng, picks



def copy_draws(originals: Sequence[tuple[str, str]], blocks: dict[str, tuple[int, int]], *, speaker: str, utt: str,
               k: int, seed: int, babble_speakers: int) -> tuple[np.random.Generator, list[tuple[str, str]]]:
    """:func:`copy_generator` with the babble's utterance ids (``originals`` sorted, ``blocks[speaker]`` its rows;
    the pool is every original but the speaker's own, in order)."""
    a, b = blocks[speaker]
    rng, picks = copy_generator(speaker, utt, k=k, seed=seed, others=len(originals) - (b - a),
                                babble_speakers=babble_speakers)
    return rng, [originals[i if i < a else i + b - a] for i in picks]



def speaker_blocks(originals: Sequence[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """Each speaker's rows [first, last + 1) in sorted (speaker, utterance) ids."""
    blocks: dict[str, tuple[int, int]] = {}
    for i, (speaker, _) in enumerate(originals):
        blocks[speaker] = (blocks.get(speaker, (i, i))[0], i + 1)
    return blocks



def make_copy(signal: np.ndarray, source: dict, *, k: int, seed: int, kinds: tuple[str, ...],
              others: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Augmented copy k of a source utterance's signal: its features and entry (ids ``utt-aug<k>``, under a
    ``speaker-speed<90|110>`` pseudo-speaker when speed-perturbed; ``augment`` names the source and what was done)."""
    augmented, done = augment_signal(signal, kinds, others, rng=rng)
    speaker, utt = source["speaker"], source["utterance"]
    new_speaker = f"{speaker}-speed{round(100 * done['speed'])}" if "speed" in done else speaker
    features = fbank_features(augmented)
    return features, {**source, "speaker": new_speaker, "utterance": f"{utt}-aug{k}",
                      "frames": int(features.shape[0]), "seconds": source["seconds"] / done.get("speed", 1.0),
                      "augment": {"speaker": speaker, "utterance": utt, "copy": k, "seed": seed, **done}}
