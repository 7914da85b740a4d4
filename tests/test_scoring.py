"""Calibrated, normalised, interval-carrying verification end to end (``calibrate``, ``verify``,
``evaluate-verification --score-norm/--cohort/--calibration/--compare``) with the toy encoder on real speech,
checked against the metric functions fed with embeddings recomputed by hand and against plain loops."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from deep_speaker.cli import main
from deep_speaker.encoders import register_encoder
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.eval.scoring import NO_NORM, ScoreNorm, read_calibration
from deep_speaker.eval.config import EvaluateConfig
from deep_speaker.eval.verification import embed_segments, evaluate, folder_utterances, load_cohort
from deep_speaker.metrics import cllr, fit_calibration, verification_intervals
from test_encoders import TOY, MeanFbank, by_hand
from test_metrics_calibration import loop_snorm

REPO = Path(__file__).resolve().parents[1]
TEST_OTHER = REPO / "samples" / "librispeech" / "test-other"
TRAIN = REPO / "samples" / "librispeech" / "train-clean-100"
TOY_ARGS = ["--encoder", TOY]


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    register_encoder(TOY, MeanFbank, replace=True)


@pytest.fixture(scope="module")
def by_hand_pairs():
    """All test-other pairs scored from embeddings made by hand, with their speakers."""
    files = sorted(TEST_OTHER.rglob("*.flac"))
    e = np.stack([by_hand(f) for f in files])
    spk = np.array([f.relative_to(TEST_OTHER).parts[0] for f in files])
    i, j = np.triu_indices(len(files), k=1)
    return e, spk, i, j, np.einsum("ij,ij->i", e[i], e[j]), (spk[i] == spk[j]).astype(int)


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "toy.calibration.json"
    assert main(["calibrate", str(TRAIN), "--segments", "2", "-o", str(out), *TOY_ARGS]) == 0
    return out


def test_segments_are_the_halves_of_each_file():
    utterances, _ = folder_utterances(TRAIN)
    labelled = embed_segments(MeanFbank(), utterances[:3], 2)
    assert labelled.paths == [f"{u.path}#{k}" for u in utterances[:3] for k in (1, 2)]
    from deep_speaker.data.audio import read_audio
    for row, u in enumerate(utterances[:3]):
        signal = read_audio(u.path, sample_rate=16000, trim=False)
        half = len(signal) - len(signal) // 2  # np.array_split gives the first part the extra sample
        enc = MeanFbank()
        for k, part in enumerate((signal[:half], signal[half:])):
            expect = enc.embed_prepared([enc.prepare_signal(part, 16000, "x")])[0]
            np.testing.assert_allclose(labelled.embeddings[2 * row + k], expect, atol=1e-6)


def test_calibrate_fits_the_pairs_of_the_training_halves(calibration_file):
    record = read_calibration(calibration_file)
    utterances, _ = folder_utterances(TRAIN)
    labelled = embed_segments(MeanFbank(), utterances, 2)
    e, spk = labelled.embeddings.astype(np.float64), np.asarray(labelled.speakers)
    i, j = np.triu_indices(len(spk), k=1)
    ref = fit_calibration(np.einsum("ij,ij->i", e[i], e[j]), (spk[i] == spk[j]).astype(int))
    assert record.calibration.scale == pytest.approx(ref.scale, rel=1e-6)
    assert record.calibration.offset == pytest.approx(ref.offset, rel=1e-6)
    assert record.fitted_on["n_target"] == len(utterances) and record.encoder == TOY
    assert len(record.fitted_on["file_digests"]) == len(utterances)


def test_calibrated_report_on_unseen_speakers(calibration_file, by_hand_pairs, tmp_path, capsys):
    e, spk, i, j, scores, labels = by_hand_pairs
    record = read_calibration(calibration_file)
    result = evaluate(MeanFbank(), {"audio_dir": str(TEST_OTHER)}, EvaluateConfig(bootstrap=200, seed=3),
                      score_norm=NO_NORM, calibration=record)
    report = result.report
    np.testing.assert_allclose(result.scores, scores, atol=1e-6)
    llr = record.calibration.scale * scores + record.calibration.offset
    assert report["cllr"] == pytest.approx(cllr(llr, labels), rel=1e-5)
    assert report["calibration"]["files_also_in_these_trials"] == 0
    ref = verification_intervals(scores, labels, first_speakers=spk[i], second_speakers=spk[j], replicates=200, seed=3)
    assert report["intervals"]["eer"]["low"] == pytest.approx(ref["eer"].low, abs=1e-4)
    assert report["intervals"]["eer"]["high"] == pytest.approx(ref["eer"].high, abs=1e-4)
    # A calibration evaluated on the audio it was fitted on says so in the calibration line.
    on_test = tmp_path / "on_test.json"
    assert main(["calibrate", str(TEST_OTHER), "-o", str(on_test), *TOY_ARGS]) == 0
    assert main(["evaluate-verification", str(TEST_OTHER), "--calibration", str(on_test), "--bootstrap", "0",
                 *TOY_ARGS]) == 0
    assert "FITTED ON 100 OF THESE 100 FILES: Cllr/actDCF are optimistic" in capsys.readouterr().out


def test_asnorm_report_matches_the_published_formula(by_hand_pairs):
    e, spk, i, j, scores, labels = by_hand_pairs
    cohort = load_cohort(MeanFbank(), TRAIN, "asnorm", top_k=20)
    train_files = sorted(TRAIN.rglob("*.flac"))
    assert cohort.cohort.shape[0] == len(train_files)  # one utterance per speaker: the speaker means are the rows
    result = evaluate(MeanFbank(), {"audio_dir": str(TEST_OTHER)}, EvaluateConfig(bootstrap=0), score_norm=cohort)
    cohort_by_hand = np.stack([by_hand(f) for f in train_files])
    pick = np.random.default_rng(0).choice(i.size, 300, replace=False)
    np.testing.assert_allclose(result.scores[pick], loop_snorm(e, i[pick], j[pick], cohort_by_hand, top_k=20),
                               atol=1e-5)
    assert result.report["score_norm"] == {"method": "asnorm", "cohort": str(TRAIN), "n_cohort": len(train_files),
                                           "top_k": 20, "cohort_files_also_in_these_trials": 0}
    overlapping = load_cohort(MeanFbank(), TEST_OTHER, "snorm")
    report = evaluate(MeanFbank(), {"audio_dir": str(TEST_OTHER)}, EvaluateConfig(bootstrap=0),
                      score_norm=overlapping).report
    assert report["score_norm"]["cohort_files_also_in_these_trials"] == 100


def test_a_calibration_is_refused_for_other_scores(calibration_file):
    record = read_calibration(calibration_file)
    with pytest.raises(DeepSpeakerError, match="fitted for .* not deep-speaker"):
        record.check_applies("deep-speaker", "f8ce049b18cd0ef5", NO_NORM)
    with pytest.raises(DeepSpeakerError, match="normalised as"):
        record.check_applies(TOY, record.model_identity, ScoreNorm("snorm", np.eye(12), "c"))


def test_verify_prints_the_llr_and_the_bayes_decision(calibration_file, capsys):
    files = sorted(TEST_OTHER.rglob("*.flac"))
    a, b = files[0], files[1]  # the same speaker and chapter
    assert main(["verify", str(a), str(b), "--calibration", str(calibration_file), "--prior", "0.2", *TOY_ARGS]) == 0
    out = capsys.readouterr().out
    record = read_calibration(calibration_file)
    score = float(by_hand(a) @ by_hand(b))
    llr = record.calibration.scale * score + record.calibration.offset
    assert f"score (cosine similarity) = {score:.4f}" in out and f"log-likelihood ratio = {llr:.3f}" in out
    posterior = 1 / (1 + math.exp(-(llr + math.log(0.2 / 0.8))))
    assert f"P(same speaker) = {posterior:.3f} at prior P(same) = 0.2" in out
    assert ("SAME speaker" if llr > math.log(0.8 / 0.2) else "DIFFERENT speakers") in out
    assert main(["verify", str(a), str(b), "--threshold", "0.99999", *TOY_ARGS]) == 0
    assert "DIFFERENT speakers (score <= threshold 0.99999)" in capsys.readouterr().out


def test_paired_comparison_of_two_reports(tmp_path, capsys):
    raw, normed = tmp_path / "raw.json", tmp_path / "snorm.json"
    assert main(["evaluate-verification", str(TEST_OTHER), "-o", str(raw), "--bootstrap", "200", "--table",
                 str(tmp_path / "t.csv"), "--table", str(tmp_path / "t.tex"), *TOY_ARGS]) == 0
    with open(tmp_path / "t.csv", newline="") as f:
        rows = {name: value for name, value in csv.reader(f)}
    report = json.loads(raw.read_text())
    assert rows["metric"] == "value" and rows["EER"].startswith(f"{100 * report['eer']:.2f} % [95 % CI")
    assert "\\begin{tabular}" in (tmp_path / "t.tex").read_text()
    assert main(["evaluate-verification", str(TEST_OTHER), "-o", str(normed), "--score-norm", "snorm", "--cohort",
                 str(TRAIN), "--bootstrap", "200", "--compare", str(raw), *TOY_ARGS]) == 0
    capsys.readouterr()
    a, b = json.loads(normed.read_text()), json.loads(raw.read_text())
    diff = a["comparison"]["eer"]
    assert diff["value"] == pytest.approx(a["eer"] - b["eer"]) and diff["low"] <= diff["value"] <= diff["high"]
    # Other trials (five of the ten speakers) cannot be compared: one line, exit 2.
    half = tmp_path / "half"
    half.mkdir()
    for speaker in sorted(p.name for p in TEST_OTHER.iterdir())[:5]:
        (half / speaker).symlink_to(TEST_OTHER / speaker, target_is_directory=True)
    assert main(["evaluate-verification", str(half), "--bootstrap", "0", "--compare", str(raw), *TOY_ARGS]) == 2
    assert "scored on other trials" in capsys.readouterr().err


def test_degenerate_scoring_inputs_are_one_line_errors(tmp_path, capsys):
    for args, message in (
            (["evaluate-verification", str(TEST_OTHER), "--score-norm", "snorm"], "needs --cohort"),
            (["evaluate-verification", str(TEST_OTHER), "--cohort", str(TRAIN)], "--cohort is used by"),
            (["calibrate", str(TRAIN), *TOY_ARGS], "give -o FILE"),
            (["calibrate", "--trials", str(tmp_path / "t.txt"), "--segments", "2", "-o", str(tmp_path / "c.json")],
             "--segments cuts the files"),
            (["verify", "a.wav", "b.wav", "--calibration", str(tmp_path / "none.json")], "cannot read calibration")):
        assert main([*args, *TOY_ARGS] if "--encoder" not in args else args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    few = tmp_path / "few"
    for speaker in sorted(p.name for p in TRAIN.iterdir())[:5]:
        (few / speaker).mkdir(parents=True)
        for f in (TRAIN / speaker).rglob("*.flac"):
            (few / speaker / f.name).symlink_to(f)
    assert main(["evaluate-verification", str(TEST_OTHER), "--score-norm", "snorm", "--cohort", str(few),
                 *TOY_ARGS]) == 2
    assert "a cohort needs at least 10 embeddings, got 5" in capsys.readouterr().err
