"""Classifier scores from a softmax-head model: p(y|x) per file and the IS/mIS/AM that `compare` reports."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from deep_speaker.cli import main
from deep_speaker.data.audio import read_audio
from deep_speaker.data.features import fbank_features
from deep_speaker.encoders.deepspeaker import SpeakerClassifier
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.metrics import inception_score
from deep_speaker.model.rescnn import build_rescnn

REPO = Path(__file__).resolve().parents[1]
SPEAKERS = REPO / "samples" / "librispeech" / "test-other"


@pytest.fixture(scope="module")
def softmax_model(tmp_path_factory) -> Path:
    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("clf") / "softmax.keras"
    build_rescnn(width=0.125, num_speakers=7).save(path)
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """Two speakers x 10 utterances of real held-out speech (links): enough rows for IS's 10 splits."""
    root = tmp_path_factory.mktemp("speech")
    for speaker in sorted(SPEAKERS.iterdir())[:2]:
        for flac in sorted(speaker.rglob("*.flac")):
            (root / speaker.name).mkdir(exist_ok=True)
            (root / speaker.name / flac.name).symlink_to(flac)
    return root


def test_probabilities_are_the_mean_softmax_over_windows(softmax_model, speech):
    files = sorted(speech.rglob("*.flac"))
    classifier = SpeakerClassifier(softmax_model, window_seconds=1.6, hop_seconds=1.6)
    probs = classifier.embed_files(files)
    assert probs.shape == (len(files), 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    model = keras.saving.load_model(softmax_model)
    for row, path in zip(probs, files):
        feats = fbank_features(read_audio(path))
        starts = range(0, feats.shape[0] - 160 + 1, 160)  # windows that fit, plus the one ending at the last frame
        windows = [feats[s:s + 160] for s in starts]
        if (feats.shape[0] - 160) % 160:
            windows.append(feats[-160:])
        expected = model.predict(np.stack(windows)[..., None], verbose=0).mean(axis=0)
        np.testing.assert_allclose(row, expected, atol=1e-5)


def test_utterance_pooling_gives_the_softmax_of_each_whole_utterance(softmax_model, speech):
    files = sorted(speech.rglob("*.flac"))[:4]
    probs = SpeakerClassifier(softmax_model, pooling="utterance").embed_files(files)
    model = keras.saving.load_model(softmax_model)
    for row, path in zip(probs, files):
        feats = fbank_features(read_audio(path))
        padded = np.zeros((-(-feats.shape[0] // 16) * 16, 64), np.float32)  # to the network's stride
        padded[:feats.shape[0]] = feats
        np.testing.assert_allclose(row, model.predict(padded[None, ..., None], verbose=0)[0], atol=1e-5)


def test_embedding_model_is_refused(speech, tmp_path):
    path = tmp_path / "emb.keras"
    build_rescnn(width=0.125).save(path)
    with pytest.raises(DeepSpeakerError, match="softmax head"):
        SpeakerClassifier(path)


def test_compare_with_classifier_reports_is_of_its_probabilities(softmax_model, speech, tmp_path):
    emb_model = tmp_path / "emb.keras"
    build_rescnn(width=0.125).save(emb_model)
    out = tmp_path / "report.json"
    assert main(["compare", str(speech), str(speech), "--model", str(emb_model), "--classifier",
                 str(softmax_model), "--num-splits", "2", "--num-subsets", "5", "--fd-inf-points", "3",
                 "--ndb-bins", "2", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    probs = SpeakerClassifier(softmax_model).embed_files(sorted(speech.rglob("*.flac")))
    is_mean, _ = inception_score(probs, splits=10)
    assert report["classifier"]["is"] == pytest.approx(is_mean, rel=1e-5)
    assert report["classifier"]["am"] is not None and report["classifier"]["mis"] is not None
