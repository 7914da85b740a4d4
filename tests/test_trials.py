"""Trial lists on the real test-other speech: balance, no self or repeated trials, labels, gender rules against
SPEAKERS.TXT and durations against decoded audio (both parsed/decoded here), seeds, both list formats, errors."""

from __future__ import annotations

import argparse
import itertools
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.stats import chisquare

from deep_speaker.cli import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, run_command
from deep_speaker.cli import trials as trials_cli
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.eval.trials import make_trials, read_genders, read_trials, write_trials


@pytest.fixture(scope="module")
def test_other(libri_mini) -> Path:
    return libri_mini / "test-other"


@pytest.fixture(scope="module")
def files(test_other) -> list[str]:
    return sorted(str(p) for p in test_other.rglob("*.flac"))


@pytest.fixture(scope="module")
def sexes(libri_mini) -> dict[str, str]:
    """SPEAKERS.TXT read here: 'ID | SEX | SUBSET | MINUTES | NAME', ';' comments."""
    path = libri_mini / "SPEAKERS.TXT"
    if not path.is_file():
        pytest.fail(f"LibriSpeech speaker metadata missing: {path}")
    rows = [line.split("|") for line in path.read_text(encoding="utf8").splitlines() if not line.startswith(";")]
    return {row[0].strip(): row[1].strip() for row in rows if len(row) >= 2}


def speaker(path: str, root: Path) -> str:
    """The speaker folder of a LibriSpeech path (speaker/chapter/file)."""
    return Path(path).relative_to(root).parts[0]


def pairs(trials) -> list[frozenset]:
    return [frozenset((a, b)) for a, b in zip(trials.first, trials.second)]


def all_pairs(files: list[str], keep) -> set[frozenset]:
    return {frozenset(p) for p in itertools.combinations(files, 2) if keep(*p)}


def test_balanced_without_self_or_repeated_trials_and_labels_are_speaker_equality(test_other, files):
    trials = make_trials(test_other, n_targets=120, seed=3).trials
    assert (trials.n_target, trials.n_nontarget, len(trials)) == (120, 120, 240)
    assert trials.labels.dtype == np.int8
    assert all(a != b for a, b in zip(trials.first, trials.second))
    assert len(set(pairs(trials))) == len(trials)
    assert set(trials.first) | set(trials.second) <= set(files)
    same = [speaker(a, test_other) == speaker(b, test_other) for a, b in zip(trials.first, trials.second)]
    assert trials.labels.tolist() == [int(s) for s in same]
    assert make_trials(test_other, n_targets=50, n_nontargets=80, seed=3).trials.n_nontarget == 80


def test_fewer_target_pairs_than_asked_gives_all_of_them_with_a_warning(test_other, files, caplog):
    with caplog.at_level(logging.WARNING, logger="deep_speaker"):
        trials = make_trials(test_other, n_targets=10000, seed=0).trials
    targets = all_pairs(files, lambda a, b: speaker(a, test_other) == speaker(b, test_other))
    assert len(targets) == 10 * 45
    assert {p for p, label in zip(pairs(trials), trials.labels) if label == 1} == targets
    assert trials.n_nontarget == len(targets)  # balanced by default
    assert "10000 target trials asked for, only 450 same-speaker pairs exist" in caplog.text


@pytest.mark.parametrize("rule", ["same", "different"])
def test_gender_rules_follow_speakers_txt(test_other, files, sexes, rule):
    sex = {f: sexes[speaker(f, test_other)] for f in files}
    assert sorted(set(sex.values())) == ["F", "M"]
    wanted = (lambda a, b: sex[a] == sex[b]) if rule == "same" else (lambda a, b: sex[a] != sex[b])
    made = make_trials(test_other, n_targets=100, seed=1, nontarget_gender=rule)
    assert made.gender_file == str((test_other.parent / "SPEAKERS.TXT").resolve())
    nontargets = [p for p, label in zip(pairs(made.trials), made.trials.labels) if label == 0]
    assert len(nontargets) == 100 and all(wanted(*p) for p in nontargets)
    # Asking for more than exist gives exactly the eligible pairs, counted here from the file list.
    every = make_trials(test_other, n_targets=0, n_nontargets=10 ** 6, nontarget_gender=rule).trials
    eligible = all_pairs(files, lambda a, b: speaker(a, test_other) != speaker(b, test_other) and wanted(a, b))
    assert set(pairs(every)) == eligible and len(every) == len(eligible)
    # Each trial in corpus order, the list ordered by (first, second), as documented.
    position = {u.path: i for i, u in enumerate(made.utterances)}
    rows = [(position[a], position[b]) for a, b in zip(made.trials.first, made.trials.second)]
    assert all(a < b for a, b in rows) and rows == sorted(rows)


def test_pairs_are_drawn_uniformly(test_other, files, sexes):
    """Over 100 seeds every eligible pair is drawn about equally often (chi-square against uniform)."""
    targets = all_pairs(files, lambda a, b: speaker(a, test_other) == speaker(b, test_other))
    mixed = all_pairs(files, lambda a, b: sexes[speaker(a, test_other)] != sexes[speaker(b, test_other)])
    counts = {p: 0 for p in targets | mixed}
    for seed in range(100):
        for p in pairs(make_trials(test_other, n_targets=45, n_nontargets=250, seed=seed,
                                   nontarget_gender="different").trials):
            counts[p] += 1
    for group, drawn in ((targets, 45), (mixed, 250)):
        observed = [counts[p] for p in group]
        assert sum(observed) == 100 * drawn
        assert chisquare(observed).pvalue > 1e-3


def test_genders_from_a_file_and_unknown_speakers_named(test_other, sexes, tmp_path):
    speakers = sorted(p.name for p in test_other.iterdir())
    listed = tmp_path / "genders.txt"
    listed.write_text("# speaker gender\n" + "".join(f"{s} {'female' if sexes[s] == 'F' else 'male'}\n"
                                                     for s in speakers[1:]))
    with pytest.raises(DeepSpeakerError, match=f"^no gender known for speaker {speakers[0]} in {listed};"):
        make_trials(test_other, n_targets=10, nontarget_gender="same", genders=listed)
    listed.write_text(listed.read_text() + f"{speakers[0]} {sexes[speakers[0]]}\n")
    made = make_trials(test_other, n_targets=10, nontarget_gender="same", genders=listed)
    assert all(sexes[speaker(a, test_other)] == sexes[speaker(b, test_other)]
               for a, b in zip(made.trials.first, made.trials.second))
    listed.write_text("1688 m extra\n")
    with pytest.raises(DeepSpeakerError, match=r"genders.txt:1: expected 'SPEAKER GENDER'"):
        read_genders(listed)


def test_vctk_speaker_info_gives_genders(files, tmp_path):
    """A VCTK tree (speaker-info.txt beside wav48/, old ids without 'p') made of links to the real files."""
    corpus = tmp_path / "VCTK-Corpus"
    for spk, chosen in (("p225", files[:3]), ("p226", files[10:13]), ("p227", files[20:23])):
        (corpus / "wav48" / spk).mkdir(parents=True)
        for i, f in enumerate(chosen, start=1):
            os.symlink(f, corpus / "wav48" / spk / f"{spk}_{i:03d}.flac")
    (corpus / "speaker-info.txt").write_text("ID  AGE  GENDER  ACCENTS  REGION\n"
                                             "225  23  F    English    Southern  England\n"
                                             "226  22  M    English    Surrey\n227  38  M    English    Cumbria\n")
    assert read_genders(corpus / "speaker-info.txt") == {"225": "f", "p225": "f", "226": "m", "p226": "m",
                                                         "227": "m", "p227": "m"}
    made = make_trials(corpus / "wav48", n_targets=0, n_nontargets=100, nontarget_gender="different")
    assert {Path(a).parent.name for a in made.trials.first} == {"p225"}  # the one female speaker is in every pair
    assert made.trials.n_nontarget == 3 * 6


def test_min_seconds_against_decoded_durations(test_other, files):
    seconds = {f: len(sf.read(f)[0]) / sf.info(f).samplerate for f in files}
    limit = float(np.median(list(seconds.values())))
    made = make_trials(test_other, n_targets=10000, min_seconds=limit)
    used = set(made.trials.first) | set(made.trials.second)
    assert used and all(seconds[f] >= limit for f in used)
    assert sorted(made.too_short) == sorted(f for f in files if seconds[f] < limit)
    assert {u.path for u in made.utterances} == {f for f in files if seconds[f] >= limit}


def test_unreadable_headers_are_reported_not_drawn(files, tmp_path):
    for spk, chosen in (("a", files[:3]), ("b", files[10:13])):
        (tmp_path / spk).mkdir()
        for f in chosen:
            os.symlink(f, tmp_path / spk / Path(f).name)
    (tmp_path / "b" / "broken.flac").write_bytes(b"not audio")
    made = make_trials(tmp_path, n_targets=100, min_seconds=0.5)
    assert [f.path for f in made.failures] == [str(tmp_path / "b" / "broken.flac")]
    assert "unreadable audio header" in made.failures[0].reason
    assert str(tmp_path / "b" / "broken.flac") not in set(made.trials.first) | set(made.trials.second)


def test_the_same_seed_gives_the_same_bytes_another_seed_another_list(test_other, tmp_path):
    written = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        write_trials(tmp_path / f"{name}.txt", make_trials(test_other, n_targets=100, seed=seed).trials, test_other)
        written.append((tmp_path / f"{name}.txt").read_bytes())
    assert written[0] == written[1] and written[0] != written[2]


def test_round_trip_voxceleb_and_nist_formats(test_other, tmp_path):
    trials = make_trials(test_other, n_targets=60, seed=5).trials
    out = write_trials(tmp_path / "lists" / "vox.txt", trials, test_other)
    first = out.read_text().splitlines()[0].split()
    assert first[0] in ("0", "1") and not os.path.isabs(first[1]) and first[1].endswith(".flac")
    back = read_trials(out, root=test_other)
    assert back.labels.tolist() == trials.labels.tolist()
    assert (back.first, back.second) == (trials.first, trials.second)
    # The same trials as a NIST/Kaldi list, each id in one of the accepted spellings.
    spellings = [lambda rel: rel.as_posix(),  # a path relative to root
                 lambda rel: rel.with_suffix("").as_posix(),  # without extension
                 lambda rel: "-".join(rel.with_suffix("").parts),  # Kaldi's utterance id of the path
                 lambda rel: rel.stem]  # LibriSpeech's utterance id
    rel = [(Path(a).relative_to(test_other), Path(b).relative_to(test_other))
           for a, b in zip(trials.first, trials.second)]
    lines = [f"{spellings[i % 4](a)} {spellings[(i + 1) % 4](b)} {'target' if label else 'nontarget'}"
             for i, (label, (a, b)) in enumerate(zip(trials.labels, rel))]
    nist = tmp_path / "trials"
    nist.write_text("# enroll test label\n" + "\n".join(lines) + "\n")
    parsed = read_trials(nist, root=test_other)
    assert parsed.labels.tolist() == trials.labels.tolist()
    assert (parsed.first, parsed.second) == (trials.first, trials.second)


def _error(path: Path, text: str, root: Path | None = None) -> str:
    path.write_text(text)
    with pytest.raises(DeepSpeakerError) as info:
        read_trials(path, root)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    return message


def test_bad_lines_are_one_line_errors_with_file_and_line(test_other, files, tmp_path):
    rel = [str(Path(f).relative_to(test_other)) for f in files[:2]]
    bad = tmp_path / "bad.txt"
    assert _error(bad, f"# header\n1 {rel[0]} {rel[1]}\nyes {rel[0]}\n").startswith(
        f"{bad}:3: expected 'LABEL PATH_A PATH_B' with label 0 or 1, got")
    assert _error(bad, f"\n{rel[0]} {rel[1]} maybe\n").startswith(f"{bad}:2: expected 'LABEL PATH_A PATH_B'")
    assert "or 'ENROLL TEST target|nontarget'" in _error(bad, "enroll test\n")
    message = _error(bad, f"{rel[0]} {rel[1]} target\n1 {rel[0]} {rel[1]}\n", test_other)
    assert message.startswith(f"{bad}:2: expected 'ENROLL TEST target|nontarget'")
    message = _error(bad, f"{rel[0]} 9999-1-0001 nontarget\n", test_other)
    assert message.startswith(f"{bad}:1: id '9999-1-0001' matches no audio file under {test_other}")
    assert _error(bad, "# nothing\n\n") == f"{bad}: no trials in the file"
    bad.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DeepSpeakerError, match=r"not a text trial list \(binary content\)"):
        read_trials(bad)


def test_an_id_naming_two_files_is_refused(files, tmp_path):
    for spk in ("a", "b"):
        (tmp_path / spk).mkdir()
        os.symlink(files[0], tmp_path / spk / "same.flac")
    os.symlink(files[1], tmp_path / "a" / "other.flac")
    (tmp_path / "list").write_text("a/other same target\n")
    with pytest.raises(DeepSpeakerError, match=r"list:1: id 'same' names several files under .*a/same.flac, "
                                               r".*b/same.flac"):
        read_trials(tmp_path / "list")
    (tmp_path / "list").write_text("a/other b/same nontarget\n")
    assert read_trials(tmp_path / "list").second == [str(tmp_path / "b" / "same.flac")]


def test_write_refuses_files_outside_the_root(test_other, files, tmp_path):
    trials = make_trials(test_other, n_targets=5).trials
    with pytest.raises(DeepSpeakerError, match="not under"):
        write_trials(tmp_path / "t.txt", trials, test_other / "1688")
    assert not (tmp_path / "t.txt").exists()


def _command(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    trials_cli.register(parser.add_subparsers())
    args = parser.parse_args(["make-trials", *argv])
    args.verbose = False
    return args


def test_make_trials_command(test_other, sexes, tmp_path, capsys):
    out = tmp_path / "trials.txt"
    args = _command([str(test_other), "-o", str(out), "--targets", "40", "--seed", "2",
                        "--nontarget-gender", "different"])
    assert run_command(args.func, args) == EXIT_OK
    printed = capsys.readouterr().out
    assert "wrote 80 trials (40 target, 40 non-target" in printed and "10 speakers" in printed
    trials = read_trials(out, test_other)
    assert trials.n_target == trials.n_nontarget == 40
    assert all(sexes[speaker(a, test_other)] != sexes[speaker(b, test_other)]
               for a, b, label in zip(trials.first, trials.second, trials.labels) if label == 0)
    args = _command([str(test_other), "-o", str(out), "--genders", "g.txt"])
    assert run_command(args.func, args) == EXIT_USAGE
    assert "--nontarget-gender same or different" in capsys.readouterr().err


def test_rejected_files_make_the_command_exit_1(files, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    for spk, chosen in (("a", files[:3]), ("b", files[10:13])):
        (corpus / spk).mkdir(parents=True)
        for f in chosen:
            os.symlink(f, corpus / spk / Path(f).name)
    os.symlink(files[20], corpus / "loose.flac")
    args = _command([str(corpus), "-o", str(tmp_path / "t.txt"), "--targets", "3"])
    assert run_command(args.func, args) == EXIT_PARTIAL
    assert f"skipped {corpus / 'loose.flac'}: not inside a speaker folder" in capsys.readouterr().err
    assert len(read_trials(tmp_path / "t.txt", corpus)) == 6
