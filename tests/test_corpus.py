"""Corpus layouts: ids from real LibriSpeech paths and from VCTK / folder trees built here."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from deep_speaker.data import corpus
from deep_speaker.data.corpus import list_utterances, scan_corpus
from deep_speaker.errors import DeepSpeakerError


def touch(root: Path, *rels: str) -> list[Path]:
    """Create empty files (layouts never read the audio)."""
    paths = []
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        paths.append(path)
    return paths


def test_librispeech_mini_ids_come_from_the_path(libri_mini):
    utts, rejected, layout = scan_corpus(libri_mini)
    files = sorted(libri_mini.rglob("*.flac"))
    assert layout == "librispeech" and rejected == []
    expected = sorted((f.parts[-3], f.stem, str(f)) for f in files)
    assert [(u.speaker, u.utterance, u.path) for u in utts] == expected
    assert len({u.speaker for u in utts}) == 10 + 232  # test-other + train-clean-100 (samples/README.md)


def test_vctk_old_and_new_trees(tmp_path):
    old = tmp_path / "old"
    touch(old, "wav48/p225/p225_001.wav", "wav48/p225/p225_002.wav", "wav48/p226/p226_001.wav")
    utts, rejected, layout = scan_corpus(old)
    assert layout == "vctk" and rejected == []
    assert [(u.speaker, u.utterance) for u in utts] == [("p225", "p225_001"), ("p225", "p225_002"),
                                                       ("p226", "p226_001")]
    new = tmp_path / "new"
    touch(new, "wav48_silence_trimmed/p225/p225_001_mic1.flac", "wav48_silence_trimmed/p225/p225_001_mic2.flac",
          "wav48_silence_trimmed/p225/p225_002_mic2.flac", "wav48_silence_trimmed/s5/s5_003_mic1.flac")
    utts = list_utterances(new, layout="vctk")
    assert [(u.speaker, u.utterance, Path(u.path).name) for u in utts] == [
        ("p225", "p225_001", "p225_001_mic1.flac"),
        ("p225", "p225_002", "p225_002_mic2.flac"),  # only mic2 exists: it is used
        ("s5", "s5_003", "s5_003_mic1.flac")]
    assert Path(list_utterances(new, mic="mic2")[0].path).name == "p225_001_mic2.flac"


def test_folders_layout_and_rejections(tmp_path):
    touch(tmp_path, "alice/hello.wav", "alice/bye.FLAC", "bob/x.wav", "stray.wav", "bob/notes.txt")
    (tmp_path / "bob" / "folder.wav").mkdir()
    utts, rejected, layout = scan_corpus(tmp_path)
    assert layout == "folders"
    assert [(u.speaker, u.utterance) for u in utts] == [("alice", "bye"), ("alice", "hello"), ("bob", "x")]
    reasons = {Path(r.path).name: r.reason for r in rejected}
    assert set(reasons) == {"stray.wav", "folder.wav"}
    assert "directory" in reasons["folder.wav"] and "speaker folder" in reasons["stray.wav"]


def test_file_outside_the_detected_layout_is_rejected_not_dropped(tmp_path):
    touch(tmp_path, "19/198/19-198-0001.flac", "19/198/19-198-0002.flac", "19/198/oops.flac")
    utts, rejected, layout = scan_corpus(tmp_path)
    assert layout == "librispeech" and len(utts) == 2
    assert [Path(r.path).name for r in rejected] == ["oops.flac"] and "LibriSpeech" in rejected[0].reason


@pytest.mark.parametrize("libri, other", [(3, 3), (4, 3), (3, 4), (1, 0), (0, 1), (50, 49), (49, 50)])
def test_the_detected_layout_is_the_one_most_files_fit(tmp_path, libri, other):
    # The LibriSpeech files walked first or last (folder 19 sorts after 0alice, before alice): detection gives a
    # layout up once half the files miss it, which must not change the majority's answer.
    for speaker in ("alice", "0alice"):
        root = tmp_path / speaker
        touch(root, *[f"19/198/19-198-{i:04d}.flac" for i in range(libri)],
              *[f"{speaker}/a{i}.wav" for i in range(other)])
        utts, rejected, layout = scan_corpus(root)
        expected = "librispeech" if 2 * libri > libri + other else "folders"  # the majority, counted here
        assert layout == expected, speaker
        assert len(utts) + len(rejected) == libri + other


@pytest.mark.parametrize("layout, files", [
    ("folders", ["alice/a.wav", "alice/a.flac"]),
    ("vctk", ["wav48/p225/p225_001.wav", "wav48/p225/p225_001.flac"]),
    ("vctk", ["wav48/p225/p225_001_mic1.flac", "wav48/p225/p225_001_mic1.wav"]),
    ("folders", ["set1/alice/a.wav", "set2/alice/a.wav"]),
])
def test_colliding_ids_are_an_error_naming_both_files(tmp_path, layout, files):
    first, second = touch(tmp_path, *files)
    with pytest.raises(DeepSpeakerError) as err:
        list_utterances(tmp_path, layout=layout)
    assert str(first) in str(err.value) and str(second) in str(err.value)


def test_vctk_folder_with_both_trees_is_refused(tmp_path):
    touch(tmp_path, "wav48/p225/p225_001.wav", "wav48_silence_trimmed/p225/p225_001_mic1.flac")
    with pytest.raises(DeepSpeakerError, match="wav48_silence_trimmed"):
        list_utterances(tmp_path)


def test_unknown_layout_and_missing_folder(tmp_path):
    with pytest.raises(DeepSpeakerError, match="layout"):
        list_utterances(tmp_path, layout="timit")
    with pytest.raises(DeepSpeakerError, match="not found"):
        list_utterances(tmp_path / "nope")


@pytest.mark.parametrize("name", ["a.flac", "..flac", ".flac", "..a.flac", "a.b.flac", "x", "...", "a.", ".a.b"])
def test_stem_is_splitext(name):
    from deep_speaker.data.corpus import _stem

    assert _stem(name) == os.path.splitext(name)[0]


def age_folders(root: Path, seconds: float = 3600.0) -> None:
    """Set every folder's mtime in the past, so that any later change in one shows as a new mtime."""
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        past = time.time() - seconds
        os.utime(folder, (past, past))


@pytest.fixture
def walks(monkeypatch) -> list[str]:
    """The folders scans walked (one entry per full scan); the racy-folder margin off (see age_folders)."""
    calls: list[str] = []
    real = corpus._walk_audio

    def counting(audio_dir):
        calls.append(str(audio_dir))
        return real(audio_dir)

    monkeypatch.setattr(corpus, "_walk_audio", counting)
    monkeypatch.setattr(corpus, "RACY_NS", 0)
    return calls


def test_a_recorded_scan_is_reused_until_a_folder_changes(tmp_path, walks):
    root, record = tmp_path / "audio", tmp_path / "scan.arrow"
    touch(root, "spk1/a.wav", "spk1/b.flac", "spk2/c.wav", "spk2/notes.wav/x.wav", "loose.wav")
    age_folders(root)
    first = scan_corpus(root, layout="folders", record=record)
    assert scan_corpus(root, layout="folders", record=record) == first and len(walks) == 1  # no walk: from the record
    assert first == scan_corpus(root, layout="folders")  # and what a plain scan gives
    assert {f.reason for f in first[1]} >= {"is a directory, not an audio file"}  # rejections are kept too
    changes = [lambda: touch(root, "spk1/d.wav"),  # a file added
               lambda: (root / "spk2" / "c.wav").unlink(),  # removed
               lambda: (root / "spk1" / "a.wav").rename(root / "spk1" / "e.wav"),  # renamed
               lambda: touch(root, "spk3/sub/f.wav"),  # a new folder in the root
               lambda: touch(root, "spk3/sub/g.wav")]  # a file in a folder that the record holds, two levels down
    for n, change in enumerate(changes):
        age_folders(root)
        change()
        assert scan_corpus(root, layout="folders", record=record) == scan_corpus(root, layout="folders"), n
        assert scan_corpus(root, layout="folders", record=record) == scan_corpus(root, layout="folders")
        assert len(walks) == 2 + 3 * (n + 1)  # the change made one full scan; the next one came from the record


def test_a_record_is_not_reused_for_another_scan_a_racy_folder_or_a_damaged_file(tmp_path, walks, monkeypatch):
    root, record = tmp_path / "audio", tmp_path / "scan.arrow"
    touch(root, "spk1/spk1_001.wav", "spk1/spk1_002_mic2.wav")
    age_folders(root)
    scan_corpus(root, layout="folders", record=record)
    scan_corpus(root, layout="vctk", record=record)  # another layout
    scan_corpus(root, layout="vctk", mic="mic2", record=record)  # another microphone
    assert len(walks) == 3
    record.write_bytes(record.read_bytes()[:100])  # damaged: ignored, then rewritten
    assert scan_corpus(root, layout="vctk", mic="mic2", record=record) == scan_corpus(root, layout="vctk", mic="mic2")
    assert (scan_corpus(root, layout="vctk", mic="mic2", record=record) == scan_corpus(root, layout="vctk", mic="mic2")
            and len(walks) == 6)
    monkeypatch.setattr(corpus, "RACY_NS", 10**12)  # every folder changed too shortly before the recorded scan
    scan_corpus(root, layout="vctk", mic="mic2", record=record)
    scan_corpus(root, layout="vctk", mic="mic2", record=record)
    assert len(walks) == 8
