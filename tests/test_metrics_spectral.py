"""MR-STFT distance on real speech against a direct numpy STFT, and pairing by file name."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from deep_speaker.data.audio import read_audio
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.metrics import PWG_RESOLUTIONS, mr_stft_distance, paired_files


@pytest.fixture(scope="module")
def speech(libri_mini):
    return read_audio(next(iter(sorted((libri_mini / "test-other").rglob("*.flac")))), trim=False).astype(np.float64)


def numpy_stft_magnitude(x, fft_size, win_length, hop_length):
    """Direct STFT: reflect pad fft/2, periodic Hann of win centred in fft, frames every hop, rfft, floor 1e-7."""
    padded = np.pad(x, fft_size // 2, mode="reflect")
    window = np.zeros(fft_size)
    offset = (fft_size - win_length) // 2
    window[offset:offset + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    frames = [padded[s:s + fft_size] * window for s in range(0, padded.size - fft_size + 1, hop_length)]
    spec = np.fft.rfft(np.array(frames), axis=1)
    return np.sqrt(np.maximum(np.abs(spec) ** 2, 1e-7))


def test_identical_signals_give_zero(speech):
    result = mr_stft_distance(speech, speech, 16000)
    assert result["spectral_convergence"] == 0.0 and result["log_magnitude"] == 0.0
    assert len(result["per_resolution"]) == len(PWG_RESOLUTIONS)


def test_distance_grows_with_noise(speech):
    noise = np.random.default_rng(0).standard_normal(speech.size)
    power = np.mean(speech ** 2)
    results = [mr_stft_distance(speech + np.sqrt(power / 10 ** (snr / 10)) * noise, speech, 16000)
               for snr in (30, 20, 10, 0)]
    for key in ("spectral_convergence", "log_magnitude"):
        values = [r[key] for r in results]
        assert np.all(np.diff(values) > 0) and values[0] > 0, values


def test_matches_a_direct_numpy_stft(speech):
    noisy = speech + 0.01 * np.random.default_rng(1).standard_normal(speech.size)
    fft_size, win_length, hop_length = 1024, 600, 120
    ref = numpy_stft_magnitude(speech, fft_size, win_length, hop_length)
    gen = numpy_stft_magnitude(noisy, fft_size, win_length, hop_length)
    result = mr_stft_distance(noisy, speech, 16000, resolutions=((fft_size, win_length, hop_length),))
    assert result["spectral_convergence"] == pytest.approx(np.linalg.norm(ref - gen) / np.linalg.norm(ref), rel=1e-9)
    assert result["log_magnitude"] == pytest.approx(np.mean(np.abs(np.log(ref) - np.log(gen))), rel=1e-9)


def test_lengths_are_trimmed_to_the_shorter(speech):
    longer = np.concatenate([speech, np.ones(777)])
    result = mr_stft_distance(longer, speech, 16000)
    assert result["spectral_convergence"] == 0.0 and result["samples_trimmed"] == 777
    with pytest.raises(DeepSpeakerError, match="too short"):
        mr_stft_distance(speech[:100], speech[:100], 16000)


def test_paired_files(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    (ref / "spk").mkdir(parents=True)
    gen.mkdir()
    silence = np.zeros(1600, dtype=np.float32)
    for folder, names in ((gen, ["a.wav", "b.wav", "x.wav"]), (ref / "spk", ["a.flac", "b.wav", "y.wav"])):
        for name in names:
            sf.write(folder / name, silence, 16000)
    result = paired_files(gen, ref)
    assert [(g.name, r.name) for g, r in result.pairs] == [("a.wav", "a.flac"), ("b.wav", "b.wav")]
    assert [p.name for p in result.only_generated] == ["x.wav"] and [p.name for p in result.only_reference] == ["y.wav"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeepSpeakerError, match="in common"):
        paired_files(gen, tmp_path / "empty")
