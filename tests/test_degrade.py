"""Degraded copies of real speech: measured SNR, band limit, layout and determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deep_speaker.errors import DeepSpeakerError
from deep_speaker.eval.degrade import degrade_folder, degrade_signal

SPEAKER = "test-other/3005"


@pytest.fixture(scope="module")
def speaker_dir(libri_mini: Path) -> Path:
    return libri_mini / SPEAKER


def measured_snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR of ``noisy`` against ``clean``, independent of any overall gain: project out the clean part."""
    clean, noisy = clean.astype(np.float64), noisy.astype(np.float64)
    gain = np.dot(noisy, clean) / np.dot(clean, clean)
    residual = noisy - gain * clean
    return 10 * np.log10(np.sum((gain * clean) ** 2) / np.sum(residual ** 2))


@pytest.mark.parametrize("snr", [30.0, 10.0, 0.0])
def test_noise_folder_has_requested_snr_and_layout(speaker_dir: Path, tmp_path: Path, snr: float) -> None:
    written = degrade_folder(speaker_dir, tmp_path, kind="noise", level=snr, seed=3)
    sources = sorted(p.relative_to(speaker_dir) for p in speaker_dir.rglob("*.flac"))
    assert sorted(p.relative_to(tmp_path) for p in written) == sources
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left behind"
    for rel in sources[:4]:
        clean, sr_clean = sf.read(speaker_dir / rel, dtype="float64")
        noisy, sr_noisy = sf.read(tmp_path / rel, dtype="float64")
        assert sr_noisy == sr_clean and noisy.shape == clean.shape
        assert sf.info(str(tmp_path / rel)).subtype == sf.info(str(speaker_dir / rel)).subtype
        # 16-bit requantisation adds noise near -96 dB: negligible at these SNRs.
        assert measured_snr_db(clean, noisy) == pytest.approx(snr, abs=0.05)


@pytest.mark.parametrize(("kind", "level"), [("noise", 10.0), ("melvocoder", 20.0)])
def test_random_kinds_are_seeded(speaker_dir: Path, tmp_path: Path, kind: str, level: float) -> None:
    """The same seed writes the same bytes (the noise; the mel vocoder's random Griffin-Lim phases), another seed
    other samples."""
    src = sorted(speaker_dir.rglob("*.flac"))[0]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / src.name).symlink_to(src)
    runs = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        degrade_folder(tmp_path / "src", tmp_path / name, kind=kind, level=level, seed=seed)
        runs[name] = (tmp_path / name / src.name).read_bytes()
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_lowpass_removes_energy_above_cutoff(speaker_dir: Path) -> None:
    signal, sr = sf.read(sorted(speaker_dir.rglob("*.flac"))[0], dtype="float32")
    out = degrade_signal(signal, sr, kind="lowpass", level=2000.0)
    freqs = np.fft.rfftfreq(signal.size, 1 / sr)
    power_in, power_out = np.abs(np.fft.rfft(signal)) ** 2, np.abs(np.fft.rfft(out)) ** 2
    stop, passband = freqs > 3000, freqs < 1000
    assert power_out[stop].sum() / power_in[stop].sum() < 1e-4  # > 40 dB attenuation an octave past 2 kHz
    assert power_out[passband].sum() / power_in[passband].sum() == pytest.approx(1.0, abs=0.02)


def test_griffin_lim_keeps_magnitude_changes_phase(speaker_dir: Path) -> None:
    import librosa

    signal, sr = sf.read(sorted(speaker_dir.rglob("*.flac"))[0], dtype="float32")
    signal = signal[: 2 * sr]
    out = degrade_signal(signal, sr, kind="griffinlim", level=16, seed=0)
    assert out.shape == signal.shape and np.all(np.isfinite(out))
    mag_in = np.abs(librosa.stft(signal, n_fft=1024, hop_length=256))
    mag_out = np.abs(librosa.stft(out, n_fft=1024, hop_length=256))
    convergence = np.linalg.norm(mag_in - mag_out) / np.linalg.norm(mag_in)
    waveform_corr = np.corrcoef(signal, out)[0, 1]
    assert convergence < 0.5  # the spectrogram is roughly kept
    assert abs(waveform_corr) < 0.5  # but the waveform (phase) is not


def test_mel_vocoder_loses_more_spectral_detail_with_fewer_bands(speaker_dir: Path) -> None:
    import librosa

    signal, sr = sf.read(sorted(speaker_dir.rglob("*.flac"))[0], dtype="float32")
    signal = signal[: 2 * sr]
    mag_in = np.abs(librosa.stft(signal, n_fft=512, hop_length=128))

    def convergence(n_mels: int) -> float:
        out = degrade_signal(signal, sr, kind="melvocoder", level=n_mels, seed=0)
        assert out.shape == signal.shape and np.all(np.isfinite(out))
        mag_out = np.abs(librosa.stft(out, n_fft=512, hop_length=128))
        return float(np.linalg.norm(mag_in - mag_out) / np.linalg.norm(mag_in))

    coarse, fine = convergence(16), convergence(128)
    assert fine < coarse < 1.0


def test_bad_arguments_are_user_errors(speaker_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DeepSpeakerError, match="cut-off"):
        degrade_signal(np.ones(100, np.float32), 16000, kind="lowpass", level=9000.0)
    with pytest.raises(DeepSpeakerError, match="unknown degradation"):
        degrade_signal(np.ones(100, np.float32), 16000, kind="reverb", level=1.0)
    with pytest.raises(DeepSpeakerError, match="outside"):
        degrade_folder(speaker_dir, speaker_dir / "noisy", kind="noise", level=10.0)
    with pytest.raises(DeepSpeakerError, match="no audio"):
        degrade_folder(tmp_path, tmp_path.parent / "empty-out", kind="noise", level=10.0)


def f0_track(signal: np.ndarray, sr: int) -> np.ndarray:
    """pYIN f0 per frame (NaN where unvoiced) of a speech signal."""
    import librosa

    return librosa.pyin(signal, fmin=60, fmax=500, sr=sr)[0]


def test_pitch_shift_moves_the_measured_f0_by_the_semitone_ratio(speaker_dir: Path) -> None:
    signal, sr = sf.read(sorted(speaker_dir.rglob("*.flac"))[0], dtype="float32")
    signal = signal[sr: 4 * sr]  # 3 s of voiced speech (the file opens with a pause)
    out = degrade_signal(signal, sr, kind="pitch", level=3.0)
    assert out.shape == signal.shape  # same duration
    before, after = f0_track(signal, sr), f0_track(out, sr)
    voiced = ~np.isnan(before) & ~np.isnan(after)
    assert voiced.sum() > 30
    # frame by frame (the timing is kept): 2^(3/12) = 1.189, within a quarter semitone
    assert np.median(after[voiced] / before[voiced]) == pytest.approx(2 ** (3 / 12), rel=0.015)


def test_tempo_changes_the_duration_by_the_rate_not_the_spectrum(speaker_dir: Path) -> None:
    signal, sr = sf.read(sorted(speaker_dir.rglob("*.flac"))[0], dtype="float32")
    for rate in (1.25, 0.8):
        out = degrade_signal(signal, sr, kind="tempo", level=rate)
        assert out.size / signal.size == pytest.approx(1 / rate, abs=1e-3)
    # the long-term spectrum (where the energy sits) is kept, unlike a speed change: the spectral centroids agree

    def centroid(x: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(x)) ** 2
        return float(np.sum(np.fft.rfftfreq(x.size, 1 / sr) * power) / np.sum(power))

    assert centroid(out) == pytest.approx(centroid(signal), rel=0.05)  # a 3-semitone shift moves it 20 %
    with pytest.raises(DeepSpeakerError, match="positive"):
        degrade_signal(signal, sr, kind="tempo", level=0.0)


def test_codec_is_deterministic_and_bounded_in_snr(speaker_dir: Path, tmp_path: Path) -> None:
    signal, sr = sf.read(sorted(speaker_dir.rglob("*.flac"))[0], dtype="float32")
    low, high = (degrade_signal(signal, sr, kind="codec", level=level) for level in (1.0, 0.5))
    np.testing.assert_array_equal(low, degrade_signal(signal, sr, kind="codec", level=1.0))
    assert low.shape == signal.shape and high.shape == signal.shape
    snr_low, snr_high = measured_snr_db(signal, low), measured_snr_db(signal, high)
    # a lossy codec: audible damage, more of it at the lower bitrate, yet still the same speech
    assert 3.0 < snr_low < snr_high < 30.0
    # the encoded file itself: a higher compression level writes fewer bytes (through soundfile directly)
    sizes = []
    for level in (1.0, 0.5):
        sf.write(tmp_path / f"{level}.ogg", signal, sr, format="OGG", subtype="OPUS", compression_level=level)
        sizes.append((tmp_path / f"{level}.ogg").stat().st_size)
    assert sizes[0] < sizes[1] / 4
    with pytest.raises(DeepSpeakerError, match=r"\[0, 1\]"):
        degrade_signal(signal, sr, kind="codec", level=2.0)


def test_new_kinds_write_folders_in_the_same_layout(speaker_dir: Path, tmp_path: Path) -> None:
    one = sorted(speaker_dir.rglob("*.flac"))[0]
    (tmp_path / "src" / "3005").mkdir(parents=True)
    (tmp_path / "src" / "3005" / one.name).symlink_to(one)
    for kind, level in (("codec", 0.97), ("pitch", 2.0), ("tempo", 1.25)):
        runs = [degrade_folder(tmp_path / "src", tmp_path / f"{kind}{k}", kind=kind, level=level) for k in (0, 1)]
        assert [p.relative_to(tmp_path / f"{kind}0") for p in runs[0]] == [Path("3005") / one.name]
        # deterministic run to run, written in the source's format
        assert runs[0][0].read_bytes() == runs[1][0].read_bytes()
        assert sf.info(str(runs[0][0])).subtype == sf.info(str(one)).subtype
