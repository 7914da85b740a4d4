"""The dev protocol of issue #33 on real bundled speech: a gender-balanced, deterministic choice of train-clean-100
speakers (genders read here from SPEAKERS.TXT), the dev set's conditions on disk, and its EERs against numpy cosines
of python_speech_features MFCC means and scikit-learn's ROC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from python_speech_features import mfcc
from conftest import sklearn_eer

from deep_speaker.encoders import get_encoder
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.eval.dev import (DEV_CONDITIONS, MANIFEST, condition_evaluations, dev_speakers, evaluate_dev,
                                  make_dev_set)

LIBRI = Path(__file__).resolve().parents[1] / "samples" / "librispeech"
TRAIN = LIBRI / "train-clean-100"
SECONDS = 4  # of each utterance: enough for three segments, quick to degrade
SEGMENTS = 3


def librispeech_genders() -> dict[str, str]:
    """Speaker -> 'F'/'M' from the ``ID | SEX | ...`` lines of SPEAKERS.TXT."""
    rows = [line.split("|") for line in (LIBRI / "SPEAKERS.TXT").read_text().splitlines() if not line.startswith(";")]
    return {r[0].strip(): r[1].strip() for r in rows if len(r) > 1}


def test_dev_speakers_are_gender_balanced_deterministic_and_bundled() -> None:
    chosen = dev_speakers(TRAIN, count=32, seed=0)
    genders = librispeech_genders()
    assert chosen == sorted(chosen) and len(set(chosen)) == 32
    assert all((TRAIN / s).is_dir() for s in chosen)
    assert sorted(genders[s] for s in chosen) == ["F"] * 16 + ["M"] * 16
    assert dev_speakers(TRAIN, count=32, seed=0) == chosen
    assert dev_speakers(TRAIN, count=32, seed=1) != chosen
    for bad in (1000, 7):
        with pytest.raises(DeepSpeakerError) as error:
            dev_speakers(TRAIN, count=bad)
        assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def short_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Four dev speakers (two of each gender) of train-clean-100, each utterance cut to its first SECONDS seconds,
    in LibriSpeech's speaker/chapter/utt layout."""
    speakers = dev_speakers(TRAIN, count=4, seed=3)
    root = tmp_path_factory.mktemp("short") / "train-clean-100"
    for speaker in speakers:
        for path in sorted((TRAIN / speaker).rglob("*.flac")):
            signal, rate = sf.read(path, dtype="int16")
            target = root / path.relative_to(TRAIN)
            target.parent.mkdir(parents=True, exist_ok=True)
            sf.write(target, signal[: SECONDS * rate], rate, subtype="PCM_16")
    return root, speakers


@pytest.fixture(scope="module")
def dev_set(short_corpus: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, speakers = short_corpus
    return make_dev_set(root, speakers, tmp_path_factory.mktemp("dev") / "dev", seed=0)


def names() -> list[str]:
    return ["clean" if level is None else f"{kind}@{level:g}" for kind, level in DEV_CONDITIONS]


def test_make_dev_set_writes_every_condition(short_corpus: tuple[Path, list[str]], dev_set: Path) -> None:
    root, speakers = short_corpus
    sources = {p.stem: p for p in root.rglob("*.flac")}
    assert sorted(p.name for p in dev_set.iterdir()) == sorted([MANIFEST, *names()])
    for name in names():
        files = sorted((dev_set / name).rglob("*.flac"))
        assert sorted({f.parent.name for f in files}) == speakers and len(files) == len(sources)
        assert all(sf.info(str(f)).samplerate == 16000 for f in files)
    for stem, source in sources.items():
        speaker = source.relative_to(root).parts[0]
        clean, _ = sf.read(dev_set / "clean" / speaker / f"{stem}.flac", dtype="int16")
        np.testing.assert_array_equal(clean, sf.read(source, dtype="int16")[0])
        tempo = sf.info(str(dev_set / "tempo@1.25" / speaker / f"{stem}.flac")).frames
        assert tempo / clean.size == pytest.approx(1 / 1.25, abs=1e-3)
        assert not np.array_equal(sf.read(dev_set / "codec@0.97" / speaker / f"{stem}.flac", dtype="int16")[0], clean)


def test_make_dev_set_reuses_its_own_folder_and_refuses_others(short_corpus: tuple[Path, list[str]],
                                                               dev_set: Path, tmp_path: Path) -> None:
    root, speakers = short_corpus
    stamps = {p: p.stat().st_mtime_ns for p in dev_set.rglob("*.flac")}
    assert make_dev_set(root, speakers, dev_set, seed=0) == dev_set
    assert {p: p.stat().st_mtime_ns for p in dev_set.rglob("*.flac")} == stamps  # nothing written again
    with pytest.raises(DeepSpeakerError, match="other settings") as error:
        make_dev_set(root, speakers, dev_set, seed=1)
    assert "\n" not in str(error.value)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DeepSpeakerError, match="not a dev set") as error:
        make_dev_set(root, speakers, foreign)
    assert "\n" not in str(error.value) and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def reference_eer(folder: Path) -> float:
    """EER of all pairs of the SEGMENTS parts of every file: numpy cosines of mean MFCCs, scikit-learn's ROC,
    interpolated where FAR and FRR cross."""
    rows, speakers = [], []
    for path in sorted(folder.rglob("*.flac")):
        signal, _ = sf.read(path, dtype="float32")
        for part in np.array_split(signal, SEGMENTS):
            rows.append(mfcc(part, samplerate=16000).mean(axis=0))
            speakers.append(path.parent.name)
    x = np.asarray(rows, dtype=np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), k=1)
    scores = np.einsum("ij,ij->i", x[i], x[j])
    labels = (np.asarray(speakers)[i] == np.asarray(speakers)[j]).astype(int)
    return sklearn_eer(scores, labels)


def test_evaluate_dev_matches_an_independent_computation(dev_set: Path) -> None:
    encoder = get_encoder("mean-mfcc")
    report = evaluate_dev(encoder, dev_set, segments=SEGMENTS, bootstrap=100, seed=0, baseline=encoder)
    assert list(report["conditions"]) == names()
    for name in names():
        condition = report["conditions"][name]
        assert condition["eer"] == pytest.approx(reference_eer(dev_set / name), abs=1e-4)
        assert condition["n_trials"] == 12 * 11 // 2 and condition["n_target"] == 4 * 3
        assert condition["intervals"]["eer"]["low"] <= condition["intervals"]["eer"]["high"]
    ood = [n for n in names() if n != "clean"]
    assert report["ood"]["conditions"] == ood
    mean = np.mean([report["conditions"][n]["eer"] for n in ood])
    assert report["ood"]["eer"]["value"] == pytest.approx(mean, abs=1e-12)
    assert report["ood"]["eer"]["low"] <= report["ood"]["eer"]["high"]
    # the encoder against itself: every paired difference and its interval is zero
    baseline = report["baseline"]
    assert baseline["ood_eer"] == pytest.approx(mean, abs=1e-12)
    for name in names():
        assert baseline["difference"][name]["eer"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert baseline["ood_difference"]["eer"] == {"value": 0.0, "low": 0.0, "high": 0.0}


def test_condition_evaluations_are_the_conditions_scores_of_the_same_trials(dev_set: Path) -> None:
    results = condition_evaluations(get_encoder("mean-mfcc"), dev_set, segments=SEGMENTS)
    assert list(results) == names()
    for name, result in results.items():
        assert sklearn_eer(result.scores, result.labels) == pytest.approx(reference_eer(dev_set / name), abs=1e-4)
        assert result.trial_speakers() == results["clean"].trial_speakers()
        assert "intervals" not in result.report


def test_evaluate_dev_without_bootstrap_and_of_a_foreign_folder(dev_set: Path, tmp_path: Path) -> None:
    report = evaluate_dev(get_encoder("mean-mfcc"), dev_set, segments=SEGMENTS, bootstrap=0)
    assert "intervals" not in report["conditions"]["clean"]
    assert report["ood"]["eer"] == {"value": pytest.approx(np.mean(
        [report["conditions"][n]["eer"] for n in names() if n != "clean"]))}
    with pytest.raises(DeepSpeakerError, match="not a dev set"):
        evaluate_dev(get_encoder("mean-mfcc"), tmp_path)
