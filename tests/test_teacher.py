"""Knowledge distillation from a registered encoder (--teacher, #33) on real speech: the teacher targets are the
Resemblyzer package's own embeddings of each utterance's clean audio (speed-perturbed for a speed copy); the
trained model's loss holds the distillation term as its formula says (numpy), for either --teacher_loss; with
--speaker_weight 0 the labels change nothing and one folder of speech trains; what it does not support is refused
in one line, before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soxr

from deep_speaker.cli import main
from deep_speaker.data.audio import read_audio
from deep_speaker.data.cache import FeatureCache, augment_cache, build_cache
from deep_speaker.data.targets import TeacherTargets, read_targets, target_key, write_targets
from deep_speaker.encoders import get_encoder
from deep_speaker.encoders.teacher import ensure_teacher_targets, package_licence, teacher_card
from deep_speaker.errors import DeepSpeakerError

STEPS = ["--width", "0.0625", "--crop_frames", "64", "--batch_size", "12", "--steps", "2", "--save_every", "1",
         "--fit_verbose", "0"]


@pytest.fixture(scope="module")
def cache(libri_mini, tmp_path_factory) -> Path:
    """4 bundled train-clean-100 speakers (1 utterance each) with one augmented copy each (noise or speed)."""
    root = tmp_path_factory.mktemp("teacher")
    for speaker in sorted((libri_mini / "train-clean-100").iterdir())[:4]:
        (root / "audio").mkdir(exist_ok=True)
        (root / "audio" / speaker.name).symlink_to(speaker)
    build_cache(root / "audio", root / "cache", progress=False)
    augment_cache(root / "cache", ["noise", "speed"], 1, seed=0)
    return root / "cache"


@pytest.fixture(scope="module")
def run(cache, tmp_path_factory) -> Path:
    """2 softmax steps distilling from Resemblyzer, through the command line."""
    out = tmp_path_factory.mktemp("teacher-run")
    assert main(["train", "softmax", "--cache_dir", str(cache), "--random-crops", "--teacher", "resemblyzer",
                 "--teacher_weight", "2", "--output_dir", str(out), *STEPS]) == 0
    return out


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("deep-speaker: error:")]


def test_targets_are_the_package_embeddings_of_the_clean_source(run, cache) -> None:
    """Each entry's target (as the run's command line wrote them): resemblyzer's
    VoiceEncoder.embed_utterance(preprocess_wav(audio)) of its source audio as the cache read it (percentile trim),
    played at the copy's speed (soxr, as a speed copy is made)."""
    from resemblyzer import VoiceEncoder, preprocess_wav

    source = FeatureCache(cache)
    targets = read_targets(run / "teacher" / "resemblyzer.npz")
    package = VoiceEncoder("cpu", verbose=False)
    speeds = set()
    for speaker, utterance in source.utterances():
        entry = source.entry(speaker, utterance)
        speed = entry.get("augment", {}).get("speed", 1.0)
        speeds.add(speed)
        signal = read_audio(entry["source"])
        if speed != 1.0:
            signal = soxr.resample(signal, 16000 * speed, 16000, quality="HQ")
        expected = package.embed_utterance(preprocess_wav(signal, source_sr=16000))
        got = targets.rows([target_key(speaker, utterance)])[0]
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert 1.0 in speeds and len(speeds) > 1  # originals or noise copies, and at least one speed copy


def test_a_run_with_a_teacher_adds_the_distillation_loss(run, cache) -> None:
    """The loss of a batch with the teacher's rows t minus that with -t is 2 x weight x mean cos(W e + b, t)
    (e: the affine embedding, W, b: the projection), computed here in numpy."""
    import keras

    from deep_speaker.model.checkpoints import read_state
    from deep_speaker.model.rescnn import load_model, teacher_of, to_embedding_model
    from deep_speaker.train.batching import RandomCropBatches, speaker_segments

    state = read_state(run / "softmax")
    targets = read_targets(run / "teacher" / "resemblyzer.npz")
    assert (state["teacher"], state["teacher_weight"], state["teacher_identity"]) == (
        "resemblyzer", 2.0, get_encoder("resemblyzer").identity) == (targets.teacher, 2.0, targets.identity)
    model = load_model(run / "softmax" / "last.keras")
    assert teacher_of(model) == (256, 2.0, "projection")
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy())  # any fixed loss: it cancels in the difference
    segments, _ = speaker_segments(FeatureCache(cache), 0.2, 0)
    (x, t), y = RandomCropBatches(FeatureCache(cache), segments, 64, 12, 1, teacher=targets)[0]
    with_t = model.evaluate((x, t), y, verbose=0, batch_size=12)
    with_minus_t = model.evaluate((x, -t), y, verbose=0, batch_size=12)
    affine = keras.Model(model.inputs[0], model.get_layer("affine").output).predict(x, verbose=0)
    kernel, bias = model.get_layer("teacher-projection").get_weights()
    p = affine.astype(np.float64) @ kernel + bias
    cosine = np.sum(p * t, axis=1) / np.linalg.norm(p, axis=1) / np.linalg.norm(t, axis=1)
    assert with_minus_t - with_t == pytest.approx(2 * 2.0 * cosine.mean(), abs=1e-4)
    embedding = to_embedding_model(model)  # the projection goes with the head
    assert len(embedding.inputs) == 1 and embedding.output_shape == (None, 512)


@pytest.mark.parametrize(("options", "refused"), [
    (["train", "triplet"], "softmax phase only"),
    (["train", "softmax"], "needs --random-crops"),
    (["train", "softmax", "--random-crops", "--input_pipeline", "tfdata"], "pydataset only"),
    (["train", "softmax", "--random-crops", "--strategy", "mirrored"], "one device"),
    (["train", "softmax", "--random-crops", "--teacher_weight", "0"], "must be positive"),
    (["train", "softmax", "--random-crops", "--speaker_weight", "-1"], "must be 0 (distillation alone) or positive"),
])
def test_what_a_teacher_cannot_do_is_one_line_before_anything_is_written(cache, tmp_path, capsys, options,
                                                                         refused) -> None:
    code = main([*options, "--teacher", "resemblyzer", "--cache_dir", str(cache), "--output_dir",
                 str(tmp_path / "out"), *STEPS])
    errors = error_lines(capsys.readouterr().err)
    assert code == 2 and len(errors) == 1 and refused in errors[0], errors
    assert not (tmp_path / "out").exists()


def crops_and_targets(cache: Path, run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch of 12 crops of the cache, their teacher rows (the run's targets) and speaker labels."""
    from deep_speaker.train.batching import RandomCropBatches, speaker_segments

    source = FeatureCache(cache)
    segments, _ = speaker_segments(source, 0.2, 0, fewest=1)
    (x, t), y = RandomCropBatches(source, segments, 64, 12, 1, teacher=read_targets(run / "teacher" /
                                                                                    "resemblyzer.npz"))[0]
    return x, t, y


def affine_of(model, x: np.ndarray) -> np.ndarray:
    import keras

    return keras.Model(model.inputs[0], model.get_layer("affine").output).predict(x, verbose=0).astype(np.float64)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_pairwise_loss_matches_the_teachers_cosines(cache, tmp_path) -> None:
    """--teacher_loss pairwise: the loss with the teacher's rows t minus that with random rows u is
    weight x (P(t) - P(u)), P(t) = sum_{i != j} (cos(e_i, e_j) - cos(t_i, t_j))^2 / (n (n - 1)), in numpy."""
    import keras

    from deep_speaker.model.rescnn import load_model, teacher_of, to_embedding_model

    assert main(["train", "softmax", "--cache_dir", str(cache), "--random-crops", "--teacher", "resemblyzer",
                 "--teacher_loss", "pairwise", "--teacher_weight", "3", "--output_dir", str(tmp_path),
                 *STEPS]) == 0
    model = load_model(tmp_path / "softmax" / "last.keras")
    assert teacher_of(model) == (256, 3.0, "pairwise")
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy())
    x, t, y = crops_and_targets(cache, tmp_path)
    u = np.random.default_rng(0).standard_normal(t.shape).astype(np.float32)  # other rows: other cosines
    e = unit(affine_of(model, x))

    def pairwise(rows):
        rows = unit(rows.astype(np.float64))
        return np.sum((e @ e.T - rows @ rows.T) ** 2) / (len(e) * (len(e) - 1))

    difference = model.evaluate((x, t), y, verbose=0, batch_size=12) - model.evaluate((x, u), y, verbose=0,
                                                                                      batch_size=12)
    assert abs(pairwise(t) - pairwise(u)) > 1e-3  # the check can fail
    assert difference == pytest.approx(3.0 * (pairwise(t) - pairwise(u)), abs=1e-4)
    assert len(to_embedding_model(model).inputs) == 1


def test_distillation_alone_ignores_the_labels(cache, tmp_path) -> None:
    """--speaker_weight 0: the trained model's loss does not move with the labels (it does once the speaker loss
    weighs 1); the best checkpoint is the one of the lowest held-out (distillation) loss."""
    import csv

    import keras

    from deep_speaker.model.checkpoints import read_state

    assert main(["train", "softmax", "--cache_dir", str(cache), "--random-crops", "--teacher", "resemblyzer",
                 "--speaker_weight", "0", "--output_dir", str(tmp_path), *STEPS[:-4], "--steps", "3",
                 "--save_every", "1", "--fit_verbose", "0"]) == 0
    state = read_state(tmp_path / "softmax")
    with open(tmp_path / "softmax" / "log.csv") as f:
        val_losses = [float(row["val_loss"]) for row in csv.DictReader(f)]
    assert state["speaker_weight"] == 0.0 and state["best_value"] == pytest.approx(min(val_losses))
    x, t, y = crops_and_targets(cache, tmp_path)
    other = (y + 1) % (y.max() + 1)
    model = keras.saving.load_model(tmp_path / "softmax" / "last.keras", safe_mode=True)  # compiled as trained

    def gap() -> float:
        def loss(labels):
            return model.evaluate((x, t), labels, verbose=0, batch_size=12, return_dict=True)["loss"]

        return abs(loss(y) - loss(other))

    assert gap() < 1e-6
    model.compile(loss=model.loss)  # the speaker loss at weight 1: now the labels count
    assert gap() > 1e-3


def test_distillation_alone_trains_on_one_folder_of_speech(libri_mini, tmp_path) -> None:
    """Speech whose speakers are unknown (3 speakers' files in one folder) trains with --speaker_weight 0 and is
    refused without it."""
    folder = tmp_path / "audio" / "recordings"
    folder.mkdir(parents=True)
    for speaker in sorted((libri_mini / "train-clean-100").iterdir())[:3]:
        for flac in speaker.rglob("*.flac"):
            (folder / flac.name).symlink_to(flac)
    build_cache(tmp_path / "audio", tmp_path / "cache", progress=False)
    options = ["train", "softmax", "--cache_dir", str(tmp_path / "cache"), "--random-crops", "--teacher",
               "resemblyzer", *STEPS]
    assert main([*options, "--output_dir", str(tmp_path / "labelled")]) == 2
    assert main([*options, "--speaker_weight", "0", "--output_dir", str(tmp_path / "alone")]) == 0
    assert (tmp_path / "alone" / "softmax" / "best.keras").is_file()


def test_resuming_with_another_teacher_or_none_is_refused(run, cache, capsys) -> None:
    """The run was trained with a 256-d teacher at weight 2 (projection), the speaker loss at weight 1."""
    there = "with a 256-d teacher at weight 2 (projection) is there"
    for options, said in ((["--teacher", "resemblyzer", "--teacher_weight", "1"], (there, "at weight 1")),
                          (["--teacher", "resemblyzer", "--teacher_weight", "2", "--teacher_loss", "pairwise"],
                           (there, "at weight 2 (pairwise)")),
                          (["--teacher", "resemblyzer", "--teacher_weight", "2", "--speaker_weight", "0"],
                           ("--speaker_weight 1 is there; this run uses 0",)),
                          ([], (there, "trains without a teacher"))):
        code = main(["train", "softmax", "--cache_dir", str(cache), "--random-crops", "--output_dir", str(run),
                     *options, *STEPS[:-4], "--steps", "3", "--save_every", "1", "--fit_verbose", "0"])
        errors = error_lines(capsys.readouterr().err)
        assert code == 2 and len(errors) == 1 and all(words in errors[0] for words in said), errors


def test_targets_of_another_cache_or_teacher_or_damaged_are_refused(cache, tmp_path) -> None:
    source = FeatureCache(cache)
    keys = [target_key(s, u) for s, u in source.utterances()]
    rows = np.eye(len(keys), 8, dtype=np.float32)
    path = write_targets(tmp_path / "t.npz", TeacherTargets(keys[1:], rows[1:], "resemblyzer", "x"))
    with pytest.raises(DeepSpeakerError, match=f"no teacher target for 1 utterance.*{keys[0]}"):
        read_targets(path).check_covers(source, path)
    write_targets(path, TeacherTargets(keys, rows, "wespeaker", "x"))
    with pytest.raises(DeepSpeakerError, match="teacher wespeaker, not resemblyzer"):
        ensure_teacher_targets("resemblyzer", cache, path)
    write_targets(path, TeacherTargets(keys, 2 * rows, "resemblyzer", "x"))
    with pytest.raises(DeepSpeakerError, match="not unit vectors"):
        read_targets(path)
    path.write_bytes(b"not an npz")
    with pytest.raises(DeepSpeakerError, match="not an .npz"):
        read_targets(path)


@pytest.mark.parametrize(("options", "refused"), [
    (["--teacher", "nope"], "unknown teacher 'nope'"),
    (["--speaker-weight", "0"], "--speaker_weight needs --teacher"),
    (["--teacher-loss", "pairwise"], "--teacher_loss needs --teacher"),
    (["--teacher", "resemblyzer", "--teacher-weight", "0"], "must be positive"),
    (["--teacher", "resemblyzer", "--speaker-weight", "-1"], "must be 0 (distillation alone) or positive"),
])
def test_the_job_refuses_a_teacher_it_cannot_use_before_any_work(tmp_path, capsys, options, refused) -> None:
    code = main(["run", *options, "-o", str(tmp_path / "job")])
    errors = error_lines(capsys.readouterr().err)
    assert code == 2 and len(errors) == 1 and refused in errors[0], errors
    assert not (tmp_path / "job").exists()


def test_the_card_names_the_teacher_and_its_licence() -> None:
    """The licence is read from the installed package's metadata: Resemblyzer declares Apache 2.0 by classifier."""
    card = teacher_card("resemblyzer", "abc")
    assert card["encoder"] == "resemblyzer" and card["weights_package"].startswith("resemblyzer ")
    assert card["licence"] == "Apache Software License" == package_licence("Resemblyzer")
    assert package_licence("surely-not-installed-package") is None
