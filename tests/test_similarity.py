"""``deep-speaker similarity PAIRS``: the zero-shot TTS SIM protocol on bundled real speech.

Pairs of bundled test-other files in two toy spaces (test_encoders' MeanFbank, trimmed and untrimmed); every pair's
similarity is recomputed here with plain numpy from the files, the real baseline's thresholds from scikit-learn's
roc_curve. Pair lists as CSV (relative paths, carried columns) and as seed-tts-eval meta.lst (with --generated-dir
and --reference-dir); each distinct file embedded once; bad files skipped with their pairs (exit 1); unusable or
malformed lists (exit 2); the bootstrap intervals; and with --encoder resemblyzer, the resemblyzer package's own
embeddings' cosines to 1e-4.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import roc_thresholds
from test_encoders import HELD_OUT, TOY, MeanFbank, by_hand

from deep_speaker.cli import main
from deep_speaker.data.audio import read_audio
from deep_speaker.data.features import fbank_features
from deep_speaker.encoders import register_encoder
from deep_speaker.eval.similarity import mean_interval

UNTRIMMED = "toy-mean-fbank-untrimmed"
COUNTING = "toy-mean-fbank-counting"
FILES = sorted(str(p) for p in HELD_OUT.rglob("*.flac"))
BOTH = f"{TOY},{UNTRIMMED}"


class CountingFbank(MeanFbank):
    """The toy encoder, counting the files it prepares (each one decoded and embedded)."""

    name = COUNTING
    prepared: list[str] = []

    def prepare_signal(self, signal, sample_rate, where):
        CountingFbank.prepared.append(where)
        return super().prepare_signal(signal, sample_rate, where)


@pytest.fixture(scope="module", autouse=True)
def toys_registered():
    register_encoder(TOY, MeanFbank, replace=True)
    register_encoder(UNTRIMMED, lambda: MeanFbank("none"), replace=True)
    register_encoder(COUNTING, CountingFbank, replace=True)


def untrimmed_by_hand(path: str | Path) -> np.ndarray:
    """The untrimmed toy embedding in plain numpy: mean fbank of the whole file, unit length."""
    mean = fbank_features(read_audio(path, trim=False)).astype(np.float64).mean(axis=0)
    return mean / np.sqrt(mean @ mean)


BY_HAND = {TOY: by_hand, UNTRIMMED: untrimmed_by_hand}


def speaker_of(path: str) -> str:
    return Path(path).relative_to(HELD_OUT).parts[0]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["similarity", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def strict_json(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))


@pytest.fixture(scope="module")
def listed(tmp_path_factory) -> dict:
    """A CSV in lists/ naming audio/ files relatively (and two files absolutely), with a speaker and a note
    column: each of the 10 speakers' first file against its own second file and another speaker's file."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "audio").mkdir()
    (root / "lists").mkdir()
    for f in FILES:
        (root / "audio" / Path(f).name).symlink_to(f)
    rows = []
    for i in range(0, 100, 10):
        ref, same, other = FILES[i], FILES[i + 1], FILES[(i + 13) % 100]
        for k, gen in enumerate((same, other)):
            written = gen if i == 0 else f"../audio/{Path(gen).name}"  # absolute and relative paths mix
            rows.append({"note": f"n{i}-{k}", "reference": f"../audio/{Path(ref).name}", "generated": written,
                         "speaker": speaker_of(ref), "_ref": ref, "_gen": gen})
    with open(root / "lists" / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["note", "reference", "generated", "speaker"])
        writer.writerows([[r["note"], r["reference"], r["generated"], r["speaker"]] for r in rows])
    return {"root": root, "csv": root / "lists" / "pairs.csv", "rows": rows}


@pytest.fixture(scope="module")
def two_spaces(listed, tmp_path_factory) -> dict:
    """One run in both toy spaces with --real, -o and --per-pair (the stdout table kept)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("two_spaces")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["similarity", str(listed["csv"]), "--encoder", BOTH, "--real", str(HELD_OUT), "-o",
                     str(out / "report.json"), "--per-pair", str(out / "pairs.csv"), "--bootstrap", "200",
                     "--seed", "7", "--worst", "3"])
    return {"code": code, "printed": printed.getvalue(), "report": strict_json(out / "report.json"),
            "per_pair": read_rows(out / "pairs.csv")}


def test_every_pair_in_both_spaces_equals_numpy(listed, two_spaces):
    assert two_spaces["code"] == 0
    report, rows = two_spaces["report"], two_spaces["per_pair"]
    assert list(rows[0]) == ["reference", "generated", "encoder", "similarity", "note", "speaker"]
    assert len(rows) == 2 * len(listed["rows"]) and report["n_pairs"] == 20 and report["n_files"] == 30
    for name in (TOY, UNTRIMMED):
        mine = [r for r in rows if r["encoder"] == name]
        expected = []
        for pair, row in zip(listed["rows"], mine):
            # The files the relative paths name, read from the CSV's folder.
            assert os.path.samefile(row["reference"], pair["_ref"]) and os.path.samefile(row["generated"], pair["_gen"])
            assert (row["note"], row["speaker"]) == (pair["note"], pair["speaker"])
            expected.append(BY_HAND[name](pair["_ref"]) @ BY_HAND[name](pair["_gen"]))
            assert float(row["similarity"]) == pytest.approx(expected[-1], abs=1e-6)
        space = report["spaces"][name]
        assert space["sim"] == pytest.approx(np.mean(expected), abs=1e-6) and space["n_pairs"] == 20
        worst = sorted(expected)[:3]
        assert [w["similarity"] for w in space["worst"]] == pytest.approx(worst, abs=1e-6)
        assert {"note", "speaker", "reference", "generated"} <= set(space["worst"][0])
    assert report["spaces"][TOY]["sim"] != pytest.approx(report["spaces"][UNTRIMMED]["sim"], abs=1e-4)
    printed = two_spaces["printed"]
    assert "20 pairs of" in printed and TOY in printed and UNTRIMMED in printed and "least similar pairs" in printed


def real_by_sklearn(space: str, far: float = 0.01) -> dict:
    """The real baseline with loops over all pairs of the bundled files and scikit-learn's ROC."""
    unit = np.stack([BY_HAND[space](f) for f in FILES])
    speakers = [speaker_of(f) for f in FILES]
    scores, labels = [], []
    for i in range(len(FILES)):
        for j in range(i + 1, len(FILES)):
            scores.append(unit[i] @ unit[j])
            labels.append(int(speakers[i] == speakers[j]))
    scores, labels = np.array(scores), np.array(labels)
    thresholds = roc_thresholds(scores, labels, far)
    return {"theta_eer": thresholds["theta_eer"], "theta_far": thresholds["theta_far"],
            "same": scores[labels == 1], "different": scores[labels == 0]}


def test_real_baseline_against_sklearn(two_spaces):
    report, rows = two_spaces["report"], two_spaces["per_pair"]
    for name in (TOY, UNTRIMMED):
        ref = real_by_sklearn(name)
        real = report["spaces"][name]["real"]
        sims = np.array([float(r["similarity"]) for r in rows if r["encoder"] == name])
        assert real["n_utterances"] == 100 and real["n_speakers"] == 10
        assert real["thresholds"]["eer"] == pytest.approx(ref["theta_eer"], abs=1e-6)
        assert real["thresholds"]["far"] == pytest.approx(ref["theta_far"], abs=1e-6)
        assert real["same_speaker"]["n"] == ref["same"].size == 450
        assert real["same_speaker"]["mean"] == pytest.approx(ref["same"].mean(), abs=1e-6)
        assert real["different_speaker"]["mean"] == pytest.approx(ref["different"].mean(), abs=1e-6)
        assert real["position"] == pytest.approx((sims.mean() - ref["different"].mean())
                                                 / (ref["same"].mean() - ref["different"].mean()), abs=1e-5)
        assert real["accept_eer"] == pytest.approx(np.mean(sims > ref["theta_eer"]))
        assert real["accept_far"] == pytest.approx(np.mean(sims > ref["theta_far"]))
        assert real["real_accept_eer"] == pytest.approx(np.mean(ref["same"] > ref["theta_eer"]))
        assert real["same_speaker_below_mean"] == pytest.approx(np.mean(ref["same"] < sims.mean()))
    assert "position" in two_spaces["printed"] and "accept θEER" in two_spaces["printed"]


def test_intervals_contain_the_mean_and_are_seeded(two_spaces, listed, capsys, tmp_path):
    report = two_spaces["report"]
    assert report["bootstrap"] == {"replicates": 200, "seed": 7, "level": 0.95}
    for name in (TOY, UNTRIMMED):
        space = report["spaces"][name]
        for unit in ("pairs", "speakers"):  # the CSV has a speaker column: both intervals
            iv = space["intervals"][unit]
            assert iv["low"] < space["sim"] < iv["high"] and iv["value"] == pytest.approx(space["sim"])
        # Resampling speakers (pairs of one speaker are alike) gives a wider interval than resampling pairs.
        pairs, speakers = space["intervals"]["pairs"], space["intervals"]["speakers"]
        assert speakers["high"] - speakers["low"] >= 0.8 * (pairs["high"] - pairs["low"])
    code, _, _ = run(capsys, listed["csv"], "--encoder", BOTH, "--bootstrap", "200", "--seed", "7", "-o",
                     tmp_path / "again.json")
    again = strict_json(tmp_path / "again.json")
    assert code == 0 and again["spaces"][TOY]["intervals"] == report["spaces"][TOY]["intervals"]
    code, _, _ = run(capsys, listed["csv"], "--encoder", TOY, "--bootstrap", "200", "--seed", "8", "-o",
                     tmp_path / "other.json")
    assert strict_json(tmp_path / "other.json")["spaces"][TOY]["intervals"] != report["spaces"][TOY]["intervals"]
    code, printed, _ = run(capsys, listed["csv"], "--encoder", TOY, "--bootstrap", "0", "-o", tmp_path / "no.json")
    assert code == 0 and strict_json(tmp_path / "no.json")["spaces"][TOY]["intervals"] == {}
    sims = np.random.default_rng(0).normal(0.6, 0.1, 300)
    groups = np.repeat(np.arange(30).astype(str), 10)
    for g in (None, groups):
        iv = mean_interval(sims, g, replicates=500, seed=1)
        assert iv.low < sims.mean() < iv.high and iv == mean_interval(sims, g, replicates=500, seed=1)


def test_without_a_speaker_column_there_is_no_speaker_interval(capsys, tmp_path):
    rows = [[FILES[i], FILES[i + 1]] for i in range(0, 40, 4)]
    (tmp_path / "pairs.csv").write_text("reference,generated\n" + "".join(f"{a},{b}\n" for a, b in rows))
    code, _, _ = run(capsys, tmp_path / "pairs.csv", "--encoder", TOY, "-o", tmp_path / "r.json")
    assert code == 0 and list(strict_json(tmp_path / "r.json")["spaces"][TOY]["intervals"]) == ["pairs"]
    (tmp_path / "named.csv").write_text("who,reference,generated\n" + "".join(
        f"{speaker_of(a)},{a},{b}\n" for a, b in rows))
    code, _, _ = run(capsys, tmp_path / "named.csv", "--encoder", TOY, "--speaker-column", "who", "-o",
                     tmp_path / "r.json")
    assert code == 0 and "speakers" in strict_json(tmp_path / "r.json")["spaces"][TOY]["intervals"]


def test_each_distinct_file_is_embedded_once(capsys, tmp_path):
    """1,000 pairs over the 100 bundled files embed 100 files, with the real folder (the same files) too."""
    rng = np.random.default_rng(0)
    picks = rng.integers(0, 100, (1000, 2))
    (tmp_path / "pairs.csv").write_text("reference,generated\n" + "".join(
        f"{FILES[a]},{FILES[b]}\n" for a, b in picks))
    used = {FILES[k] for k in picks.ravel()}
    CountingFbank.prepared.clear()
    code, _, _ = run(capsys, tmp_path / "pairs.csv", "--encoder", COUNTING, "--bootstrap", "0")
    assert code == 0 and sorted(CountingFbank.prepared) == sorted(used)
    CountingFbank.prepared.clear()
    code, _, _ = run(capsys, tmp_path / "pairs.csv", "--encoder", COUNTING, "--bootstrap", "0", "--real", HELD_OUT)
    assert code == 0 and sorted(CountingFbank.prepared) == FILES
    # One file under two names (a link) is one file.
    (tmp_path / "alias.flac").symlink_to(FILES[0])
    (tmp_path / "alias.csv").write_text(f"reference,generated\nalias.flac,{FILES[1]}\n{FILES[0]},{FILES[1]}\n")
    CountingFbank.prepared.clear()
    code, _, _ = run(capsys, tmp_path / "alias.csv", "--encoder", COUNTING, "--bootstrap", "0", "-o",
                     tmp_path / "alias.json")
    assert code == 0 and len(CountingFbank.prepared) == 2 and strict_json(tmp_path / "alias.json")["n_files"] == 2
    # --embedding-cache works as on every embedding command: a second run embeds nothing.
    for expected in (len(used), 0):
        CountingFbank.prepared.clear()
        code, _, _ = run(capsys, tmp_path / "pairs.csv", "--encoder", COUNTING, "--bootstrap", "0",
                         "--embedding-cache", tmp_path / "cache", "-o", tmp_path / f"cached{expected}.json")
        assert code == 0 and len(CountingFbank.prepared) == expected
    assert strict_json(tmp_path / "cached0.json")["spaces"][COUNTING]["sim"] == pytest.approx(
        strict_json(tmp_path / f"cached{len(used)}.json")["spaces"][COUNTING]["sim"], abs=1e-7)


def test_meta_lst_with_generated_and_reference_dirs(capsys, tmp_path):
    """seed-tts-eval: prompts relative to the list, <utt>.wav in --generated-dir; --reference-dir switches each
    prompt to the file of its name there (SIM-r)."""
    (tmp_path / "prompt-wavs").mkdir()
    (tmp_path / "generated").mkdir()
    (tmp_path / "resynth").mkdir()
    lines, expected = [], {"o": [], "r": []}
    for k, i in enumerate(range(0, 50, 10)):
        name = f"prompt{k}.wav"
        (tmp_path / "prompt-wavs" / name).symlink_to(FILES[i])
        (tmp_path / "resynth" / name).symlink_to(FILES[i + 2])  # the "resynthesis": another utterance
        (tmp_path / "generated" / f"utt{k}.wav").symlink_to(FILES[i + 1])
        lines.append(f"utt{k}|prompt text {k}|prompt-wavs/{name}|target text {k}")
        expected["o"].append(by_hand(FILES[i]) @ by_hand(FILES[i + 1]))
        expected["r"].append(by_hand(FILES[i + 2]) @ by_hand(FILES[i + 1]))
    (tmp_path / "meta.lst").write_text("\n".join(lines) + "\n")
    for kind, extra in (("o", []), ("r", ["--reference-dir", tmp_path / "resynth"])):
        code, _, err = run(capsys, tmp_path / "meta.lst", "--generated-dir", tmp_path / "generated", "--encoder", TOY,
                           "--per-pair", tmp_path / f"{kind}.csv", *extra)
        assert code == 0, err
        rows = read_rows(tmp_path / f"{kind}.csv")
        assert list(rows[0]) == ["reference", "generated", "encoder", "similarity", "utt", "prompt_text",
                                 "infer_text"]
        assert [r["utt"] for r in rows] == [f"utt{k}" for k in range(5)] and rows[0]["infer_text"] == "target text 0"
        assert [float(r["similarity"]) for r in rows] == pytest.approx(expected[kind], abs=1e-6)
        folder = "resynth" if kind == "r" else "prompt-wavs"
        assert all(Path(r["reference"]).parent == tmp_path / folder for r in rows)
    # The five-field form carries the ground-truth column too.
    (tmp_path / "meta5.lst").write_text("".join(f"{line}|wavs/gt{k}.wav\n" for k, line in enumerate(lines)))
    code, _, _ = run(capsys, tmp_path / "meta5.lst", "--generated-dir", tmp_path / "generated", "--encoder", TOY,
                     "--per-pair", tmp_path / "five.csv")
    assert code == 0 and read_rows(tmp_path / "five.csv")[4]["gt_wav"] == "wavs/gt4.wav"


def test_bad_files_are_reported_and_their_pairs_skipped(capsys, tmp_path):
    speech = read_audio(FILES[0], trim=False)
    sf.write(tmp_path / "short.wav", speech[:1600], 16000)  # 0.1 s: too short for the toy encoders
    (tmp_path / "garbage.wav").write_bytes(b"not audio at all" * 10)
    # Speech too short once trimmed, long enough untrimmed: it fails in one space only, and its pair is left out
    # of both, so that the spaces are compared on the same pairs.
    sf.write(tmp_path / "one_space.wav", np.concatenate([speech[16000:19000], np.zeros(32000)]), 16000)
    bad = ["missing.wav", "short.wav", "garbage.wav", "one_space.wav"]
    good = [(FILES[i], FILES[i + 1]) for i in range(0, 30, 10)]
    rows = good + [(FILES[50], b) for b in bad] + [(bad[1], FILES[60])]
    (tmp_path / "pairs.csv").write_text("reference,generated\n" + "".join(f"{a},{b}\n" for a, b in rows))
    code, out, err = run(capsys, tmp_path / "pairs.csv", "--encoder", BOTH, "--per-pair", tmp_path / "per.csv",
                         "-o", tmp_path / "r.json")
    assert code == 1
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    for name in bad:
        assert any(line.startswith(f"skipped {tmp_path / name}: ") for line in skipped), (name, err)
    assert any("too short" in line for line in skipped)
    per = read_rows(tmp_path / "per.csv")
    assert len(per) == 2 * len(good) and {Path(r["generated"]).name for r in per} == {Path(b).name for _, b in good}
    report = strict_json(tmp_path / "r.json")
    assert report["n_pairs"] == 3 and report["n_pairs_skipped"] == 5 and report["n_pairs_listed"] == 8
    assert {f["path"] for f in report["failures"]} == {str(tmp_path / b) for b in bad}


def test_no_usable_pair_and_malformed_lists_are_one_line_exit_2(capsys, tmp_path):
    def refused(*argv, match: str) -> None:
        code, _, err = run(capsys, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err

    (tmp_path / "dead.csv").write_text("reference,generated\nnope.wav,nada.wav\n")
    refused(tmp_path / "dead.csv", "--encoder", TOY, match="no usable pair: 2 file(s) failed")
    (tmp_path / "header.csv").write_text("prompt,generated\na.wav,b.wav\n")
    refused(tmp_path / "header.csv", "--encoder", TOY, match="needs columns reference and generated")
    (tmp_path / "ragged.csv").write_text("reference,generated\na.wav,b.wav,c\n")
    refused(tmp_path / "ragged.csv", "--encoder", TOY, match="line 2 has 3 fields for 2 columns")
    (tmp_path / "empty.csv").write_text("reference,generated\n")
    refused(tmp_path / "empty.csv", "--encoder", TOY, match="holds no pair")
    refused(tmp_path / "absent.csv", "--encoder", TOY, match="no such pair list")
    (tmp_path / "meta.lst").write_text("u1|text|p.wav|text\n")
    refused(tmp_path / "meta.lst", "--encoder", TOY, match="give --generated-dir")
    refused(tmp_path / "meta.lst", "--encoder", TOY, "--generated-dir", tmp_path / "nowhere",
            match="--generated-dir")
    (tmp_path / "bad.lst").write_text("u1|text|p.wav|text\nu2|p.wav\n")
    refused(tmp_path / "bad.lst", "--encoder", TOY, "--generated-dir", tmp_path, match="line 2 has 2")
    refused(tmp_path / "dead.csv", "--encoder", TOY, "--generated-dir", tmp_path, match="is for a seed-tts-eval")
    refused(tmp_path / "dead.csv", "--encoder", TOY, "--speaker-column", "who", match="no column 'who'")
    refused(tmp_path / "dead.csv", "--encoder", TOY, "--bootstrap", "10", match="at least 100")
    refused(tmp_path / "dead.csv", "--encoder", TOY, "--per-pair", tmp_path / "x.pdf", match="a table file ends")


def test_embedding_options_are_shared_with_the_other_commands(capsys, listed):
    # An encoder takes the options it declares; one that no chosen encoder takes is refused in one line.
    code, _, err = run(capsys, listed["csv"], "--encoder", TOY, "--batch-size", "4")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--batch-size applies to deep-speaker only" in err
    code, _, err = run(capsys, listed["csv"], "--encoder", f"{TOY},{TOY}")
    assert code == 2 and "distinct names" in err
    code, _, err = run(capsys, listed["csv"], "--encoder", TOY, "--scheduler", "not-an-address")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not-an-address" in err


def test_resemblyzer_equals_the_package_for_every_pair(capsys, tmp_path):
    """``--encoder resemblyzer`` against the cosine of ``VoiceEncoder().embed_utterance(preprocess_wav(path))``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # webrtcvad's pkg_resources deprecation
        import resemblyzer  # installed in CI with the extras: a missing package fails, it does not skip
    import torch

    picked = FILES[::5]  # 20 files, two per speaker
    pairs = [(picked[i], picked[j]) for i in range(len(picked)) for j in (i + 1, (i + 7) % len(picked))
             if j < len(picked)]
    (tmp_path / "pairs.csv").write_text("reference,generated\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    code, _, err = run(capsys, tmp_path / "pairs.csv", "--encoder", "resemblyzer", "--per-pair",
                       tmp_path / "per.csv", "--bootstrap", "0")
    assert code == 0, err
    rows = read_rows(tmp_path / "per.csv")
    package = resemblyzer.VoiceEncoder(verbose=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the encoder runs it: the default threads are much slower on a shared box
    try:
        embedded = {p: package.embed_utterance(resemblyzer.preprocess_wav(p)) for p in picked}
    finally:
        torch.set_num_threads(threads)
    assert len(rows) == len(pairs)
    for (a, b), row in zip(pairs, rows):
        x, y = embedded[a].astype(np.float64), embedded[b].astype(np.float64)
        assert (row["reference"], row["generated"]) == (a, b)
        assert abs(float(row["similarity"]) - x @ y / np.sqrt((x @ x) * (y @ y))) <= 1e-4
