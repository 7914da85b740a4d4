"""The feature cache and training inputs, through the original ``cli.py`` in real processes on real speech."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
from python_speech_features import fbank

from deep_speaker.data.cache import FeatureCache, build_cache
from deep_speaker.data.inputs import generate_training_inputs, load_training_inputs
from deep_speaker.errors import DeepSpeakerError

REPO = Path(__file__).resolve().parents[1]


def reference_features(path: Path) -> np.ndarray:
    """The original path: librosa.load at 16 kHz, the 95th-percentile trim, psf.fbank(nfilt=64), a per-frame loop."""
    signal, _ = librosa.load(path, sr=16000)
    energy = np.abs(signal)
    loud = np.where(energy > np.percentile(energy, 95))[0]
    energies, _ = fbank(signal[loud[0]:loud[-1]], samplerate=16000, nfilt=64)
    return np.array([(v - np.mean(v)) / max(np.std(v), 1e-12) for v in energies], dtype=np.float32)


def cli(*args: str, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    """Run the original ``python cli.py`` in a new process."""
    proc = subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


def libri_subset(libri_mini: Path, root: Path, speakers: int, utts: int, split: str = "test-other") -> list[Path]:
    """A LibriSpeech-layout tree of symlinks to the first ``utts`` files of the first ``speakers`` speakers."""
    links = []
    for spk_dir in sorted((libri_mini / split).iterdir())[:speakers]:
        for src in sorted(spk_dir.rglob("*.flac"))[:utts]:
            link = root / src.relative_to(libri_mini / split)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
            links.append(link)
    return links


def manifest(cache_dir: Path) -> dict:
    return json.loads((cache_dir / "manifest.json").read_text())


def test_original_cli_builds_cache_matching_the_reference(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    files = libri_subset(libri_mini, audio, speakers=3, utts=2)
    out = cli("--regenerate_full_cache", "--multi_threading", "--cache_output_dir", str(cache_dir),
              "--audio_dir", str(audio)).stdout
    assert f"{len(files)} files cached" in out and "0 failed" in out
    cache = FeatureCache(cache_dir)
    assert cache.speakers == sorted({f.parts[-3] for f in files})
    assert cache.utterances() == sorted((f.parts[-3], f.stem) for f in files)
    for path in files:
        spk, utt = path.parts[-3], path.stem
        ours = cache.load(spk, utt)
        ref = reference_features(path)
        assert isinstance(ours, np.memmap) and ours.dtype == np.float32 and ours.shape == ref.shape
        assert np.abs(ours - ref).max() < 1e-4
        entry = cache.entry(spk, utt)
        assert entry["frames"] == ref.shape[0] and entry["seconds"] == pytest.approx(sf.info(path).duration)
    assert cache.failures == [] and cache.settings["trim"] == "percentile"


def write_vctk_copy(files: list[Path], root: Path) -> dict[tuple[str, str], Path]:
    """Rewrite LibriSpeech files as VCTK ``wav48/pSPK/pSPK_NNN.wav`` at 48 kHz, 24-bit; every other one stereo."""
    made = {}
    for i, src in enumerate(files):
        speaker = f"p{src.parts[-3]}"
        utterance = f"{speaker}_{int(src.stem.split('-')[-1]) + 1:03d}"
        signal, sr = sf.read(src, dtype="float64")
        signal48 = librosa.resample(signal, orig_sr=sr, target_sr=48000, res_type="polyphase")
        if i % 2:  # two different channels whose average is the speech
            signal48 = np.stack([signal48 * 1.5, signal48 * 0.5], axis=1)
        path = root / "wav48" / speaker / f"{utterance}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, signal48 * 0.5, 48000, subtype="PCM_24")
        made[(speaker, utterance)] = path
    return made


def test_vctk_copy_gives_vctk_ids_and_reference_features(libri_mini, tmp_path):
    sources = libri_subset(libri_mini, tmp_path / "libri", speakers=2, utts=2)
    made = write_vctk_copy(sources, tmp_path / "VCTK-Corpus")
    assert sf.info(made[sorted(made)[1]]).channels == 2 and sf.info(made[sorted(made)[0]]).subtype == "PCM_24"
    cache_dir = tmp_path / "cache"
    cli("--regenerate_full_cache", "--workers", "2", "--cache_output_dir", str(cache_dir),
        "--audio_dir", str(tmp_path / "VCTK-Corpus"))
    cache = FeatureCache(cache_dir)
    assert cache.manifest["layout"] == "vctk"
    assert cache.utterances() == sorted(made)
    for (spk, utt), path in made.items():
        ref = reference_features(path)
        ours = cache.load(spk, utt)
        assert ours.shape == ref.shape and np.abs(ours - ref).max() < 1e-4


def write_bad_inputs(speaker_dir: Path, speech: Path) -> dict[str, str]:
    """One file per kind of bad input; returns file name -> a word its reason must contain."""
    speaker_dir.mkdir(parents=True)
    (speaker_dir / "corrupt.flac").write_bytes(b"fLaC" + os.urandom(3000))
    (speaker_dir / "empty.wav").write_bytes(b"")
    sf.write(speaker_dir / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    signal, sr = sf.read(speech, dtype="float32")
    loudest = int(np.argmax(np.abs(signal)))
    sf.write(speaker_dir / "clip.wav", signal[loudest:loudest + int(0.05 * sr)], sr)
    (speaker_dir / "folder.wav").mkdir()
    return {"corrupt.flac": "unreadable", "empty.wav": "empty", "silent.wav": "silent",
            "clip.wav": "too short", "folder.wav": "directory"}


def test_bad_inputs_are_reported_and_the_rest_cached(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    good = sorted((libri_mini / "test-other" / "1688").rglob("*.flac"))[:3]
    (audio / "alice").mkdir(parents=True)
    for src in good:
        (audio / "alice" / src.name).symlink_to(src)
    expected = write_bad_inputs(audio / "mallory", good[0])
    proc = cli("--regenerate_full_cache", "--workers", "2", "--cache_output_dir", str(cache_dir),
               "--audio_dir", str(audio), check_rc=1)
    failures = {Path(f["path"]).name: f["reason"] for f in manifest(cache_dir)["failures"]}
    assert set(failures) == set(expected)
    for name, word in expected.items():
        assert word in failures[name], (name, failures[name])
        assert f"{audio / 'mallory' / name}: {failures[name]}" in proc.stdout.splitlines()
    cache = FeatureCache(cache_dir)
    assert cache.utterances() == [("alice", src.stem) for src in good]
    assert "3 files cached" in proc.stdout and "5 failed" in proc.stdout


def test_sigkill_leaves_no_partial_array_and_update_finishes_without_redoing(libri_mini, tmp_path):
    audio, cache_dir = libri_mini / "test-other", tmp_path / "cache"
    total = len(list(audio.rglob("*.flac")))
    proc = subprocess.Popen([sys.executable, "cli.py", "--regenerate_full_cache", "--workers", "2",
                             "--cache_output_dir", str(cache_dir), "--audio_dir", str(audio)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(cache_dir.rglob("*.npy"))) < 8 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the build and its workers, as a crash would
    proc.wait()
    arrays = sorted(cache_dir.rglob("*.npy"))
    entries = {e["array"]: e for e in manifest(cache_dir)["entries"]}
    assert 0 < len(arrays) < total and len(entries) < total
    for path in arrays:  # every array on disk is whole, whether or not the manifest got to it
        features = np.load(path, allow_pickle=False)
        assert features.dtype == np.float32 and features.ndim == 2 and features.shape[1] == 64
        rel = path.relative_to(cache_dir).as_posix()
        if rel in entries:
            assert features.shape[0] == entries[rel]["frames"]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in arrays}

    out = cli("--update_cache", "--workers", "2", "--cache_output_dir", str(cache_dir), "--audio_dir", str(audio)).stdout
    cache = FeatureCache(cache_dir)
    assert len(cache) == total and cache.failures == []
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in arrays} == before
    assert f"{total - len(arrays)} files cached" in out
    assert not [p for p in cache_dir.rglob("*") if p.name.endswith(".tmp")]
    for spk, utt in cache.utterances()[::17]:
        entry = cache.entry(spk, utt)
        np.testing.assert_allclose(cache.load(spk, utt), reference_features(Path(entry["source"])), atol=1e-4)


def test_update_adds_new_and_changed_files_only(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    files = libri_subset(libri_mini, audio, speakers=1, utts=3)
    files[2].unlink()
    first = build_cache(audio, cache_dir, progress=False)
    assert (first.cached, first.skipped) == (2, 0)
    array0 = cache_dir / FeatureCache(cache_dir).entry(files[0].parts[-3], files[0].stem)["array"]
    inode0 = array0.stat().st_ino
    files[2].symlink_to(libri_mini / "test-other" / files[2].relative_to(audio))
    copy = files[1].with_name(files[1].name + ".tmpcopy")  # replace file 1 by a copy: new mtime
    copy.write_bytes(files[1].read_bytes())
    os.replace(copy, files[1])
    second = build_cache(audio, cache_dir, update=True, progress=False)
    assert (second.cached, second.skipped, second.failed) == (2, 1, [])
    assert array0.stat().st_ino == inode0 and len(FeatureCache(cache_dir)) == 3


def test_other_feature_settings_refuse_to_mix(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    libri_subset(libri_mini, audio, speakers=1, utts=1)
    build_cache(audio, cache_dir, trim="none", progress=False)
    with pytest.raises(DeepSpeakerError, match="other feature settings.*trim"):
        build_cache(audio, cache_dir, update=True, trim="percentile", progress=False)
    proc = cli("--update_cache", "--cache_output_dir", str(cache_dir), "--audio_dir", str(audio), check_rc=2)
    assert "other feature settings" in proc.stderr
    assert FeatureCache(cache_dir).settings["trim"] == "none"


def test_build_refuses_to_wipe_a_folder_that_is_not_a_cache(libri_mini, tmp_path):
    audio, precious = tmp_path / "audio", tmp_path / "home"
    libri_subset(libri_mini, audio, speakers=1, utts=1)
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(DeepSpeakerError, match="refusing to wipe"):
        build_cache(audio, precious, progress=False)
    assert (precious / "thesis.tex").read_text() == "years of work"
    with pytest.raises(DeepSpeakerError, match="no feature cache"):
        FeatureCache(precious)


def test_shards_cover_every_file_once_and_update_merges_them(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    files = libri_subset(libri_mini, audio, speakers=3, utts=2)
    counts = [build_cache(audio, cache_dir, shard=(i, 2), progress=False).cached for i in range(2)]
    assert sum(counts) == len(files) and sorted(p.name for p in cache_dir.glob("manifest*.json")) == [
        "manifest.shard-0-of-2.json", "manifest.shard-1-of-2.json"]
    assert len(FeatureCache(cache_dir)) == len(files)
    merged = build_cache(audio, cache_dir, update=True, progress=False)
    assert (merged.cached, merged.skipped) == (0, len(files))
    assert [p.name for p in cache_dir.glob("manifest*.json")] == ["manifest.json"]


def find_crop(crop: np.ndarray, arrays: list[np.ndarray]) -> tuple[int, int]:
    """(array index, start frame) where a zero-padded crop comes from."""
    length = int(np.flatnonzero(np.abs(crop).sum(axis=1))[-1]) + 1
    for i, features in enumerate(arrays):
        for start in np.flatnonzero(np.all(features == crop[0], axis=1)):
            if np.array_equal(features[start:start + length], crop[:length]):
                return i, int(start)
    raise AssertionError("crop not found in its speaker's features")


def test_training_inputs_are_crops_of_each_speaker_with_a_held_out_part(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    libri_subset(libri_mini, audio, speakers=2, utts=3)
    libri_subset(libri_mini, audio, speakers=2, utts=1, split="train-clean-100")  # one utterance each
    cli("--regenerate_full_cache", "--cache_output_dir", str(cache_dir), "--audio_dir", str(audio))
    cli("--generate_training_inputs", "--cache_output_dir", str(cache_dir))
    assert (cache_dir / "full_inputs.npz").is_file() and not (cache_dir / "full_inputs.pkl").exists()
    inputs = load_training_inputs(cache_dir / "full_inputs.pkl", crop_frames=160)
    cache = FeatureCache(cache_dir)
    assert inputs["speakers"] == cache.speakers and inputs["settings"] == cache.settings
    for part in ("train", "test"):
        x, y = inputs[f"x_{part}"], inputs[f"y_{part}"]
        assert x.dtype == np.float32 and x.shape[1:] == (160, 64, 1) and len(x) == len(y)
        assert sorted(set(y.tolist())) == list(range(len(cache.speakers)))
    total_frames = {s: sum(cache.entry(s, u)["frames"] for _, u in cache.utterances(s)) for s in cache.speakers}
    for label, speaker in enumerate(inputs["speakers"]):
        utts = [u for _, u in cache.utterances(speaker)]
        arrays = [np.asarray(cache.load(speaker, u)) for u in utts]
        train = [find_crop(c[..., 0], arrays) for c in inputs["x_train"][inputs["y_train"] == label]]
        test = [find_crop(c[..., 0], arrays) for c in inputs["x_test"][inputs["y_test"] == label]]
        # several crops per utterance, in proportion to its length
        assert len(train) + len(test) >= total_frames[speaker] // 160 - len(utts)
        if len(utts) > 1:  # held out by utterance
            assert not {i for i, _ in train} & {i for i, _ in test}
        else:  # held out from another part of the only utterance
            assert max(s + 160 for _, s in train) <= min(s for _, s in test)
    with pytest.raises(DeepSpeakerError, match="crops of 160 frames"):
        load_training_inputs(cache_dir / "full_inputs.npz", crop_frames=200)


def test_short_utterance_crop_is_zero_padded_at_the_end(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    libri_subset(libri_mini, audio, speakers=1, utts=1)
    build_cache(audio, cache_dir, progress=False)
    cache = FeatureCache(cache_dir)
    (speaker, utt), = cache.utterances()
    frames = cache.entry(speaker, utt)["frames"]
    path = generate_training_inputs(cache, tmp_path / "inputs.npz", crop_frames=frames + 40, holdout=0.0)
    inputs = load_training_inputs(path)
    assert inputs["x_train"].shape == (1, frames + 40, 64, 1) and len(inputs["x_test"]) == 0
    np.testing.assert_array_equal(inputs["x_train"][0, :frames, :, 0], cache.load(speaker, utt))
    assert not inputs["x_train"][0, frames:].any()
    with pytest.raises(DeepSpeakerError, match="not found"):
        load_training_inputs(tmp_path / "missing.pkl")


def deep_speaker_cache(*args: str) -> tuple[int, str]:
    """Run ``deep-speaker cache ARGS`` in this process (its parser and run_command); (exit code, stdout)."""
    import argparse
    import contextlib
    import io

    from deep_speaker.cli import cache as cache_command
    from deep_speaker.cli import run_command

    parser = argparse.ArgumentParser(prog="deep-speaker")
    cache_command.register(parser.add_subparsers())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            parsed = parser.parse_args(["cache", *args])
        except SystemExit as exc:  # --help
            return int(exc.code or 0), out.getvalue()
        return run_command(parsed.func, parsed), out.getvalue()


def test_cache_commands_build_update_info_inputs(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    files = libri_subset(libri_mini, audio, speakers=2, utts=2)
    assert deep_speaker_cache("build", str(audio), str(cache_dir), "--no_progress")[1].count(
        f"{len(files)} files cached") == 1
    rc, out = deep_speaker_cache("build", str(audio), str(cache_dir), "--yes", "--workers", "2", "--no_progress")
    assert rc == 0 and f"{len(files)} files cached" in out  # wiped and rebuilt, no 3 s wait with --yes
    rc, out = deep_speaker_cache("update", str(audio), str(cache_dir), "--no_progress")
    assert rc == 0 and "0 files cached" in out and f"{len(files)} skipped" in out
    rc, info = deep_speaker_cache("info", str(cache_dir))
    cache = FeatureCache(cache_dir)
    assert rc == 0 and "speakers:   2" in info and f"utterances: {len(files)}" in info
    assert f"{cache.hours:.2f} h" in info and "trim=percentile" in info and "failures:   0" in info
    rc, out = deep_speaker_cache("inputs", str(cache_dir), "--output", str(tmp_path / "x.pkl"))
    assert rc == 0 and str(tmp_path / "x.npz") in out
    assert (tmp_path / "x.npz").is_file() and not (tmp_path / "x.pkl").exists()
    for command in (["--help"], ["build", "--help"], ["update", "--help"], ["inputs", "--help"]):
        rc, out = deep_speaker_cache(*command)
        assert rc == 0 and "usage:" in out
    assert deep_speaker_cache("info", str(tmp_path))[0] == 2  # not a cache: one-line error, exit 2


def original_cli_module():
    """The root ``cli.py``, imported from its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("original_cli", REPO / "cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_original_verification_flags_dispatch_to_the_verification_module(monkeypatch, tmp_path):
    import types

    calls = []
    fake = types.ModuleType("deep_speaker.cli.verification")
    fake.unseen_speakers = lambda args: calls.append(("unseen_speakers", args.unseen_speakers, args.model)) or 0
    fake.get_embeddings = lambda args: calls.append(("get_embeddings", args.get_embeddings, args.model)) or 0
    monkeypatch.setitem(sys.modules, "deep_speaker.cli.verification", fake)
    cli_py = original_cli_module()
    assert cli_py.main(["--unseen_speakers", "p362,p363", "--model", "m.h5", "--audio_dir", str(tmp_path),
                        "--cache_output_dir", str(tmp_path)]) == 0
    assert cli_py.main(["--get_embeddings", "p225"]) == 0
    assert calls == [("unseen_speakers", "p362,p363", "m.h5"), ("get_embeddings", "p225", None)]
