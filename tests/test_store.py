"""The sharded feature store against the per-file cache on real speech: the same frames and index, read through the
same interface; bad inputs, kills, updates, job-array parts, a Dask LocalCluster (and a worker killed mid-build),
conversion, and float16 frames scored with the packaged model."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import local_cluster, sklearn_eer
from test_cache import libri_subset, reference_features, write_bad_inputs

from deep_speaker.data.cache import build_cache
from deep_speaker.data.inputs import generate_training_inputs
from deep_speaker.data.sources import FeatureSource, augment_features, convert_features, open_features
from deep_speaker.data.store import FeatureStore, build_store
from deep_speaker.errors import DeepSpeakerError

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = REPO / "samples" / "librispeech" / "test-other"
ENTRY_KEYS = ("speaker", "utterance", "source", "size", "mtime_ns", "frames", "seconds")


def command(*args: str, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "deep_speaker", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def reference(libri_mini, tmp_path_factory) -> FeatureSource:
    """The per-file cache of test-other (100 files), built by today's code: what every store must equal."""
    root = tmp_path_factory.mktemp("reference")
    build_cache(libri_mini / "test-other", root / "cache", progress=False)
    return open_features(root / "cache")


def assert_same_as(store: FeatureSource, reference: FeatureSource, dtype=np.float32, atol: float = 0.0) -> None:
    """Same ids, index fields and frames (exactly for float32) as the per-file reference."""
    assert isinstance(store, FeatureStore)
    assert store.speakers == reference.speakers and store.utterances() == reference.utterances()
    assert len(store) == len(reference) and store.settings == reference.settings
    assert store.hours == pytest.approx(reference.hours, rel=1e-12)
    for speaker in reference.speakers:
        assert store.utterances(speaker) == reference.utterances(speaker)
    for key in reference.utterances():
        assert {k: store.entry(*key)[k] for k in ENTRY_KEYS} == {k: reference.entry(*key)[k] for k in ENTRY_KEYS}
        frames = store.load(*key)
        assert frames.dtype == dtype
        if atol:
            np.testing.assert_allclose(frames.astype(np.float32), reference.load(*key), atol=atol, rtol=0)
        else:
            assert np.array_equal(frames, reference.load(*key))


def shard_snapshot(store_dir: Path) -> dict[str, bytes]:
    """Every shard file's bytes, by name."""
    return {p.name: p.read_bytes() for p in sorted((store_dir / "shards").iterdir())}


def test_store_reads_like_the_cache_and_training_inputs_are_the_same(libri_mini, reference, tmp_path):
    summary = build_store(libri_mini / "test-other", tmp_path / "store", shard_size=30, progress=False)
    assert summary.cached == 100 and not summary.failed
    store = open_features(tmp_path / "store")  # the one entry point opens either format
    assert_same_as(store, reference)
    assert len(store.shards) == 4  # 30 + 30 + 30 + 10
    listing = json.loads((tmp_path / "store" / "store.json").read_text())
    assert [s["utterances"] for s in listing["shards"]] == [30, 30, 30, 10]
    # Each shard reads with plain numpy + pyarrow as docs/STORE.md says: frames[offset:offset + frames].
    name = listing["shards"][1]["name"]
    index = pa.ipc.open_file(tmp_path / "store" / "shards" / f"{name}.arrow").read_all().to_pylist()
    frames = np.load(tmp_path / "store" / "shards" / f"{name}.npy", mmap_mode="r")
    for row in index:
        assert np.array_equal(frames[row["offset"]:row["offset"] + row["frames"]],
                              reference.load(row["speaker"], row["utterance"]))
    # Training reads the store unchanged: the same crops, labels and split as from the per-file cache.
    a = np.load(generate_training_inputs(store, tmp_path / "a.npz", crop_frames=100))
    b = np.load(generate_training_inputs(reference, tmp_path / "b.npz", crop_frames=100))
    for key in ("x_train", "y_train", "x_test", "y_test", "speakers"):
        assert np.array_equal(a[key], b[key])


@pytest.mark.slow
def test_training_from_a_store_equals_training_from_the_cache(libri_mini, reference, tmp_path):
    """Random-crop training (--cache-dir) on a store converted from the cache ends on the same weights as on the cache
    itself: the trainer opens either format."""
    from deep_speaker.data.sources import convert_features
    from deep_speaker.model.rescnn import load_model
    from deep_speaker.train import TrainConfig, train

    convert_features(reference.path, tmp_path / "store", progress=False)
    weights = []
    for name, folder in (("cache", reference.path), ("store", tmp_path / "store")):
        train(TrainConfig("softmax", tmp_path / name, cache_dir=folder, random_crops=True, steps=2, save_every=2,
                          width=0.0625, crop_frames=32, batch_size=8, verbose=0))
        weights.append(load_model(tmp_path / name / "softmax" / "last.keras").get_weights())
    for a, b in zip(*weights):
        assert np.array_equal(a, b)


def test_bad_inputs_are_reported_exit_1_and_the_rest_stored(libri_mini, tmp_path):
    audio = tmp_path / "audio"
    good = sorted((libri_mini / "test-other" / "1688").rglob("*.flac"))[:3]
    (audio / "alice").mkdir(parents=True)
    for src in good:
        (audio / "alice" / src.name).symlink_to(src)
    expected = write_bad_inputs(audio / "mallory", good[0])
    (audio / "mallory" / "dangling.flac").symlink_to(tmp_path / "gone.flac")  # a link to nothing: stat fails
    expected["dangling.flac"] = "cannot open: No such file"
    proc = command("cache", "build", str(audio), str(tmp_path / "store"), "--format", "sharded", "--workers", "2",
                   "--no_progress", check_rc=1)
    store = open_features(tmp_path / "store")
    failures = {Path(f.path).name: f.reason for f in store.failures}
    assert set(failures) == set(expected)
    for name, word in expected.items():
        assert word in failures[name], (name, failures[name])
        assert f"{audio / 'mallory' / name}: {failures[name]}" in proc.stdout.splitlines()
    assert store.utterances() == [("alice", src.stem) for src in good]
    # The per-file cache reports the same files with the same reasons (one home: compute_features).
    reference = build_cache(audio, tmp_path / "cache", progress=False)
    assert {f.path: f.reason for f in reference.failed} == {f.path: f.reason for f in store.failures}


def test_update_writes_new_shards_only_and_the_newest_entry_wins(libri_mini, tmp_path):
    audio, store_dir = tmp_path / "audio", tmp_path / "store"
    links = libri_subset(libri_mini, audio, speakers=3, utts=4)
    build_store(audio, store_dir, shard_size=5, progress=False)
    before = shard_snapshot(store_dir)
    noop = build_store(audio, store_dir, update=True, progress=False)
    assert (noop.cached, noop.skipped) == (0, 12) and shard_snapshot(store_dir) == before
    # One new file, one file whose audio changed (another utterance's bytes under its name).
    extra = sorted((libri_mini / "test-other" / "3005").rglob("*.flac"))[0]
    new = audio / extra.relative_to(libri_mini / "test-other")
    new.parent.mkdir(parents=True)
    new.symlink_to(extra)
    changed = links[1]
    donor = Path(os.readlink(links[7]))
    changed.unlink()
    shutil.copy(donor, changed)
    summary = build_store(audio, store_dir, update=True, progress=False)
    assert (summary.cached, summary.skipped) == (2, 11)
    after = shard_snapshot(store_dir)
    assert {k: after[k] for k in before} == before  # finished shards are never rewritten
    assert len(after) == len(before) + 2  # one new shard: .npy + .arrow
    store = open_features(store_dir)
    assert len(store) == 13
    speaker = changed.parts[-3]
    np.testing.assert_allclose(store.load(speaker, changed.stem), reference_features(donor), atol=1e-4)
    assert store.entry(speaker, changed.stem)["size"] == donor.stat().st_size
    np.testing.assert_allclose(store.load("3005", new.stem), reference_features(extra), atol=1e-4)


def test_an_update_from_the_recorded_scan_still_sees_added_and_rewritten_files(libri_mini, tmp_path, monkeypatch):
    from test_corpus import age_folders

    from deep_speaker.data import corpus

    monkeypatch.setattr(corpus, "RACY_NS", 0)  # the folders are aged instead (age_folders)
    walk = corpus._walk_audio
    walked: list[Path] = []
    monkeypatch.setattr(corpus, "_walk_audio", lambda folder: walked.append(folder) or walk(folder))
    audio, store_dir = tmp_path / "audio", tmp_path / "store"
    links = libri_subset(libri_mini, audio, speakers=2, utts=3)
    build_store(audio, store_dir, shard_size=5, progress=False)
    age_folders(audio)
    build_store(audio, store_dir, update=True, progress=False)  # scans in full and records the scan
    assert (store_dir / "corpus-scan.arrow").is_file() and len(walked) == 2
    added = links[0].with_name(links[0].name.replace(".flac", "0.flac"))  # a file added: its folder changed
    shutil.copy(links[4], added)
    summary = build_store(audio, store_dir, update=True, progress=False)
    assert (summary.cached, summary.skipped) == (1, 6) and len(walked) == 3
    age_folders(audio)
    build_store(audio, store_dir, update=True, progress=False)  # records the scan again
    assert len(walked) == 4
    added.write_bytes(links[5].read_bytes())  # rewritten in place: its folder is as recorded, its stat is not
    summary = build_store(audio, store_dir, update=True, progress=False)
    assert (summary.cached, summary.skipped) == (1, 6) and len(walked) == 4  # from the record, no walk
    np.testing.assert_allclose(open_features(store_dir).load(added.parts[-3], added.name[:-5]),
                               reference_features(links[5]), atol=1e-4)
    build_store(audio, store_dir, progress=False)  # a rebuild wipes the record with the rest
    assert not (store_dir / "corpus-scan.arrow").exists()


def test_sigkill_mid_build_loses_no_finished_shard_and_update_finishes(libri_mini, reference, tmp_path):
    store_dir = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "deep_speaker", "cache", "build", str(libri_mini / "test-other"),
                             str(store_dir), "--format", "sharded", "--shard_size", "7", "--no_progress"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    listed = []
    while len(listed) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
        try:
            listed = json.loads((store_dir / "store.json").read_text())["shards"]
        except (OSError, ValueError, KeyError):
            listed = []
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = open_features(store_dir)  # whatever the kill left reads as a consistent, smaller store
    assert 0 < len(partial) < len(reference)
    for key in partial.utterances():
        assert np.array_equal(partial.load(*key), reference.load(*key))
    finished = {p.name: p.stat().st_mtime_ns for p in (store_dir / "shards").glob("*.arrow")}
    # The original command line updates the store unchanged (the folder's format is kept).
    out = subprocess.run([sys.executable, "cli.py", "--update_cache", "--cache_output_dir", str(store_dir),
                          "--audio_dir", str(libri_mini / "test-other")], cwd=REPO, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    cached, skipped, recovered = map(int, re.search(r"(\d+) files cached .* (\d+) skipped .* (\d+) recovered",
                                                    out).groups())
    # Nothing listed is redone; a shard finished but not yet listed when the kill came is adopted, not redone.
    assert skipped == len(partial) and cached + recovered == len(reference) - len(partial), out
    assert {name: (store_dir / "shards" / name).stat().st_mtime_ns for name in finished} == finished
    assert not [p for p in store_dir.rglob("*") if p.name.endswith(".tmp")]
    assert_same_as(open_features(store_dir), reference)


def test_job_array_parts_merge_and_update_consolidates(libri_mini, reference, tmp_path):
    store_dir = tmp_path / "store"
    for part in range(3):  # as three jobs of an array would run them (deep-speaker cache build ... --shard i/3)
        build_store(libri_mini / "test-other", store_dir, shard=(part, 3), shard_size=20, progress=False)
    assert sorted(p.name for p in store_dir.glob("store*.json")) == [f"store.shard-{i}-of-3.json" for i in range(3)]
    assert_same_as(open_features(store_dir), reference)
    out = command("cache", "update", str(libri_mini / "test-other"), str(store_dir), "--no_progress").stdout
    assert "0 files cached" in out and "100 skipped" in out
    assert [p.name for p in store_dir.glob("store*.json")] == ["store.json"]
    assert_same_as(open_features(store_dir), reference)


def test_dask_cluster_build_equals_one_process_and_survives_a_killed_worker(libri_mini, tmp_path):
    from distributed import Client

    audio = tmp_path / "audio"
    libri_subset(libri_mini, audio, speakers=5, utts=8)
    reference = open_features(build_cache(audio, tmp_path / "cache", progress=False).cache_dir)
    build_store(audio, tmp_path / "one", shard_size=4, progress=False)
    expected = shard_snapshot(tmp_path / "one")
    with local_cluster() as cluster, Client(cluster) as client:
        proc = command("cache", "build", str(audio), str(tmp_path / "dask"), "--format", "sharded", "--shard_size",
                       "4", "--scheduler", cluster.scheduler_address, "--no_progress")
        assert "40 files cached" in proc.stdout
        assert shard_snapshot(tmp_path / "dask") == expected  # byte for byte the single-process store
        assert_same_as(open_features(tmp_path / "dask"), reference)
        # Augmented copies made on the cluster: the shards of those made in one process.
        for store, scheduler in (("one", None), ("dask", cluster.scheduler_address)):
            assert augment_features(tmp_path / store, "noise,speed", 1, seed=2, progress=False, shard_size=16,
                                 scheduler=scheduler) == 40
        assert shard_snapshot(tmp_path / "dask") == shard_snapshot(tmp_path / "one") != expected

        pids = list(client.run(os.getpid).values())
        done: dict = {}
        build = threading.Thread(target=lambda: done.update(summary=build_store(
            audio, tmp_path / "killed", shard_size=4, progress=False, scheduler=cluster.scheduler_address)))
        build.start()
        deadline = time.monotonic() + 120
        while not list((tmp_path / "killed" / "shards").glob("*.arrow")) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(pids[0], signal.SIGKILL)  # a worker dies mid-build, its task running
        build.join(timeout=240)
        assert not build.is_alive() and done["summary"].cached == 40
    assert shard_snapshot(tmp_path / "killed") == expected


def test_convert_then_float16_keeps_the_packaged_models_eer(tmp_path):
    from deep_speaker.encoders.deepspeaker import Embedder
    from deep_speaker.eval.verification import embed_cache

    build_cache(HELD_OUT, tmp_path / "cache", progress=False)
    cache = open_features(tmp_path / "cache")
    convert_features(tmp_path / "cache", tmp_path / "f32", shard_size=40, progress=False)
    command("cache", "convert", str(tmp_path / "cache"), str(tmp_path / "f16"), "--float16", "--yes",
            "--no_progress")
    assert_same_as(open_features(tmp_path / "f32"), cache)
    # float16 has an 11-bit significand: features of magnitude < 8 round by at most 2^-8 (plus the subnormals).
    assert_same_as(open_features(tmp_path / "f16"), cache, dtype=np.float16, atol=2 ** -8)
    size = {d: sum(p.stat().st_size for p in (tmp_path / d / "shards").glob("*.npy")) for d in ("f32", "f16")}
    assert size["f16"] < 0.51 * size["f32"]

    embedder = Embedder()
    reports = {}
    for name in ("cache", "f16"):  # (the float32 store's frames are the cache's, bit for bit: see above)
        labelled = embed_cache(embedder, open_features(tmp_path / name))
        emb, speakers = labelled.embeddings.astype(np.float64), np.array(labelled.speakers)
        rows, cols = np.triu_indices(len(emb), 1)
        scores = np.einsum("ij,ij->i", emb[rows], emb[cols])
        labels = (speakers[rows] == speakers[cols]).astype(int)
        reports[name] = (emb, sklearn_eer(scores, labels))  # independent EER: scikit-learn's ROC
    # float16 frames move the unit-length embeddings by at most 2e-4 (measured 2.0e-5) and the EER over 4950
    # trials by less than 0.1 point (measured: the same 2.40 %).
    assert np.abs(reports["f16"][0] - reports["cache"][0]).max() < 2e-4
    assert abs(reports["f16"][1] - reports["cache"][1]) < 1e-3


def test_a_tampered_or_damaged_store_is_one_line(libri_mini, tmp_path):
    audio = tmp_path / "audio"
    libri_subset(libri_mini, audio, speakers=2, utts=2)
    build_store(audio, tmp_path / "store", shard_size=2, progress=False)
    listing_path = tmp_path / "store" / "store.json"
    listing = json.loads(listing_path.read_text())
    listing["shards"][0]["name"] = "../../etc/passwd"
    listing_path.write_text(json.dumps(listing))
    with pytest.raises(DeepSpeakerError, match="tampered store listing"):
        open_features(tmp_path / "store")
    with pytest.raises(DeepSpeakerError, match="tampered"):  # nor is a rebuild led by it
        build_store(audio, tmp_path / "store", progress=False)
    shutil.rmtree(tmp_path / "store")
    build_store(audio, tmp_path / "store", shard_size=2, progress=False)
    store = open_features(tmp_path / "store")
    frames = tmp_path / "store" / "shards" / f"{store.shards[0]}.npy"
    frames.write_bytes(b"\x93NUMPY garbage")
    key = next(k for k in store.utterances() if store.entry(*k)["array"] == f"shards/{store.shards[0]}.npy")
    with pytest.raises(DeepSpeakerError, match="unreadable shard.*cache update"):
        open_features(tmp_path / "store").load(*key)
    with pytest.raises(DeepSpeakerError, match="no utterance"):
        store.entry("nobody", "nothing")
    # A shard whose file is gone is dropped from the listing by the next update and its utterances computed again.
    frames.unlink()
    summary = build_store(audio, tmp_path / "store", update=True, progress=False)
    assert summary.cached == 2 and len(open_features(tmp_path / "store")) == 4
    proc = command("cache", "build", str(audio), str(tmp_path / "store"), "--float16", "--format", "files",
                   check_rc=2)
    assert "needs a sharded store" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_convert_refuses_its_own_folder_and_a_missing_cache(tmp_path):
    with pytest.raises(DeepSpeakerError, match="no feature cache"):
        convert_features(tmp_path / "none", tmp_path / "out")


def test_unchanged_matches_a_plain_loop_over_the_index():
    """The Arrow join that decides what an update skips, against the per-entry comparison it replaces."""
    from types import SimpleNamespace

    import pyarrow as pa

    from deep_speaker.data.corpus import Utterance
    from deep_speaker.data.store import unchanged

    index = pa.table({"speaker": ["a", "a", "b", "b", "c"], "utterance": ["1", "2", "1", "2", "9"],
                      "source": ["/x/a1", "/x/a2", "/x/b1", "/old/b2", "/x/c9"],
                      "size": pa.array([10, 20, 30, 40, 50], pa.int64()),
                      "mtime_ns": pa.array([1, 2, 3, 4, 5], pa.int64()),
                      "shard": pa.array([0, 1, 1, 0, 1], pa.int32())})
    utts = [Utterance("a", "1", "/x/a1"), Utterance("a", "2", "/x/a2"), Utterance("b", "1", "/x/b1"),
            Utterance("b", "2", "/x/b2"), Utterance("d", "1", "/x/d1"), Utterance("a", "3", "/x/a3")]
    stats = {"/x/a1": SimpleNamespace(st_size=10, st_mtime_ns=1),  # same
             "/x/a2": SimpleNamespace(st_size=21, st_mtime_ns=2),  # size changed
             "/x/b1": SimpleNamespace(st_size=30, st_mtime_ns=3),  # same, in the adopted shard
             "/x/b2": SimpleNamespace(st_size=40, st_mtime_ns=4),  # the ids now come from another file
             "/x/d1": SimpleNamespace(st_size=1, st_mtime_ns=1), "/x/a3": SimpleNamespace(st_size=1, st_mtime_ns=1)}
    kept, recovered = unchanged(index, utts, sizes=[stats[u.path].st_size for u in utts],
                                mtimes_ns=[stats[u.path].st_mtime_ns for u in utts], adopted=[1])
    rows = {(s, u): (src, size, mt, shard) for s, u, src, size, mt, shard in zip(*index.to_pydict().values())}
    want_kept, want_recovered = [], []
    for utt in utts:
        found = rows.get((utt.speaker, utt.utterance))
        same = found is not None and found[:3] == (utt.path, stats[utt.path].st_size, stats[utt.path].st_mtime_ns)
        want_kept.append(same)
        want_recovered.append(same and found[3] == 1)
    assert kept.tolist() == want_kept == [True, False, True, False, False, False]
    assert recovered.tolist() == want_recovered == [False, False, True, False, False, False]
