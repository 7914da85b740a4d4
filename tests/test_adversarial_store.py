"""The sharded store and its scan record under attack (issue 32): everything read from disk is checked against what
wrote it. Hostile scan records (a row outside the audio folder, ``..`` in a path or an id, a cut folder list, ids
that do not fit the layout), tampered shard indexes (a negative offset, frames past the array, forged checksums
too), swapped shard arrays and indexes, damaged shard bytes, NaN frames, ids that are no plain names on their way
into a shard. Each asserts the exit code, the one line (or the warning) and that nothing outside the target was
read or changed; ``cache update`` repairs every damaged shard it is told to."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from deep_speaker.cli import main
from deep_speaker.data import corpus, store as store_module
from deep_speaker.data.corpus import Utterance, scan_corpus
from deep_speaker.data.sources import open_features
from deep_speaker.data.store import FeatureStore, as_dtype, build_store, write_shard
from deep_speaker.errors import DeepSpeakerError, Failure

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "librispeech" / "test-other"
ERROR = "deep-speaker: error: "  # how run_command prints a one-line refusal


def copy_corpus(root: Path, speakers: int = 2, utts: int = 2) -> list[Path]:
    """Copies (not links: nothing of the repository is ever in reach) of a few LibriSpeech files."""
    files = []
    for spk_dir in sorted(SAMPLES.iterdir())[:speakers]:
        for src in sorted(spk_dir.rglob("*.flac"))[:utts]:
            dst = root / src.relative_to(SAMPLES)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
            files.append(dst)
    return files


def age(root: Path) -> None:
    """Every folder's mtime an hour back, so a scan record of it is trusted (corpus.RACY_NS) and a change shows."""
    past = time.time() - 3600
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, (past, past))


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``root``: its bytes and mtime."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli(capsys, *args: str) -> tuple[int, list[str]]:
    """deep-speaker in this process: its exit code and its stderr lines."""
    capsys.readouterr()
    code = main([*args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def corpus_and_store(tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    """An audio folder of 4 files (2 speakers), a store of it in 2 shards of 2, and a folder outside both with a
    file a hostile record may point at."""
    monkeypatch.setattr(corpus, "RACY_NS", 0)  # the folders are aged instead
    audio, store_dir, outside = tmp_path / "audio", tmp_path / "store", tmp_path / "outside"
    copy_corpus(audio)
    copy_corpus(outside, speakers=3, utts=1)
    build_store(audio, store_dir, shard_size=2, progress=False)
    time.sleep(0.03)  # a later change of a shard file is a clock tick later (coarse file times): its times differ
    age(audio)
    age(outside)
    return audio, store_dir, outside


def computed_paths(monkeypatch) -> list[str]:
    """The audio files the store builds compute from here on."""
    paths: list[str] = []
    compute = store_module.compute_features
    monkeypatch.setattr(store_module, "compute_features",
                        lambda utt, **kw: paths.append(utt.path) or compute(utt, **kw))
    return paths


def frames_of(store_dir: Path) -> dict[tuple[str, str], np.ndarray]:
    store = open_features(store_dir)
    return {key: np.array(store.load(*key)) for key in store.utterances()}


# ----- the scan record -----

def rewrite_record(record: Path, edit) -> None:
    """The record as ``edit(rows, meta)`` leaves it (rows: a list of row dicts, returned; meta: changed in place)."""
    with pa.OSFile(str(record)) as source:
        table = pa.ipc.open_file(source).read_all()
    meta = json.loads(table.schema.metadata[b"deep-speaker"])
    rows = edit(table.to_pylist(), meta)
    schema = table.schema.remove_metadata().with_metadata({"deep-speaker": json.dumps(meta)})
    with pa.OSFile(str(record), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))


def hostile_record(case: str, audio: Path, outside: Path):
    """Each hostile record's edit (rewrite_record)."""
    stray = sorted(outside.rglob("*.flac"))[-1]  # a speaker the audio folder does not hold

    def stray_in(folder: str):  # a row for the stray file, in a folder added to the record's list
        def edit(rows: list[dict], meta: dict) -> list[dict]:
            meta["folders"].append([folder, *meta["folders"][0][1:]])
            row = {"speaker": stray.parts[-3], "utterance": stray.stem, "folder": len(meta["folders"]) - 1,
                   "tail": ".flac"}
            return sorted(rows + [row], key=lambda r: (r["speaker"], r["utterance"]))
        return edit

    def first_row(**change):
        return lambda rows, meta: [{**rows[0], **change}] + rows[1:]

    return {"folder outside": stray_in(str(stray.parent)),
            "dot-dot folder": stray_in(f"{audio}/../{stray.parent.relative_to(audio.parent)}"),
            "dot-dot tail": first_row(tail=f"/../../../{stray.relative_to(audio.parent)}"),
            "folder number out of range": first_row(folder=10**6),
            "dot-dot speaker id": first_row(speaker="../../x"),
            # An utterance id naming another chapter than the folder the file is in.
            "ids that do not fit the layout": lambda rows, meta: [
                {**rows[0], "utterance": "{0}-1-{2}".format(*rows[0]["utterance"].split("-"))}] + rows[1:]}[case]


@pytest.mark.parametrize("case", ["folder outside", "dot-dot folder", "dot-dot tail", "folder number out of range",
                                  "dot-dot speaker id", "ids that do not fit the layout"])
def test_a_hostile_scan_record_is_ignored_and_rewritten(corpus_and_store, capsys, monkeypatch, case):
    audio, store_dir, outside = corpus_and_store
    record = store_dir / "corpus-scan.arrow"
    assert cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress")[0] == 0  # records the scan
    honest = record.read_bytes()
    rewrite_record(record, hostile_record(case, audio, outside))
    before, audio_before, outside_before = frames_of(store_dir), snapshot(audio), snapshot(outside)
    computed = computed_paths(monkeypatch)
    code, err = cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress")
    assert code == 0 and computed == []  # nothing read, nothing new: the record was not used
    assert any("corpus-scan.arrow: not used (" in line and "scanned again" in line for line in err), err
    assert frames_of(store_dir).keys() == before.keys()
    store = open_features(store_dir)
    assert all(store.entry(*key)["source"].startswith(f"{audio}/") for key in store.utterances())
    assert snapshot(audio) == audio_before and snapshot(outside) == outside_before
    # Rewritten from the scan: the same rows as the honest record, used again by the next update (no warning).
    assert scan_corpus(audio, layout="librispeech", record=record) == scan_corpus(audio, layout="librispeech")
    with pa.OSFile(str(record)) as a, pa.BufferReader(honest) as b:
        assert pa.ipc.open_file(a).read_all().equals(pa.ipc.open_file(b).read_all())
    assert cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress") == (0, [])


@pytest.mark.parametrize("cut", ["speaker", "chapter"])
def test_a_record_with_a_cut_folder_list_does_not_hide_new_files(corpus_and_store, capsys, monkeypatch, cut):
    audio, store_dir, _ = corpus_and_store
    record = store_dir / "corpus-scan.arrow"
    assert cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress")[0] == 0
    hidden_speaker = sorted(p.name for p in audio.iterdir())[-1]
    chapter = next((audio / hidden_speaker).iterdir())

    def cut_folders(rows: list[dict], meta: dict) -> list[dict]:  # the speaker's folders (or its chapter's) gone
        gone = str(audio / hidden_speaker) if cut == "speaker" else str(chapter)
        kept = [n for n, f in enumerate(meta["folders"]) if not (f[0] == gone or f[0].startswith(gone + "/"))]
        renumber = {old: new for new, old in enumerate(kept)}
        meta["folders"] = [meta["folders"][n] for n in kept]
        return [{**r, "folder": renumber[r["folder"]]} for r in rows if r["folder"] in renumber]

    rewrite_record(record, cut_folders)
    # A new file where only the cut folder's mtime shows it (its parents are as recorded).
    new = chapter / f"{hidden_speaker}-{chapter.name}-9999.flac"
    shutil.copy(next(chapter.iterdir()), new)
    computed = computed_paths(monkeypatch)
    code, err = cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress")
    assert code == 0 and computed == [str(new)], err
    assert any("not used" in line and "folders, the record" in line for line in err), err
    assert (hidden_speaker, new.stem) in open_features(store_dir).utterances()
    assert len(open_features(store_dir)) == 5


def test_ids_that_are_no_plain_names_never_reach_a_shard(corpus_and_store, monkeypatch, tmp_path):
    audio, store_dir, _ = corpus_and_store
    one = sorted(audio.rglob("*.flac"))[0]
    scan = store_module.scan_corpus

    def hostile_scan(*args, **kwargs):  # a scan (or anything else) that hands over a hostile id
        utterances, rejected, layout = scan(*args, **kwargs)
        return utterances + [Utterance("../../x", "y", str(one))], rejected, layout

    monkeypatch.setattr(store_module, "scan_corpus", hostile_scan)
    summary = build_store(audio, store_dir, update=True, progress=False)
    assert summary.failed == [Failure(str(one), "speaker/utterance id '../../x'/'y' is not a plain name")]
    assert summary.cached == 0 and len(FeatureStore(store_dir)) == 4
    assert not list(tmp_path.rglob("x*")) and not (tmp_path / "x").exists()
    # write_shard itself refuses, whoever calls it, and writes nothing.
    frame = np.zeros((1, 64), np.float32)
    entry = {"speaker": "ok", "utterance": "../y", "source": "s", "size": 1, "mtime_ns": 1, "seconds": 1.0}
    assert isinstance(as_dtype((frame, entry), "float32"), Failure)
    out = tmp_path / "direct"
    with pytest.raises(DeepSpeakerError, match="not plain names"):
        write_shard(out, "g000001-0000000000000000", [(frame, entry)], dtype="float32", settings={})
    assert not out.exists() or not any(out.rglob("*.npy"))


def test_non_finite_features_are_a_failure_not_a_shard():
    entry = {"speaker": "a", "utterance": "b", "source": "a/b.flac"}
    for bad in (np.nan, -np.inf):
        frames = np.zeros((3, 64), np.float32)
        frames[1, 5] = bad
        assert as_dtype((frames, entry), "float32") == Failure("a/b.flac", "features are NaN or infinite")
    big = np.full((3, 64), 1e6, np.float32)
    with np.errstate(over="ignore"):
        assert "float16 range" in as_dtype((big, entry), "float16").reason


# ----- shard indexes, arrays and listings -----

def shard_paths(store_dir: Path) -> list[tuple[Path, Path]]:
    names = [s["name"] for s in json.loads((store_dir / "store.json").read_text())["shards"]]
    return [(store_dir / "shards" / f"{n}.npy", store_dir / "shards" / f"{n}.arrow") for n in names]


def rewrite_index(path: Path, column: str, values: list) -> None:
    """The shard index with ``column`` replaced, its metadata (name included) kept."""
    with pa.OSFile(str(path)) as source:  # read, not mapped: the file is overwritten below
        table = pa.ipc.open_file(source).read_all()
    table = table.set_column(table.schema.get_field_index(column), column, pa.array(values, pa.int64()))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def forge_checksums(store_dir: Path) -> None:
    """A listing whose checksums and times say every shard file is as it is now (a forger's)."""
    listing_path = store_dir / "store.json"
    listing = json.loads(listing_path.read_text())
    for record in listing["shards"]:
        for kind, path in zip(("npy", "arrow"), (store_dir / "shards" / f"{record['name']}.{k}"
                                                 for k in ("npy", "arrow"))):
            st = path.stat()
            record["files"][kind] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                                     "blake2b": hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()}
    listing_path.write_text(json.dumps(listing))


def assert_repaired(capsys, audio: Path, store_dir: Path, before: dict, untouched: tuple[Path, Path],
                    warned: str) -> None:
    """``cache update`` warns, rebuilds the damaged shard (exit 0), leaves the other one and the audio as they were,
    and the store reads as before."""
    untouched_bytes, audio_before = [p.read_bytes() for p in untouched], snapshot(audio)
    code, err = cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress")
    assert code == 0 and any(warned in line for line in err), err
    assert [p.read_bytes() for p in untouched] == untouched_bytes and snapshot(audio) == audio_before
    after = frames_of(store_dir)
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
    assert cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress") == (0, [])


@pytest.mark.parametrize("forged", [False, True], ids=["checksums-kept", "checksums-forged"])
@pytest.mark.parametrize("tamper", ["negative offset", "frames past the array"])
def test_a_tampered_index_is_refused_by_name_and_update_rebuilds_it(corpus_and_store, capsys, tamper, forged):
    audio, store_dir, _ = corpus_and_store
    before = frames_of(store_dir)
    (npy, arrow), other = shard_paths(store_dir)
    index = pa.ipc.open_file(pa.memory_map(str(arrow))).read_all()
    offsets, frames = index["offset"].to_pylist(), index["frames"].to_pylist()
    if tamper == "negative offset":  # would read the end of another utterance's frames
        rewrite_index(arrow, "offset", [offsets[0], -frames[0]])
    else:
        rewrite_index(arrow, "frames", [frames[0], frames[1] + 1])
    if forged:  # the listing's checksums forged too: the rows themselves are checked
        forge_checksums(store_dir)
    code, err = cli(capsys, "cache", "info", str(store_dir))
    what = "negative offset" if tamper == "negative offset" else "past the end of its array"
    assert code == 2 and len(err) == 1 and err[0].startswith(f"{ERROR}{arrow}: row ") and what in err[0], err
    assert "cache update" in err[0]
    assert_repaired(capsys, audio, store_dir, before, other, "damaged")


@pytest.mark.parametrize("kind", ["npy", "arrow"])
def test_swapped_shard_files_are_refused_by_name_and_update_rebuilds_them(corpus_and_store, capsys, tmp_path, kind):
    audio, store_dir, _ = corpus_and_store
    before = frames_of(store_dir)
    first, second = shard_paths(store_dir)
    i = 0 if kind == "npy" else 1
    assert np.load(first[0]).shape != np.load(second[0]).shape  # two shards of other lengths
    swap = tmp_path / "swap"
    first[i].rename(swap)
    second[i].rename(first[i])
    swap.rename(second[i])
    if kind == "npy":  # the index reads, the array is refused when a frame of it is asked for
        code, err = cli(capsys, "cache", "inputs", str(store_dir), "--output", str(tmp_path / "inputs.npz"))
        assert code == 2 and len(err) == 1 and " frames where its listing records " in err[0], err
        assert err[0].removeprefix(ERROR).split(": ")[0] in (str(first[0]), str(second[0]))
        assert not (tmp_path / "inputs.npz").exists()
    else:
        code, err = cli(capsys, "cache", "info", str(store_dir))
        assert code == 2 and len(err) == 1 and "the index of another shard" in err[0], err
        assert err[0].removeprefix(ERROR).split(": ")[0] in (str(first[1]), str(second[1]))
    code, err = cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress")
    assert code == 0 and sum("damaged" in line for line in err) == 2, err
    after = frames_of(store_dir)
    assert all(np.array_equal(after[k], before[k]) for k in before) and after.keys() == before.keys()
    assert not first[0].exists() and not second[0].exists()  # rebuilt under new names, the swapped ones deleted


@pytest.mark.parametrize("damage", ["bytes", "header"])
def test_a_damaged_shard_is_rebuilt_by_the_update_its_message_asks_for(corpus_and_store, capsys, tmp_path, damage):
    audio, store_dir, _ = corpus_and_store
    before = frames_of(store_dir)
    (npy, _), other = shard_paths(store_dir)
    data = bytearray(npy.read_bytes())
    if damage == "bytes":  # same size, other frames: only the checksum tells
        data[-64:] = bytes(64)
        npy.write_bytes(bytes(data))
    else:
        npy.write_bytes(b"\x93NUMPY garbage")
        code, err = cli(capsys, "cache", "inputs", str(store_dir), "--output", str(tmp_path / "inputs.npz"))
        assert code == 2 and len(err) == 1 and err[0].startswith(f"{ERROR}{npy}: unreadable shard"), err
        assert err[0].endswith("run 'deep-speaker cache update' to recompute it")
    assert_repaired(capsys, audio, store_dir, before, other, "does not match its checksum" if damage == "bytes"
                    else "damaged")


def test_nan_frames_are_refused_naming_shard_and_utterance(corpus_and_store, capsys, tmp_path):
    audio, store_dir, _ = corpus_and_store
    before = frames_of(store_dir)
    (npy, arrow), other = shard_paths(store_dir)
    index = pa.ipc.open_file(pa.memory_map(str(arrow))).read_all().to_pylist()
    frames = np.load(npy, mmap_mode="r+")
    frames[index[1]["offset"] + 3, 7] = np.nan
    frames.flush()
    del frames
    store = open_features(store_dir)
    key = (index[1]["speaker"], index[1]["utterance"])
    with pytest.raises(DeepSpeakerError) as caught:
        store.load(*key)
    message = str(caught.value)
    assert message.startswith(f"{npy}: utterance {key[0]}/{key[1]} holds frames that are NaN or infinite")
    assert "\n" not in message
    np.testing.assert_array_equal(store.load(index[0]["speaker"], index[0]["utterance"]),
                                  before[(index[0]["speaker"], index[0]["utterance"])])  # its neighbour reads
    code, err = cli(capsys, "cache", "inputs", str(store_dir), "--output", str(tmp_path / "inputs.npz"))
    assert code == 2 and err == [ERROR + message]
    assert_repaired(capsys, audio, store_dir, before, other, "does not match its checksum")


def test_a_listing_without_checksums_still_reads_and_updates(corpus_and_store, capsys, monkeypatch):
    audio, store_dir, _ = corpus_and_store
    before = frames_of(store_dir)
    listing_path = store_dir / "store.json"
    listing = json.loads(listing_path.read_text())
    for record in listing["shards"]:
        del record["files"]
    listing_path.write_text(json.dumps(listing))
    after = frames_of(store_dir)
    assert all(np.array_equal(after[k], before[k]) for k in before)
    computed = computed_paths(monkeypatch)
    assert cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress")[0] == 0 and computed == []
    # Its arrays are still compared with the frame counts it lists: a cut one is computed again.
    (npy, _), _ = shard_paths(store_dir)
    np.save(npy, np.load(npy)[:-1])
    assert cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress")[0] == 0
    assert len(computed) == 2


def test_an_unchanged_shard_is_not_checksummed_again(corpus_and_store, capsys, monkeypatch):
    audio, store_dir, _ = corpus_and_store
    digests: list[Path] = []
    digest = store_module._digest
    monkeypatch.setattr(store_module, "_digest", lambda path: digests.append(path) or digest(path))
    assert cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress") == (0, [])
    assert digests == []  # a no-op update reads no shard
    (npy, _), _ = shard_paths(store_dir)
    os.utime(npy)  # touched, not changed: checksummed once, kept, and recorded at its new times
    computed = computed_paths(monkeypatch)
    assert cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress") == (0, [])
    assert digests == [npy] and computed == []
    assert cli(capsys, "cache", "update", str(audio), str(store_dir), "--no_progress") == (0, [])
    assert digests == [npy]


def test_honest_records_of_every_layout_are_reused_and_a_misfit_row_is_not(tmp_path, monkeypatch, caplog):
    """The column-wise checks accept what a scan of each layout writes (no walk the second time, no warning), and
    refuse a row whose ids the path does not give, in each layout."""
    monkeypatch.setattr(corpus, "RACY_NS", 0)
    walks: list[str] = []
    walk = corpus._walk_audio
    monkeypatch.setattr(corpus, "_walk_audio", lambda folder: walks.append(folder) or walk(folder))
    flac = sorted(SAMPLES.rglob("*.flac"))[0]
    trees = {"vctk": ["wav48_silence_trimmed/p225/p225_001_mic1.flac", "wav48_silence_trimmed/p225/p225_001_mic2.flac",
                      "wav48_silence_trimmed/p226/p226_002_mic2.flac"],
             "librispeech": ["19/198/19-198-0000.flac", "19/198/19-198-0001.FLAC", "26/495/26-495-0003.flac"],
             "folders": ["alice/a.b.wav", "alice/c.flac", "bob/d.flac", "bob/sub/e.flac"]}
    for layout, names in trees.items():
        root, record = tmp_path / layout, tmp_path / f"{layout}.arrow"
        for name in names:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(flac, root / name)
        age(root)
        scanned = scan_corpus(root, layout=layout, record=record)
        assert scanned[0] and scanned[2] == layout
        count = len(walks)
        caplog.clear()
        assert scan_corpus(root, layout=layout, record=record) == scanned and len(walks) == count  # from the record
        assert "not used" not in caplog.text
        rewrite_record(record, lambda rows, meta: [{**rows[0], "speaker": rows[0]["speaker"] + "0"}] + rows[1:])
        assert scan_corpus(root, layout=layout, record=record) == scanned and len(walks) == count + 1
        assert f"does not fit the {layout} layout" in caplog.text
