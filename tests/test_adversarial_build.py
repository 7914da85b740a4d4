"""The feature cache and sharded store builds under attack (issue 32): symbolic links into other folders, schedulers
that are malformed or down, file names that are not UTF-8 or hold a newline, every input failing, a full disk and
a killed augmentation. Each case checks the exit code, the one line a person reads, and that nothing outside the
target folder changed (files, sizes and hashes of the other folder compared before and after)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deep_speaker.cli import main
from deep_speaker.data import cluster
from deep_speaker.data.sources import augment_features, open_features
from deep_speaker.data.store import PENDING
from deep_speaker.errors import DeepSpeakerError, Failure, failures_message

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "samples" / "librispeech" / "test-other"
FORMATS = ("files", "sharded")


@pytest.fixture
def audio(tmp_path) -> Path:
    """Four real utterances of two LibriSpeech speakers (speaker/chapter/speaker-chapter-n.flac), copied."""
    root = tmp_path / "audio"
    for speaker in sorted(SPEECH.iterdir())[:2]:
        for src in sorted(speaker.rglob("*.flac"))[:2]:
            dst = root / src.relative_to(SPEECH)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    return root


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry below ``folder`` (links not followed): a file's size and SHA-256, a link's target, a folder."""
    found: dict[str, tuple] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir",)
            else:
                found[rel] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def cli(capsys, *args: str) -> tuple[int, list[str], list[str]]:
    """The command run in this process: its exit code and its stdout and stderr lines."""
    capsys.readouterr()
    code = main([*args])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err.splitlines()


def build(capsys, audio: Path, target: Path, fmt: str, *more: str) -> tuple[int, list[str], list[str]]:
    return cli(capsys, "cache", "build", str(audio), str(target), "--format", fmt, "--yes", "--no_progress", *more)


def command(*args: str, env_code: str = "") -> subprocess.CompletedProcess:
    """``python -m deep_speaker ARGS`` in a fresh process (or ``env_code``, Python run first, then the CLI)."""
    code = f"import sys\n{env_code}\nfrom deep_speaker.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


# ----- wipes and rebuilds touch only what this cache wrote -----

def test_a_store_whose_shards_folder_links_to_another_store_is_refused_before_anything_is_deleted(
        audio, tmp_path, capsys):
    mine, other = tmp_path / "mine", tmp_path / "other"
    for store in (mine, other):
        assert build(capsys, audio, store, "sharded")[0] == 0
    shutil.rmtree(mine / "shards")
    (mine / "shards").symlink_to(other / "shards")
    before, mine_before = snapshot(other), snapshot(mine)
    for args in (("build", "--format", "sharded", "--yes"), ("update",)):
        code, _, err = cli(capsys, "cache", args[0], str(audio), str(mine), *args[1:], "--no_progress")
        assert code == 2 and len(err) == 1, err
        assert f"{mine / 'shards'} is a symbolic link; refusing to delete or write through it" in err[0]
    code, _, err = cli(capsys, "cache", "convert", str(other), str(mine), "--yes", "--no_progress")
    assert code == 2 and len(err) == 1 and "is a symbolic link" in err[0], err
    with pytest.raises(DeepSpeakerError, match="is a symbolic link"):
        augment_features(mine, "noise", 1, progress=False)
    assert snapshot(other) == before and without_scan_record(snapshot(mine)) == mine_before


def without_scan_record(listing: dict[str, tuple]) -> dict[str, tuple]:
    """A store's snapshot but for the corpus scan an update records (in the store's own folder) before its lock."""
    return {k: v for k, v in listing.items() if k != "corpus-scan.arrow"}


@pytest.mark.parametrize("linked", ["features", "features/1688"])
def test_a_cache_whose_features_folder_links_elsewhere_is_refused_before_anything_is_deleted(
        audio, tmp_path, capsys, linked):
    mine, other = tmp_path / "mine", tmp_path / "other"
    for cache in (mine, other):
        assert build(capsys, audio, cache, "files")[0] == 0
    shutil.rmtree(mine / linked)
    (mine / linked).symlink_to(other / linked)
    before, mine_before = snapshot(other), snapshot(mine)
    for args in (("build", "--yes"), ("update",)):
        code, _, err = cli(capsys, "cache", args[0], str(audio), str(mine), *args[1:], "--no_progress")
        assert code == 2 and len(err) == 1, err
        assert f"{mine / linked} is a symbolic link; refusing to delete or write through it" in err[0]
    with pytest.raises(DeepSpeakerError, match="is a symbolic link"):
        augment_features(mine, "noise", 1, progress=False)
    assert snapshot(other) == before and snapshot(mine) == mine_before


def test_a_rebuild_deletes_only_the_shards_its_listing_names(audio, tmp_path, capsys):
    store = tmp_path / "store"
    assert build(capsys, audio, store, "sharded", "--shard_size", "2")[0] == 0
    listed = {p.name for p in (store / "shards").iterdir()}
    # Shard-named files the listing does not name (a copy from elsewhere), and a temporary that is not one of ours.
    strangers = {"g000007-0123456789abcdef.npy": b"someone else's frames", "g000007-0123456789abcdef.arrow": b"idx",
                 ".notes.tmp": b"an editor's swap file"}
    for name, data in strangers.items():
        (store / "shards" / name).write_bytes(data)
    ours = store / "shards" / ".g000001-0000000000000000.npy.abc123.tmp"  # what a killed write of ours leaves
    ours.write_bytes(b"half a shard")
    code, out, _ = build(capsys, audio, store, "sharded", "--shard_size", "2")
    assert code == 0 and "4 files cached" in out[-1]
    assert {n: (store / "shards" / n).read_bytes() for n in strangers} == strangers
    assert not ours.exists()
    assert listed <= {p.name for p in (store / "shards").iterdir()}  # the same work gives the same shard names


# ----- every check that can refuse runs before anything is deleted -----

def test_a_malformed_scheduler_address_is_one_line_at_once(audio, tmp_path, capsys):
    store = tmp_path / "store"
    assert build(capsys, audio, store, "sharded")[0] == 0
    before = snapshot(store)
    started = time.monotonic()
    # A fresh process: Dask's "Exception ignored" lines of a half-made client would come at its exit.
    proc = command("cache", "build", str(audio), str(store), "--format", "sharded", "--yes", "--no_progress",
                   "--scheduler", "not a url")
    assert time.monotonic() - started < 30  # was ~40 s (Dask's timeouts) before the address was checked
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ["deep-speaker: error: --scheduler takes a Dask scheduler's address, "
                                        "tcp://HOST:PORT (got 'not a url')"]
    assert snapshot(store) == before
    for address in ("tcp://host", "tcp://host:99999", "http://host:8786", "inproc://x", ""):
        with pytest.raises(DeepSpeakerError, match="--scheduler takes"):
            cluster.check_scheduler(address)
    assert cluster.check_scheduler("tcp://10.0.0.1:8786") and cluster.check_scheduler("[::1]:8786")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_wipes_nothing(audio, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "1s")
    store = tmp_path / "store"
    assert build(capsys, audio, store, "sharded", "--augment", "noise", "--shard_size", "2")[0] == 0
    before = snapshot(store)
    address = f"tcp://127.0.0.1:{closed_port()}"
    for args in (("build", "--yes"), ("update",)):
        code, _, err = cli(capsys, "cache", args[0], str(audio), str(store), *args[1:], "--no_progress",
                           "--scheduler", address)
        assert code == 2 and len(err) == 1, err
        assert f"cannot reach the Dask scheduler at {address}" in err[0]
    with pytest.raises(DeepSpeakerError, match="cannot reach the Dask scheduler"):
        augment_features(store, "noise", 1, progress=False, scheduler=address)  # its old copies are kept
    assert without_scan_record(snapshot(store)) == before


# ----- exit codes: no input reaches exit 3 -----

@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_name_that_is_not_utf8_is_one_failure(audio, tmp_path, capsys, fmt):
    speech = next(audio.rglob("*.flac"))
    odd = os.fsencode(audio) + b"/\xff/7777/1/7777-1-0000.flac"  # a folder name of Latin-1 bytes
    os.makedirs(os.path.dirname(odd))
    shutil.copy(speech, odd)
    shown = f"{audio}/\\xff/7777/1/7777-1-0000.flac: its path is not valid UTF-8"
    before = snapshot(audio)
    for verb in ("build", "update"):
        code, out, err = cli(capsys, "cache", verb, str(audio), str(tmp_path / "cache"), "--format", fmt,
                             "--no_progress", *(["--yes"] if verb == "build" else []))
        assert code == 1 and not err, err
        assert len(out) == 2 and out[0].startswith(shown), out  # one failure line, then the summary
        assert "4 utterances" in out[1]
    cache = open_features(tmp_path / "cache")
    assert len(cache) == 4 and [str(f) for f in cache.failures] == [out[0]]
    assert snapshot(audio) == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_newline_in_a_file_name_keeps_its_failure_one_line(audio, tmp_path, capsys, fmt):
    bad = audio / "two\nlines" / "7777" / "1" / "7777-1-0000.flac"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not audio")
    code, out, _ = build(capsys, audio, tmp_path / "cache", fmt)
    assert code == 1 and len(out) == 2, out  # the failure's line, then the summary: the newline did not split it
    assert out[0].startswith(f"{audio}/two\\nlines/7777/1/7777-1-0000.flac: unreadable audio")
    assert str(Failure("a\nb\x1b", "why\r\u2028")) == "a\\nb\\x1b: why\\r\\u2028"
    assert "\n" not in failures_message([Failure("a\nb", "x")] * 3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_build_whose_every_input_failed_is_exit_1_with_each_path(tmp_path, capsys, fmt):
    audio = tmp_path / "audio"
    bad = [audio / "7777" / "1" / f"7777-1-000{i}.flac" for i in range(3)]
    bad[0].parent.mkdir(parents=True)
    for path in bad:
        path.write_bytes(b"not audio")
    code, out, err = build(capsys, audio, tmp_path / "cache", fmt)
    assert code == 1 and not err, err
    assert [line.split(": ")[0] for line in out[:-1]] == [str(p) for p in bad]
    assert all("unreadable audio" in line for line in out[:-1]) and "3 failed; 0 utterances" in out[-1]
    assert len(open_features(tmp_path / "cache")) == 0  # the store reads back, empty, not as tampered


def small_disk(folder: Path, size: str = "64k") -> bool:
    """A tmpfs of ``size`` mounted at ``folder`` (root only); False where it cannot be mounted."""
    folder.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_full_disk_is_exit_2_naming_the_file_and_the_cause(audio, tmp_path, capsys, fmt):
    disk = tmp_path / "disk"
    before = snapshot(audio)
    target = disk / "cache"
    args = ("cache", "build", str(audio), str(target), "--format", fmt, "--yes", "--no_progress")
    if small_disk(disk):
        try:
            code, out, err = cli(capsys, *args)
        finally:
            subprocess.run(["umount", str(disk)], check=True)
        cause = os.strerror(errno.ENOSPC)
    else:  # not root: a file size limit (a write past it fails with EFBIG; Python ignores SIGXFSZ)
        proc = command(*args, env_code="import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))")
        code, out, err = proc.returncode, proc.stdout.splitlines(), proc.stderr.splitlines()
        cause = os.strerror(errno.EFBIG)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"deep-speaker: error: {target}/") and err[0].endswith(f".npy: {cause}"), err
    assert not out  # no audio file is blamed for the disk
    assert snapshot(audio) == before


# ----- a killed augmentation -----

KILL_AFTER_FIRST = """
import os, signal
import deep_speaker.data.{module} as module
original = module.{function}
def {function}(*args, **kwargs):
    result = original(*args, **kwargs)
    if {condition}:
        os.kill(os.getpid(), signal.SIGKILL)  # killed right after the first copy is written
    return result
module.{function} = {function}
"""


def test_a_killed_store_augmentation_lists_no_copy_without_its_recipe(audio, tmp_path, capsys):
    store = tmp_path / "store"
    assert build(capsys, audio, store, "sharded", "--shard_size", "1")[0] == 0
    originals = open_features(store).utterances()
    patch = KILL_AFTER_FIRST.format(module="store", function="write_shard", condition="kwargs.get('augment') "
                                    "or (len(args) > 5 and args[5])")
    proc = command("cache", "build", str(audio), str(store), "--format", "sharded", "--yes", "--no_progress",
                   "--shard_size", "1", "--augment", "noise", env_code=patch)
    assert proc.returncode == -9, proc.stderr
    listing = json.loads((store / "store.json").read_text())
    assert "augment" not in listing and not any(s.get("augment") for s in listing["shards"])
    assert open_features(store).utterances() == originals  # the originals, and no copy without its recipe
    written = [n for n in listing[PENDING] if (store / "shards" / f"{n}.npy").exists()]
    assert len(written) == 1 and len(listing[PENDING]) == 4  # every copy shard named before the first was written
    # The next augmentation deletes what the killed one wrote (by the names the listing kept), then lists its own.
    assert augment_features(store, "noise", 1, seed=1, progress=False, shard_size=1) == 4
    listing = json.loads((store / "store.json").read_text())
    assert PENDING not in listing and listing["augment"] == {"kinds": ["noise"], "copies": 1, "seed": 1}
    assert not (store / "shards" / f"{written[0]}.npy").exists()
    assert len(open_features(store)) == 8


def test_a_killed_cache_augmentation_lists_no_copy_and_an_update_keeps_the_recipe(audio, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert build(capsys, audio, cache, "files")[0] == 0
    patch = KILL_AFTER_FIRST.format(module="cache", function="save_array_atomic", condition="'-aug' in str(args[0])")
    proc = command("cache", "build", str(audio), str(cache), "--yes", "--no_progress", "--augment", "noise",
                   env_code=patch)
    assert proc.returncode == -9, proc.stderr
    manifest = json.loads((cache / "manifest.json").read_text())
    assert "augment" not in manifest and not any("augment" in e for e in manifest["entries"])
    # A finished augmentation, then an update: the copies it keeps stay listed with their recipe.
    assert build(capsys, audio, cache, "files", "--augment", "noise")[0] == 0
    code, out, _ = cli(capsys, "cache", "update", str(audio), str(cache), "--no_progress")
    assert code == 0 and "8 utterances" in out[-1]
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["augment"] == {"kinds": ["noise"], "copies": 1, "seed": 0}
    assert sum("augment" in e for e in manifest["entries"]) == 4
