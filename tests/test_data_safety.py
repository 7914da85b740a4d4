"""Never lose a user's data in the data layer: wipes delete only what our manifest lists, audio and cache folders
never overlap, tampered manifests and hostile headers are refused with one line, corrupt arrays are named."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deep_speaker.data.audio import AudioError, load_audio
from deep_speaker.data.cache import FeatureCache, build_cache
from deep_speaker.data.sources import wipe_plan
from deep_speaker.errors import DeepSpeakerError

REPO = Path(__file__).resolve().parents[1]


def small_corpus(libri_mini: Path, root: Path, speakers: int = 2, utts: int = 1) -> list[Path]:
    """Copies (not links: some tests put the audio inside other folders) of a few test-other files."""
    copied = []
    for spk_dir in sorted((libri_mini / "test-other").iterdir())[:speakers]:
        for src in sorted(spk_dir.rglob("*.flac"))[:utts]:
            dst = root / src.relative_to(libri_mini / "test-other")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
            copied.append(dst)
    return copied


def test_rebuild_deletes_only_what_the_manifest_lists(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    files = small_corpus(libri_mini, audio)
    build_cache(audio, cache_dir, progress=False)
    mine = {"notes.txt": "my notes", "features/README.txt": "another tool's", "features/extra/keep.npy": "x"}
    for rel, text in mine.items():
        (cache_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache_dir / rel).write_text(text)
    plan = wipe_plan(cache_dir)
    assert sorted(p.name for p in plan if p.suffix == ".npy") == sorted(f.stem + ".npy" for f in files)
    assert cache_dir / "manifest.json" in plan and not any(p.name in ("notes.txt", "keep.npy") for p in plan)
    summary = build_cache(audio, cache_dir, progress=False)
    assert summary.cached == len(files) and not summary.failed
    assert {rel: (cache_dir / rel).read_text() for rel in mine} == mine


def test_a_foreign_features_folder_or_manifest_is_never_wiped(libri_mini, tmp_path):
    audio = tmp_path / "audio"
    small_corpus(libri_mini, audio, speakers=1)
    other_tool, dataset = tmp_path / "other", tmp_path / "dataset"
    (other_tool / "features").mkdir(parents=True)
    (other_tool / "features" / "x.npy").write_bytes(b"not ours")
    dataset.mkdir()
    (dataset / "manifest.json").write_text(json.dumps({"name": "my dataset", "files": 3}))
    for folder, why in ((other_tool, "no feature cache"), (dataset, "not a version-1 deep-speaker feature cache")):
        with pytest.raises(DeepSpeakerError, match=why):
            build_cache(audio, folder, progress=False)
    assert (other_tool / "features" / "x.npy").read_bytes() == b"not ours"
    assert json.loads((dataset / "manifest.json").read_text())["name"] == "my dataset"


def test_audio_inside_the_cache_folder_is_refused_before_anything_is_deleted(libri_mini, tmp_path):
    cache_dir = tmp_path / "cache"
    audio = cache_dir / "features"
    files = small_corpus(libri_mini, audio)
    (cache_dir / "manifest.json").write_text(json.dumps({"format": "deep-speaker-feature-cache",
                                                          "format_version": 1, "settings": {},
                                                          "entries": [], "failures": []}))
    with pytest.raises(DeepSpeakerError, match="overlap"):
        build_cache(audio, cache_dir, progress=False)
    with pytest.raises(DeepSpeakerError, match="overlap"):
        build_cache(tmp_path, cache_dir, update=True, progress=False)
    assert all(f.is_file() for f in files)


@pytest.mark.parametrize("field, value", [("array", "../outside.npy"), ("array", "/etc/passwd"),
                                          ("speaker", "../../evil"), ("utterance", ".hidden")])
def test_a_tampered_manifest_is_refused_in_one_line(libri_mini, tmp_path, field, value):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    small_corpus(libri_mini, audio, speakers=1)
    build_cache(audio, cache_dir, progress=False)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["entries"][0][field] = value
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DeepSpeakerError, match="points outside") as caught:
        FeatureCache(cache_dir)
    assert "\n" not in str(caught.value)
    with pytest.raises(DeepSpeakerError, match="refusing to wipe"):  # nor is what it names deleted
        build_cache(audio, cache_dir, progress=False)


def test_a_corrupt_feature_array_is_named_with_what_to_do(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    small_corpus(libri_mini, audio, speakers=1)
    build_cache(audio, cache_dir, progress=False)
    cache = FeatureCache(cache_dir)
    speaker, utterance = cache.utterances()[0]
    (cache_dir / cache.entry(speaker, utterance)["array"]).write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DeepSpeakerError, match="unreadable feature array.*cache update"):
        cache.load(speaker, utterance)


def test_a_hostile_sample_rate_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "tiny.wav"
    sf.write(path, np.zeros(16000, np.int16), 8000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:28] = (1).to_bytes(4, "little")  # the RIFF fmt chunk's sample rate: 1 Hz
    data[28:32] = (2).to_bytes(4, "little")  # byte rate, consistent with it
    path.write_bytes(bytes(data))
    assert sf.info(path).samplerate == 1  # the header really says 1 Hz
    with pytest.raises(AudioError, match="sample rate 1 Hz outside"):
        load_audio(path)


def test_speech_below_16_khz_is_accepted_with_a_warning(libri_mini, tmp_path, caplog, monkeypatch):
    source = sorted((libri_mini / "test-other").rglob("*.flac"))[0]
    signal, rate = sf.read(source)
    low = tmp_path / "narrowband.wav"
    sf.write(low, signal[::2], rate // 2)
    monkeypatch.setattr(logging.getLogger("deep_speaker"), "propagate", True)  # the CLI's handler turns it off
    with caplog.at_level(logging.WARNING, logger="deep_speaker"):
        decoded = load_audio(low)
    assert decoded.size == pytest.approx(signal.size, abs=2)
    assert any("8000 Hz" in r.getMessage() and "below the 16000 Hz" in r.getMessage() for r in caplog.records)


def test_cache_build_cli_says_what_a_rebuild_deletes(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    files = small_corpus(libri_mini, audio)
    build_cache(audio, cache_dir, progress=False)
    proc = subprocess.run([sys.executable, "-m", "deep_speaker", "cache", "build", str(audio), str(cache_dir),
                           "--no_progress"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"deletes {len(files)} feature arrays listed in its manifest and manifest.json" in proc.stderr


HOLD_LOCK = """
import sys, time
from filelock import FileLock
with FileLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize("held, shard, message", [
    (".manifest.json.lock", None, "another build writing manifest.json is running"),
    (".manifest.json.lock", (0, 2), "a full build or update of this cache is running"),
    (".manifest.shard-1-of-2.json.lock", None, "a shard build"),
])
def test_concurrent_builds_of_one_folder_are_refused_and_lose_nothing(libri_mini, tmp_path, held, shard, message):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    small_corpus(libri_mini, audio)
    build_cache(audio, cache_dir, progress=False)
    before = (cache_dir / "manifest.json").read_text()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(cache_dir / held), "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DeepSpeakerError, match=message):
            build_cache(audio, cache_dir, shard=shard, progress=False)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (cache_dir / "manifest.json").read_text() == before
    cache = FeatureCache(cache_dir)
    assert all(cache.load(s, u).shape[0] > 0 for s, u in cache.utterances())
    # The holder is gone: the same build now runs (a second shard alongside the first is fine too).
    build_cache(audio, cache_dir, update=True, progress=False)
    build_cache(audio, cache_dir, shard=(0, 2), progress=False)
    build_cache(audio, cache_dir, shard=(1, 2), progress=False)


BUILD_WITH_HOOK = """
import os, signal, sys, time
import deep_speaker.data.build as build

real = build.extract_features
def hooked(path, **kwargs):
    if sys.argv[3] == "hang":
        time.sleep(120)  # workers busy until the test kills this process (their parent)
    if sys.argv[3] == "die" and path.endswith(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)  # this worker dies mid-build
    return real(path, **kwargs)
build.extract_features = hooked
from deep_speaker.cli import run_command
from deep_speaker.cli.cache import run_build
from deep_speaker.data.config import BuildConfig
import argparse
sys.exit(run_command(lambda a: run_build(BuildConfig(sys.argv[1], sys.argv[2], False, 2, yes=True, progress=False)),
                     argparse.Namespace(verbose=False)))
"""


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_die_with_a_killed_parent(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    small_corpus(libri_mini, audio, speakers=2, utts=2)
    proc = subprocess.Popen([sys.executable, "-c", BUILD_WITH_HOOK, str(audio), str(cache_dir), "hang"], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = children(proc.pid)
        assert len(workers) >= 2, "the build started no worker processes"
        time.sleep(1.0)  # let the workers reach their initializer
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(w) for w in workers), "build workers outlived their killed parent"
    finally:
        proc.kill()
    assert not list(cache_dir.rglob("*.npy"))  # nothing was computed, so nothing half-written either


def test_a_killed_worker_is_one_line_and_update_finishes(libri_mini, tmp_path):
    audio, cache_dir = tmp_path / "audio", tmp_path / "cache"
    files = small_corpus(libri_mini, audio, speakers=2, utts=2)
    proc = subprocess.run([sys.executable, "-c", BUILD_WITH_HOOK, str(audio), str(cache_dir), "die", files[1].name],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("run 'deep-speaker cache update' to finish")
    assert "Traceback" not in proc.stderr
    summary = build_cache(audio, cache_dir, update=True, progress=False)
    assert summary.total_utterances == len(files) and not summary.failed
    cache = FeatureCache(cache_dir)
    assert all(cache.load(s, u).shape[0] > 0 for s, u in cache.utterances())


def test_same_named_speaker_folders_are_not_merged(libri_mini, tmp_path):
    flac = sorted((libri_mini / "test-other").rglob("*.flac"))[:2]
    for parent, src in zip(("studio_a", "studio_b"), flac):
        (tmp_path / "audio" / parent / "anna").mkdir(parents=True)
        shutil.copy(src, tmp_path / "audio" / parent / "anna" / src.name)
    with pytest.raises(DeepSpeakerError, match="two folders give speaker 'anna'"):
        build_cache(tmp_path / "audio", tmp_path / "cache", layout="folders", progress=False)


def test_a_folder_without_audio_is_an_error_not_an_empty_cache(tmp_path):
    (tmp_path / "audio" / "spk").mkdir(parents=True)
    (tmp_path / "audio" / "spk" / "notes.txt").write_text("no speech here")
    with pytest.raises(DeepSpeakerError, match="no audio files"):
        build_cache(tmp_path / "audio", tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / "manifest.json").exists()


def test_mp3_speech_is_cached(libri_mini, tmp_path):
    src = sorted((libri_mini / "test-other").rglob("*.flac"))[0]
    signal, rate = sf.read(src)
    (tmp_path / "audio" / "spk").mkdir(parents=True)
    sf.write(tmp_path / "audio" / "spk" / "a.mp3", signal, rate, format="MP3")
    summary = build_cache(tmp_path / "audio", tmp_path / "cache", layout="folders", progress=False)
    assert summary.cached == 1 and not summary.failed


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KB tmpfs (this needs root, as the sandbox and CI have): a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); "
                    "test_policies covers a full disk with an injected OSError")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_mid_build_is_one_line_and_loses_nothing(libri_mini, tmp_path, small_disk):
    audio, cache_dir = tmp_path / "audio", small_disk / "cache"
    files = small_corpus(libri_mini, audio, speakers=3, utts=3)
    build = [sys.executable, "-m", "deep_speaker", "cache", "build", str(audio), str(cache_dir), "--no_progress"]
    proc = subprocess.run(build, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
    assert "No space left on device" in proc.stderr
    # Nothing half-written: no temporary is left, and whatever a manifest lists is whole.
    assert not list(cache_dir.rglob("*.tmp"))
    if (cache_dir / "manifest.json").is_file():
        cache = FeatureCache(cache_dir)
        assert all(cache.load(s, u).shape[1] == 64 for s, u in cache.utterances())
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    update = subprocess.run([*build[:4], "update", *build[5:]], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert update.returncode == 0, update.stderr
    cache = FeatureCache(cache_dir)
    assert len(cache) == len(files) and not cache.failures
