"""Training augmentation on real speech: signal functions against scipy/numpy measurements, the augmented cache
build (seeded, copies split as their sources), SpecAugment masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.signal

from deep_speaker.data import augment
from deep_speaker.data.audio import SAMPLE_RATE, read_audio
from deep_speaker.data.cache import build_cache
from deep_speaker.data.sources import augment_features, open_features
from deep_speaker.errors import DeepSpeakerError


@pytest.fixture(scope="module")
def speech(libri_mini) -> list[np.ndarray]:
    return [read_audio(p) for p in sorted((libri_mini / "test-other").rglob("*.flac"))[:4]]


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    return 10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum((noisy - clean).astype(np.float64) ** 2))


@pytest.mark.parametrize("snr", [0.0, 7.5, 20.0])
def test_noise_is_added_at_the_requested_snr(speech, snr):
    rng = np.random.default_rng(0)
    for noise in (augment.babble(speech[1:], len(speech[0]), rng), augment.colored_noise(1000, 1, rng)):
        assert snr_db(speech[0], augment.add_noise(speech[0], noise, snr)) == pytest.approx(snr, abs=0.01)
    with pytest.raises(DeepSpeakerError, match="silent"):
        augment.add_noise(speech[0], np.zeros(10), snr)


@pytest.mark.parametrize("exponent", [0, 1, 2])
def test_colored_noise_has_a_one_over_f_power_spectrum(exponent):
    noise = augment.colored_noise(2 ** 16, exponent, np.random.default_rng(1))
    freqs, psd = scipy.signal.welch(noise, fs=SAMPLE_RATE, nperseg=4096)
    band = (freqs > 100) & (freqs < 6000)
    slope = np.polyfit(np.log10(freqs[band]), np.log10(psd[band]), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.15)
    assert np.mean(noise.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-4)


def schroeder_rt60(rir: np.ndarray) -> float:
    """RT60 from the -5 to -25 dB part of the Schroeder backward-integrated energy decay, extrapolated to -60 dB."""
    energy = np.cumsum((rir.astype(np.float64) ** 2)[::-1])[::-1]
    decay = 10 * np.log10(energy / energy[0])
    t = np.arange(len(rir)) / SAMPLE_RATE
    fit = (decay <= -5) & (decay >= -25)
    return -60 / np.polyfit(t[fit], decay[fit], 1)[0]


@pytest.mark.parametrize("rt60", [0.3, 0.6])
def test_impulse_responses_decay_at_their_rt60(rt60):
    rng = np.random.default_rng(2)
    assert schroeder_rt60(augment.exponential_rir(rt60, rng)) == pytest.approx(rt60, rel=0.1)
    # The image-source room is measured the same way (reflection order capped: within 35%).
    measured = np.median([schroeder_rt60(augment.room_rir(rt60, rng)) for _ in range(5)])
    assert measured == pytest.approx(rt60, rel=0.35)


def test_reverberation_is_the_convolution_from_the_direct_path_at_the_same_power(speech):
    rir = augment.room_rir(0.4, np.random.default_rng(3))
    x = speech[0][:8000]
    wet = augment.reverberate(x, rir)
    start = int(np.argmax(np.abs(rir)))
    direct = np.convolve(x.astype(np.float64), rir[start:].astype(np.float64))[: len(x)]
    np.testing.assert_allclose(wet, direct * np.sqrt(np.sum(x ** 2.0) / np.sum(direct ** 2)), atol=1e-5)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_moves_a_tone_and_the_length_by_the_factor(factor):
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = augment.speed_perturb(tone, factor)
    assert len(out) == pytest.approx(SAMPLE_RATE / factor, abs=2)
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out)), n=2 ** 18))
    assert np.argmax(spectrum) * SAMPLE_RATE / 2 ** 18 == pytest.approx(440 * factor, abs=1.0)


def band_power_db(signal: np.ndarray, lo: float, hi: float) -> float:
    freqs, psd = scipy.signal.welch(signal.astype(np.float64), fs=SAMPLE_RATE, nperseg=2048)
    return 10 * np.log10(np.sum(psd[(freqs >= lo) & (freqs < hi)]) + 1e-30)


@pytest.mark.parametrize("rate", [8000.0, 11025.0])
def test_band_limit_keeps_the_band_and_removes_what_lies_above(rate):
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    inside, above = 1000.0, rate / 2 + 1000.0
    tones = (np.sin(2 * np.pi * inside * t) + np.sin(2 * np.pi * above * t)).astype(np.float32)
    out = augment.band_limit(tones, rate)
    assert out.shape == tones.shape and out.dtype == np.float32
    assert band_power_db(out, inside - 50, inside + 50) == pytest.approx(
        band_power_db(tones, inside - 50, inside + 50), abs=0.1)
    assert band_power_db(out, above - 50, above + 50) < band_power_db(tones, above - 50, above + 50) - 60


def test_a_band_copy_of_speech_is_narrowband_at_its_recorded_bandwidth(speech):
    out, done = augment.augment_signal(speech[0], ("band",), [], rng=np.random.default_rng(6))
    assert set(done) == {"band_hz"} and augment.BAND_RATES_HZ[0] / 2 <= done["band_hz"] <= augment.BAND_RATES_HZ[1] / 2
    edge = done["band_hz"]
    assert band_power_db(out, 300, edge - 300) == pytest.approx(band_power_db(speech[0], 300, edge - 300), abs=0.2)
    assert band_power_db(out, edge + 300, 8000) < band_power_db(speech[0], edge + 300, 8000) - 40


def test_spec_augment_zeroes_bounded_bands_and_keeps_the_rest(libri_mini):
    from deep_speaker.data.features import extract_features

    features = extract_features(sorted((libri_mini / "test-other").rglob("*.flac"))[0])[:160, :, None]
    out = augment.spec_augment(features, np.random.default_rng(4), masks=2, max_frames=20, max_bins=8)
    assert out.shape == features.shape
    changed = out != features
    masked_frames = np.flatnonzero(changed.all(axis=(1, 2)) | (out == 0).all(axis=(1, 2)))
    masked_bins = np.flatnonzero((out == 0).all(axis=(0, 2)))
    assert len(masked_frames) <= 40 and len(masked_bins) <= 16
    # Every changed value is 0 and lies in a masked frame or band; everything else is untouched.
    rows, cols, _ = np.nonzero(changed)
    assert (out[changed] == 0).all() and all(r in masked_frames or c in masked_bins for r, c in zip(rows, cols))
    np.testing.assert_array_equal(out, augment.spec_augment(features, np.random.default_rng(4)))
    assert not np.array_equal(out, augment.spec_augment(features, np.random.default_rng(5)))


def test_unknown_augmentation_is_a_one_line_error():
    assert augment.check_augmentations("speed, noise") == ("noise", "speed")
    with pytest.raises(DeepSpeakerError, match="unknown augmentation echo; choose from noise, reverb, band, speed"):
        augment.check_augmentations("noise,echo")


# ----- the augmented cache build -----


@pytest.fixture(scope="module")
def audio(libri_mini, tmp_path_factory):
    root = tmp_path_factory.mktemp("aug") / "audio"
    for spk_dir in sorted((libri_mini / "test-other").iterdir())[:3]:
        for src in sorted(spk_dir.rglob("*.flac"))[:2]:
            link = root / src.relative_to(libri_mini / "test-other")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
    return root


def test_augmented_build_is_seeded_and_copies_split_as_their_sources(audio, tmp_path):
    from deep_speaker.cli import main
    from deep_speaker.train.batching import speaker_segments

    for name in ("a", "b"):
        assert main(["cache", "build", str(audio), str(tmp_path / name), "--yes", "--no_progress",
                     "--augment", "noise,reverb,band,speed", "--copies", "3", "--augment_seed", "7"]) == 0
    a, b = open_features(tmp_path / "a"), open_features(tmp_path / "b")
    copies = [key for key in a.utterances() if "augment" in a.entry(*key)]
    assert len(copies) == 6 * 3 and len(a) == 6 * 4
    for key in copies:
        np.testing.assert_array_equal(a.load(*key), b.load(*key))  # the same seed, the same copies
        info = a.entry(*key)["augment"]
        source = a.entry(info["speaker"], info["utterance"])
        expected_speaker = info["speaker"] + (f"-speed{round(100 * info['speed'])}" if "speed" in info else "")
        assert key == (expected_speaker, f"{info['utterance']}-aug{info['copy']}")
        assert {"rt60", "snr_db", "band_hz"} & set(info)  # every copy has a channel effect
        # Speed-perturbed copies are shorter or longer by the factor.
        assert a.entry(*key)["frames"] == pytest.approx(source["frames"] / info.get("speed", 1.0), rel=0.03)
        original = np.asarray(a.load(info["speaker"], info["utterance"]))
        assert not np.array_equal(np.asarray(a.load(*key))[:50], original[:50])
    assert any("speed" in a.entry(*k)["augment"] for k in copies) and any(
        "speed" not in a.entry(*k)["augment"] for k in copies)
    assert any("band_hz" in a.entry(*k)["augment"] for k in copies)
    # The originals split exactly as in a cache without copies; copies train only on their source's train part.
    plain_dir = tmp_path / "plain"
    build_cache(audio, plain_dir, progress=False)
    plain_train, plain_test = speaker_segments(open_features(plain_dir), holdout=0.5, seed=0)
    train, test = speaker_segments(a, holdout=0.5, seed=0)
    assert test == plain_test | {s: [] for s in set(train) - set(plain_test)}
    held_out = {(s, u) for s, segments in plain_test.items() for u, _, _ in segments}
    for speaker, segments in train.items():
        originals = [seg for seg in segments if "augment" not in a.entry(speaker, seg[0])]
        assert originals == plain_train.get(speaker, [])
        for utt, lo, hi in segments:
            info = a.entry(speaker, utt).get("augment")
            if info:
                assert (info["speaker"], info["utterance"]) not in held_out  # no copy of validation audio
                assert (lo, hi) == (0, a.entry(speaker, utt)["frames"])
    # A second augmentation replaces the first copies (their arrays too).
    augment_features(tmp_path / "a", "noise", 1, seed=1, progress=False)
    again = open_features(tmp_path / "a")
    assert len(again) == 12 and json.loads((tmp_path / "a" / "manifest.json").read_text())["augment"]["copies"] == 1
    assert len(list((tmp_path / "a" / "features").rglob("*.npy"))) == 12


def test_a_store_s_copies_are_the_per_file_cache_s_in_its_own_shards(audio, tmp_path, capsys):
    """The copies of a sharded store (inline and on 2 local processes) against those of the per-file cache, then a
    second augmentation replacing them, and a copy whose source is unreadable reported with path and reason."""
    import shutil

    from deep_speaker.cli import main
    from deep_speaker.data.store import SHARDS_DIR, build_store, read_listings

    build_cache(audio, tmp_path / "files", progress=False)
    assert augment_features(tmp_path / "files", "noise,reverb,speed", 2, seed=3, progress=False) == 12
    files = open_features(tmp_path / "files")
    for name, workers in (("inline", 1), ("pool", 2)):
        build_store(audio, tmp_path / name, shard_size=4, progress=False)
        originals = set((tmp_path / name / SHARDS_DIR).iterdir())
        assert augment_features(tmp_path / name, "noise,reverb,speed", 2, seed=3, progress=False, workers=workers,
                             shard_size=4) == 12
        store = open_features(tmp_path / name)
        assert store.utterances() == files.utterances() and len(store) == 18
        for key in files.utterances():
            assert {k: v for k, v in store.entry(*key).items() if k not in ("array", "offset")} == \
                {k: v for k, v in files.entry(*key).items() if k != "array"}
            np.testing.assert_array_equal(store.load(*key), files.load(*key))
        listing = read_listings(tmp_path / name)
        assert listing["augment"] == {"kinds": ["noise", "reverb", "speed"], "copies": 2, "seed": 3}
        made = [s for s in listing["shards"] if s.get("augment")]
        assert sum(s["utterances"] for s in made) == 12 and len(made) == 3  # shards of 4 copies
        assert originals <= set((tmp_path / name / SHARDS_DIR).iterdir())  # the build's shards are untouched
    # Again with another recipe: the first copies and their shard files are gone, the originals stay.
    augment_features(tmp_path / "inline", "noise", 1, seed=1, progress=False, shard_size=4)
    again = open_features(tmp_path / "inline")
    assert len(again) == 12 and read_listings(tmp_path / "inline")["augment"]["copies"] == 1
    assert len(list((tmp_path / "inline" / SHARDS_DIR).glob("*.npy"))) == 2 + 2  # 6 originals by 4, 6 copies by 4
    # Through the CLI, with one source gone bad after the build: its copy fails in one line, the others are made.
    broken = tmp_path / "broken-audio"
    shutil.copytree(audio, broken, symlinks=False)
    build_store(broken, tmp_path / "broken", progress=False)
    victim = sorted(broken.rglob("*.flac"))[0]
    victim.write_bytes(b"not audio")
    made = augment_features(tmp_path / "broken", "noise", 1, progress=False)
    failures = {f["path"]: f["reason"] for f in read_listings(tmp_path / "broken")["augment"]["failures"]}
    # The victim's own copy, and those whose babble would have mixed it in.
    assert made + len(failures) == 6 and made == len(open_features(tmp_path / "broken")) - 6
    assert failures.pop(str(victim)).startswith("copy 0: ")
    assert all(reason.startswith(f"copy 0: its babble {victim}: ") for reason in failures.values())
    assert len(open_features(tmp_path / "broken").failures) == 0  # not the build's failures: the original is cached
    capsys.readouterr()
    assert main(["cache", "build", str(audio), str(tmp_path / "cli"), "--format", "sharded", "--yes",
                 "--no_progress", "--augment", "noise", "--copies", "1"]) == 0
    assert "6 entries added" in capsys.readouterr().out and len(open_features(tmp_path / "cli")) == 12


def test_augmented_build_refuses_bad_options_in_one_line(audio, tmp_path, capsys):
    from deep_speaker.cli import main

    assert main(["cache", "build", str(audio), str(tmp_path / "c"), "--augment", "echo"]) == 2
    assert not (tmp_path / "c").exists()  # refused before the build
    assert main(["cache", "build", str(audio), str(tmp_path / "c"), "--augment", "noise", "--shard", "0/2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert any("unknown augmentation echo" in e for e in errors) and any("--augment works on the whole" in e
                                                                           for e in errors)


def test_the_main_job_augments_its_training_cache_once(audio, tmp_path):
    from deep_speaker.data.cache import build_cache
    from deep_speaker.pipeline import JobConfig, augmented

    build_cache(audio, tmp_path / "cache", progress=False)
    cfg = JobConfig(augment="noise", augment_copies=1, seed=3)
    augmented(cfg, tmp_path / "cache")
    cache = open_features(tmp_path / "cache")
    copies = sorted((tmp_path / "cache" / "features").rglob("*-aug0.npy"))
    assert len(cache) == 12 and len(copies) == 6
    assert cache.manifest["augment"] == {"kinds": ["noise"], "copies": 1, "seed": 3}
    before = [p.stat().st_mtime_ns for p in copies]
    augmented(cfg, tmp_path / "cache")  # a re-run of the job keeps the copies it made
    assert [p.stat().st_mtime_ns for p in copies] == before
