"""Hostile files read back from disk (issue 32): statistics ``.npz`` files, calibration JSON, cohorts, the trial
scores beside a report and the training state inside ``last.keras``, each crafted the ways a damaged or edited
file can be (1-D, 3-D, scalar or string arrays, NaN, wrong widths, bad JSON, wrong field types, NaN, Infinity,
1e308). Each is refused through the CLI with exit 2 and one line naming the file, and nothing is written or
overwritten: never exit 3 (a crash) and never a number silently wrong. Real inputs come from the bundled
LibriSpeech files and the toy encoder of test_encoders (64-d, no model to load)."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from deep_speaker.cli import EXIT_OK, EXIT_USAGE, main
from deep_speaker.encoders import register_encoder
from deep_speaker.errors import DeepSpeakerError, InternalError
from deep_speaker.eval.export import save_embeddings
from deep_speaker.eval.formats import read_moments as load_moments
from deep_speaker.eval.formats import read_stats as load_stats
from deep_speaker.eval.scoring import CalibrationRecord, read_calibration, save_calibration
from deep_speaker.metrics import Calibration
from deep_speaker.model.checkpoints import LAST, STATE, STATE_ENTRY, resume_state, save_checkpoint
from test_encoders import TOY, MeanFbank

REPO = Path(__file__).resolve().parents[1]
TEST_OTHER = REPO / "samples" / "librispeech" / "test-other"
TOY_ARGS = ["--encoder", TOY]


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    register_encoder(TOY, MeanFbank, replace=True)


def refused(argv: list[str], capsys, *names: Path) -> str:
    """Run the CLI in-process: exit 2 and one line on stderr naming the file; returns that line."""
    assert main(argv) == EXIT_USAGE, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for name in names:
        assert str(name) in err[0], err
    assert "internal error" not in err[0]
    return err[0]


def speakers_folder(root: Path, speakers: list[str], files: int = 3) -> Path:
    """A LibriSpeech-layout folder of ``files`` real utterances of each speaker (symlinks)."""
    for speaker in speakers:
        for f in sorted((TEST_OTHER / speaker).rglob("*.flac"))[:files]:
            link = root / f.relative_to(TEST_OTHER)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f)
    return root


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def crafted(path: Path, source: Path, **changes: Any) -> Path:
    """A copy of the ``.npz`` ``source`` with entries replaced (None: removed); object arrays are pickled in."""
    arrays = arrays_of(source)
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(path, **arrays)
    return path


def nan_at_first(array: np.ndarray) -> np.ndarray:
    out = array.astype(np.float64 if array.dtype == np.float64 else np.float32)
    out.flat[0] = np.nan
    return out


# ----- statistics files (compare, stats --merge) -----


@pytest.fixture(scope="module")
def stats_files(tmp_path_factory) -> dict[str, Path]:
    """'stats' of real speech with the toy encoder: two disjoint parts (2 speakers, 1 speaker) and their merge."""
    work = tmp_path_factory.mktemp("stats")
    speakers = sorted(p.name for p in TEST_OTHER.iterdir())[:3]
    out = {}
    for name, group in (("a", speakers[:2]), ("b", speakers[2:])):
        out[name] = work / f"{name}.npz"
        assert main(["stats", str(speakers_folder(work / name, group)), "-o", str(out[name]), *TOY_ARGS]) == EXIT_OK
    out["merged"] = work / "merged.npz"
    assert main(["stats", "--merge", str(out["a"]), str(out["b"]), "-o", str(out["merged"])]) == EXIT_OK
    return out


STATS_CASES: dict[str, Callable[[dict[str, np.ndarray]], dict[str, Any]]] = {
    "1-D embeddings": lambda a: {"embeddings": a["embeddings"][0]},
    "3-D embeddings": lambda a: {"embeddings": a["embeddings"][None]},
    "scalar embeddings": lambda a: {"embeddings": np.float32(1.0)},
    "string embeddings": lambda a: {"embeddings": a["embeddings"].astype(str)},
    "NaN embeddings": lambda a: {"embeddings": nan_at_first(a["embeddings"])},
    "infinite sigma": lambda a: {"sigma": a["sigma"] * np.inf},
    "mu of another width": lambda a: {"mu": a["mu"][:-1]},
    "mu of other embeddings": lambda a: {"mu": a["mu"] + 0.1},
    "labels of another length": lambda a: {"labels": a["labels"][:-1]},
    "numeric paths": lambda a: {"paths": np.arange(len(a["paths"]))},
    "bad settings JSON": lambda a: {"feature_settings": np.str_("{not json")},
    "settings not an object": lambda a: {"feature_settings": np.str_("[1, 2]")},
    "NaN in settings JSON": lambda a: {"feature_settings": np.str_('{"trim": NaN}')},
    "identity an array": lambda a: {"model_identity": np.array(["a", "b"])},
    "missing paths": lambda a: {"paths": None},
    "pickled labels": lambda a: {"labels": a["labels"].astype(object)},
    "one embedding": lambda a: {"embeddings": a["embeddings"][:1], "labels": a["labels"][:1],
                                "paths": a["paths"][:1]},
    "NaN moments": lambda a: {"sum": nan_at_first(a["sum"])},
    "wrong count": lambda a: {"count": np.int64(a["count"] + 5)},
    "moments of other embeddings": lambda a: {"outer": a["outer"] * 2},
    "string count": lambda a: {"count": np.str_("12")},
}


@pytest.mark.parametrize("case", sorted(STATS_CASES))
def test_a_crafted_statistics_file_is_refused_by_compare_and_merge(case, stats_files, tmp_path, capsys):
    good = stats_files["a"]
    bad = crafted(tmp_path / "bad.npz", good, **STATS_CASES[case](arrays_of(good)))
    report = tmp_path / "report.json"
    refused(["compare", str(good), str(bad), "-o", str(report)], capsys, bad)
    assert not report.exists()
    # A merge with a bad part writes nothing and leaves an earlier output as it was.
    merged = tmp_path / "merged.npz"
    merged.write_bytes(b"an earlier merge")
    refused(["stats", "--merge", str(stats_files["b"]), str(bad), "-o", str(merged)], capsys, bad)
    assert merged.read_bytes() == b"an earlier merge"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "merged.npz"]  # no temporary left


def test_files_that_are_no_npz_archive_are_refused(stats_files, tmp_path, capsys):
    npy = tmp_path / "array.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros((4, 64), np.float32))  # a bare .npy under an .npz name
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(stats_files["a"].read_bytes()[:300])
    text = tmp_path / "text.npz"
    text.write_text("mu,sigma\n1,2\n")
    for bad in (npy, truncated, text):
        refused(["compare", str(stats_files["a"]), str(bad)], capsys, bad)
        refused(["stats", "--merge", str(stats_files["a"]), str(bad), "-o", str(tmp_path / "m.npz")], capsys, bad)
        with pytest.raises(DeepSpeakerError, match=str(bad)):
            load_moments(bad)
    assert not (tmp_path / "m.npz").exists()


def test_crafted_probability_arrays_are_refused(stats_files, tmp_path, capsys):
    """compare --probs / --ref-probs: a plain .npy of [n, classes] probabilities, checked before anything runs."""
    cases = {"1-D": np.full(4, 0.25), "3-D": np.full((2, 2, 2), 0.5), "NaN": np.array([[np.nan, 1.0]]),
             "above 1": np.array([[0.5, 1.5]]), "negative": np.array([[-0.5, 1.5]]), "text": np.array([["a", "b"]])}
    for name, array in cases.items():
        bad = tmp_path / f"{name}.npy"
        np.save(bad, array)
        report = tmp_path / "report.json"
        refused(["compare", str(stats_files["a"]), str(stats_files["b"]), "--probs", str(bad), "-o", str(report)],
                capsys, bad)
        assert not report.exists(), name
    archive = tmp_path / "probs.npz"
    np.savez(archive, p=np.full((3, 2), 0.5))
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for bad in (archive, pickled):
        refused(["compare", str(stats_files["a"]), str(stats_files["b"]), "--ref-probs", str(bad)], capsys, bad)


def test_statistics_of_another_width_under_the_same_identity_are_refused(stats_files, tmp_path, capsys):
    a = arrays_of(stats_files["a"])
    narrow = a["embeddings"][:, :32]
    narrow = narrow / np.linalg.norm(narrow, axis=1, keepdims=True)
    mu, sigma = narrow.astype(np.float64).mean(axis=0), np.cov(narrow.astype(np.float64), rowvar=False)
    bad = crafted(tmp_path / "narrow.npz", stats_files["b"], embeddings=narrow, mu=mu, sigma=sigma,
                  labels=a["labels"], paths=a["paths"], count=None, sum=None, outer=None)
    load_stats(bad)  # a consistent file in itself
    assert "differ in embedding size" in refused(["compare", str(stats_files["b"]), str(bad)], capsys, bad)
    refused(["stats", "--merge", str(stats_files["b"]), str(bad), "-o", str(tmp_path / "m.npz")], capsys)
    assert not (tmp_path / "m.npz").exists()


def test_the_moments_read_alone_are_checked_and_merges_of_good_parts_still_hold(stats_files, tmp_path):
    good = stats_files["a"]
    for changes in ({"sum": nan_at_first(arrays_of(good)["sum"])}, {"count": np.int64(-1)},
                    {"outer": arrays_of(good)["outer"][:3]}, {"count": np.float64(40.0)}):
        bad = crafted(tmp_path / "bad.npz", good, **changes)
        with pytest.raises(DeepSpeakerError, match=f"^{bad}: "):
            load_moments(bad)
    merged = load_stats(stats_files["merged"])
    parts = [load_stats(stats_files[k]) for k in ("a", "b")]
    emb = np.concatenate([p.embeddings for p in parts]).astype(np.float64)
    np.testing.assert_allclose(merged.mu, emb.mean(axis=0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(merged.sigma, np.cov(emb, rowvar=False), rtol=0, atol=1e-15)
    assert load_moments(stats_files["merged"]).count == len(emb)


# ----- calibration files -----


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> tuple[Path, dict]:
    """A valid calibration file of the toy encoder (as 'calibrate' writes one) and its JSON."""
    path = tmp_path_factory.mktemp("calibration") / "toy.calibration.json"
    record = CalibrationRecord(Calibration(12.5, -6.0, 0.5), TOY, MeanFbank().identity, {"method": "none"},
                               {"source": {"audio_dir": "x"}, "n_target": 10, "file_digests": ["0123456789abcdef"]})
    save_calibration(path, record)
    return path, json.loads(path.read_text())


CALIBRATION_CASES: dict[str, Callable[[dict], Any]] = {
    "scale a string": lambda d: {**d, "scale": "12.5"},
    "scale true": lambda d: {**d, "scale": True},
    "scale a list": lambda d: {**d, "scale": [12.5]},
    "offset null": lambda d: {**d, "offset": None},
    "prior 0": lambda d: {**d, "prior": 0},
    "prior 1.5": lambda d: {**d, "prior": 1.5},
    "scale 1e308": lambda d: {**d, "scale": 1e308},
    "offset -1e308": lambda d: {**d, "offset": -1e308},
    "scale 1e7": lambda d: {**d, "scale": 1e7},
    "scale a huge integer": lambda d: {**d, "scale": 10 ** 400},
    "encoder a number": lambda d: {**d, "encoder": 5},
    "identity missing": lambda d: {k: v for k, v in d.items() if k != "model_identity"},
    "score_norm a list": lambda d: {**d, "score_norm": [["method", "none"]]},
    "score_norm without method": lambda d: {**d, "score_norm": {}},
    "fitted_on a string": lambda d: {**d, "fitted_on": "train"},
    "fitted_on without source": lambda d: {**d, "fitted_on": {"n_target": 3}},
    "digests a number": lambda d: {**d, "fitted_on": {**d["fitted_on"], "file_digests": 5}},
    "digests of numbers": lambda d: {**d, "fitted_on": {**d["fitted_on"], "file_digests": [1, 2]}},
    "a list": lambda d: [d],
}
# Tokens Python's JSON parser takes by default but no strict writer writes: replaced in the text.
CALIBRATION_TOKENS = {"scale NaN": "NaN", "scale Infinity": "Infinity", "scale -Infinity": "-Infinity",
                      "scale 1e999": "1e999"}


def _pair() -> list[str]:
    files = sorted(TEST_OTHER.rglob("*.flac"))
    return [str(files[0]), str(files[1])]


def test_the_valid_calibration_is_used(calibration, capsys):
    path, _ = calibration
    assert main(["verify", *_pair(), "--calibration", str(path), *TOY_ARGS]) == EXIT_OK
    assert "log-likelihood ratio" in capsys.readouterr().out


@pytest.mark.parametrize("case", sorted(CALIBRATION_CASES) + sorted(CALIBRATION_TOKENS))
def test_a_crafted_calibration_file_is_refused(case, calibration, tmp_path, capsys):
    _, data = calibration
    bad = tmp_path / "bad.calibration.json"
    if case in CALIBRATION_TOKENS:
        bad.write_text(json.dumps(data).replace('"scale": 12.5', f'"scale": {CALIBRATION_TOKENS[case]}'))
        assert CALIBRATION_TOKENS[case] in bad.read_text()
    else:
        bad.write_text(json.dumps(CALIBRATION_CASES[case](data)))
    before = bad.read_bytes()
    refused(["verify", *_pair(), "--calibration", str(bad), *TOY_ARGS], capsys, bad)
    report = tmp_path / "report.json"
    refused(["evaluate-verification", str(TEST_OTHER), "--calibration", str(bad), "--bootstrap", "0", "-o",
             str(report), *TOY_ARGS], capsys, bad)
    assert not report.exists() and bad.read_bytes() == before


def test_a_calibration_that_would_be_refused_is_never_written(calibration, tmp_path):
    path, _ = calibration
    record = read_calibration(path)
    for cal in (Calibration(math.nan, 0.0, 0.5), Calibration(1e308, 0.0, 0.5), Calibration(1.0, 0.0, 1.0)):
        with pytest.raises(DeepSpeakerError, match="field '(scale|prior)'"):
            save_calibration(tmp_path / "out.json", CalibrationRecord(cal, record.encoder, record.model_identity,
                                                                      record.score_norm, record.fitted_on))
    assert not (tmp_path / "out.json").exists()


# ----- cohort files -----


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """An embedding file of 12 real utterances by the toy encoder, as 'deep-speaker embed -o' writes it."""
    path = tmp_path_factory.mktemp("cohort") / "cohort.npz"
    files = sorted((REPO / "samples" / "librispeech" / "train-clean-100").rglob("*.flac"))[:12]
    encoder = MeanFbank()
    save_embeddings(path, encoder.embed_files(files), [str(f) for f in files], model_id=encoder.identity, encoder=TOY)
    return path


COHORT_CASES: dict[str, Callable[[dict[str, np.ndarray]], dict[str, Any]]] = {
    "1-D embeddings": lambda a: {"embeddings": a["embeddings"].ravel()},
    "3-D embeddings": lambda a: {"embeddings": a["embeddings"][None]},
    "another width": lambda a: {"embeddings": a["embeddings"][:, :32]},
    "NaN embeddings": lambda a: {"embeddings": nan_at_first(a["embeddings"])},
    "string embeddings": lambda a: {"embeddings": a["embeddings"].astype(str)},
    "paths of another length": lambda a: {"paths": a["paths"][:3]},
    "speakers of another length": lambda a: {"speakers": np.array(["s"] * 3)},
    "identity an array": lambda a: {"model_identity": np.array([1, 2])},
    "missing paths": lambda a: {"paths": None},
    "pickled paths": lambda a: {"paths": a["paths"].astype(object)},
}


def test_the_valid_cohort_is_used(cohort, scored, capsys):
    folder, _ = scored
    assert main(["evaluate-verification", str(folder), "--score-norm", "snorm", "--cohort", str(cohort),
                 "--bootstrap", "0", *TOY_ARGS]) == EXIT_OK
    capsys.readouterr()


@pytest.mark.parametrize("case", sorted(COHORT_CASES))
def test_a_crafted_cohort_is_refused(case, cohort, tmp_path, capsys):
    bad = crafted(tmp_path / "cohort.npz", cohort, **COHORT_CASES[case](arrays_of(cohort)))
    report = tmp_path / "report.json"
    refused(["evaluate-verification", str(TEST_OTHER), "--score-norm", "snorm", "--cohort", str(bad), "--bootstrap",
             "0", "-o", str(report), *TOY_ARGS], capsys, bad)
    refused(["verify", *_pair(), "--score-norm", "asnorm", "--cohort", str(bad), *TOY_ARGS], capsys, bad)
    assert not report.exists()


# ----- the trial scores beside a report (evaluate-verification --compare) -----


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> tuple[Path, Path]:
    """A small labelled folder and a report of it with its trial scores (REPORT.trials.npz)."""
    work = tmp_path_factory.mktemp("scored")
    folder = speakers_folder(work / "audio", sorted(p.name for p in TEST_OTHER.iterdir())[:3])
    report = work / "raw.json"
    assert main(["evaluate-verification", str(folder), "-o", str(report), "--bootstrap", "0", *TOY_ARGS]) == EXIT_OK
    assert (work / "raw.trials.npz").is_file()
    return folder, report


TRIAL_CASES: dict[str, Callable[[dict[str, np.ndarray]], dict[str, Any]]] = {
    "NaN scores": lambda a: {"scores": nan_at_first(a["scores"])},
    "2-D scores": lambda a: {"scores": a["scores"][None]},
    "string scores": lambda a: {"scores": a["scores"].astype(str)},
    "labels of 2": lambda a: {"labels": a["labels"] * 2},
    "labels of another length": lambda a: {"labels": a["labels"][:-1]},
    "float labels": lambda a: {"labels": a["labels"].astype(np.float64)},
    "numeric keys": lambda a: {"keys": np.arange(len(a["keys"]))},
    "scalar keys": lambda a: {"keys": np.str_("a\tb")},
    "missing scores": lambda a: {"scores": None},
    "pickled keys": lambda a: {"keys": a["keys"].astype(object)},
}


@pytest.mark.parametrize("case", sorted(TRIAL_CASES))
def test_crafted_trial_scores_are_refused(case, scored, tmp_path, capsys):
    folder, report = scored
    other = tmp_path / "other.json"
    other.write_bytes(report.read_bytes())
    bad = crafted(tmp_path / "other.trials.npz", report.with_name("raw.trials.npz"),
                  **TRIAL_CASES[case](arrays_of(report.with_name("raw.trials.npz"))))
    out = tmp_path / "new.json"
    refused(["evaluate-verification", str(folder), "--bootstrap", "0", "--compare", str(other), "-o", str(out),
             *TOY_ARGS], capsys, bad)
    assert not out.exists() and not (tmp_path / "new.trials.npz").exists()


# ----- the training state inside last.keras -----


def a_state(**changes: Any) -> dict:
    """A training state as a softmax run writes it (train.phases._state, train.callbacks.RunCheckpoint)."""
    state = {"started_from": None, "phase": "softmax", "seed": 0, "width": 0.0625, "precision": "float32",
             "crop_frames": 64, "batch_size": 24, "save_every": 2, "steps": 6, "speakers": ["a", "b"],
             "random_crops": False, "step": 2, "epoch": 1, "learning_rate": 0.003,
             "plateau": {"best": 0.5, "wait": 0, "cooldown_counter": 0}, "last_logs": {"loss": 1.2, "val_loss": None},
             "model_identity": "0123456789abcdef", "seed_states": {"dropout": [0, 7]}, "best_value": 0.5,
             "best_step": 2, "feature_settings": {"num_filters": 64}}
    return {**state, **changes}


def checkpoint(path: Path, state_text: str) -> Path:
    """A .keras zip carrying ``state_text`` as its state entry (the model entries are not read before it)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr(STATE_ENTRY, state_text)
    return path


STATE_CASES: dict[str, str] = {
    "a list": "[]",
    "not JSON": "{step: 2",
    "step a string": json.dumps(a_state(step="2")),
    "step negative": json.dumps(a_state(step=-1)),
    "step missing": json.dumps({k: v for k, v in a_state().items() if k != "step"}),
    "width a string": json.dumps(a_state(width="wide")),
    "width zero": json.dumps(a_state(width=0)),
    "best_value NaN": json.dumps(a_state()).replace('"best_value": 0.5', '"best_value": NaN'),
    "best_step a string": json.dumps(a_state(best_step="2")),
    "plateau wait a string": json.dumps(a_state(plateau={"wait": "x"})),
    "seed states of strings": json.dumps(a_state(seed_states={"dropout": ["a"]})),
    "last_logs a list": json.dumps(a_state(last_logs=[1.0])),
    "feature_settings a string": json.dumps(a_state(feature_settings="fbank")),
    "speakers of numbers": json.dumps(a_state(speakers=[1, 2])),
}


@pytest.fixture(scope="module")
def training_inputs(tmp_path_factory) -> Path:
    """Training inputs of two speakers (the softmax phase reads them before it resumes)."""
    from deep_speaker.data.features import FEATURE_SETTINGS
    from deep_speaker.data.inputs import INPUTS_FORMAT_VERSION

    path = tmp_path_factory.mktemp("inputs") / "full_inputs.npz"
    x = np.random.default_rng(0).normal(size=(4, 64, 64, 1)).astype(np.float32)
    np.savez(path, format_version=np.int64(INPUTS_FORMAT_VERSION), x_train=x, y_train=np.array([0, 1, 0, 1]),
             x_test=x[:2], y_test=np.array([0, 1]), speakers=np.array(["a", "b"]), crop_frames=np.int64(64),
             settings=np.array(json.dumps(FEATURE_SETTINGS, sort_keys=True)))
    return path


@pytest.mark.parametrize("case", sorted(STATE_CASES))
def test_a_tampered_checkpoint_state_is_refused_before_anything_is_written(case, training_inputs, tmp_path, capsys):
    run = tmp_path / "softmax"
    run.mkdir()
    last = checkpoint(run / LAST, STATE_CASES[case])
    (run / STATE).write_text(json.dumps(a_state(step=1)))  # a stale copy, which a good checkpoint would replace
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    refused(["train", "softmax", "--output_dir", str(tmp_path), "--data_filename", str(training_inputs), "--width",
             "0.0625", "--crop_frames", "64", "--batch_size", "4", "--steps", "4", "--save_every", "2"], capsys,
            last)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_tampered_best_checkpoint_leaves_the_state_copy_alone(tmp_path):
    checkpoint(tmp_path / LAST, json.dumps(a_state()))
    best = checkpoint(tmp_path / "best.keras", json.dumps(a_state(best_step="x")))
    (tmp_path / STATE).write_text(json.dumps(a_state(step=1)))
    before = (tmp_path / STATE).read_bytes()
    with pytest.raises(DeepSpeakerError, match=f"^{best} "):
        resume_state(tmp_path)
    assert (tmp_path / STATE).read_bytes() == before


def test_a_damaged_state_copy_is_restored_from_a_good_checkpoint(tmp_path):
    checkpoint(tmp_path / LAST, json.dumps(a_state()))
    for damaged in ("{not json", json.dumps(a_state(step="x")), "[]"):
        (tmp_path / STATE).write_text(damaged)
        assert resume_state(tmp_path) == a_state()
        assert json.loads((tmp_path / STATE).read_text()) == a_state()


def test_training_never_writes_a_state_it_could_not_resume_from(tmp_path):
    with pytest.raises(InternalError, match="cannot resume from"):
        save_checkpoint(None, tmp_path, a_state(step=math.nan))
    assert not any(tmp_path.iterdir())
