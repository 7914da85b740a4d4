"""The packaged default model: found with no --model, announced once, and as good as its model card says."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import sklearn_eer

from deep_speaker.encoders import deepspeaker
from deep_speaker.encoders.deepspeaker import PACKAGED_MODEL_DIR, Embedder

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = REPO / "samples" / "librispeech" / "test-other"


@pytest.fixture(scope="module")
def card() -> dict:
    path = PACKAGED_MODEL_DIR / "model_card.json"
    assert path.is_file(), "the package ships no default model (python scripts/train_default_model.py)"
    return json.loads(path.read_text())


def test_model_card_names_a_small_shipped_model(card):
    model = PACKAGED_MODEL_DIR / card["model"]
    assert model.is_file() and model.stat().st_size < 20 * 2**20
    assert "samples" in card["training_data"] and 0.0 <= card["eer"] <= 0.5


def test_no_model_means_the_packaged_one_and_reproduces_its_card(card, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # no ./checkpoints here: the packaged model is the default
    # Announced once per process, and configure_logging (called by earlier tests) stops propagation: the test
    # sets both, so it does not depend on what ran before it.
    monkeypatch.setattr(deepspeaker, "_announced", set())
    monkeypatch.setattr(logging.getLogger("deep_speaker"), "propagate", True)
    with caplog.at_level(logging.WARNING):
        embedder = Embedder()
    # A warning, so that Python's last-resort handler shows it to users who set up no logging. (In the whole suite
    # caplog may hold the record twice, through a handler an earlier test left on a logger on the way up.)
    levels = {r.levelno for r in caplog.records if card["model"] in r.getMessage()}
    assert levels == {logging.WARNING}
    assert embedder.identity == card["model_identity"] and embedder.pooling == card.get("pooling", "windows")

    files = sorted(HELD_OUT.rglob("*.flac"))
    speakers = np.array([f.parent.parent.name for f in files])
    emb = embedder.embed_files(files).astype(np.float64)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    rows, cols = np.triu_indices(len(files), 1)
    scores = np.einsum("ij,ij->i", emb[rows], emb[cols])
    labels = (speakers[rows] == speakers[cols]).astype(int)
    assert sklearn_eer(scores, labels) == pytest.approx(card["eer"], abs=2e-3)  # independent: scikit-learn's ROC
    assert scores[labels == 1].mean() == pytest.approx(card["sap"], abs=2e-3)
    assert scores[labels == 0].mean() == pytest.approx(card["san"], abs=2e-3)


def test_its_dev_speakers_were_held_out_and_its_clean_dev_eer_is_reproduced(card):
    """The card's dev speakers are the dev protocol's (16 of each gender per SPEAKERS.TXT, read here), none of its
    training speakers; its clean dev EER: each utterance read at 16 kHz, cut in 3 equal parts, all pairs (numpy
    cosine, scikit-learn's ROC)."""
    import soundfile as sf

    from deep_speaker.data.audio import load_audio

    dev = card["dev_protocol"]["speakers"]
    train = REPO / "samples" / "librispeech" / "train-clean-100"
    rows = [line.split("|") for line in (train.parent / "SPEAKERS.TXT").read_text().splitlines()
            if not line.startswith(";")]
    sex = {r[0].strip(): r[1].strip() for r in rows if len(r) > 1}
    assert len(dev) == 32 and sorted(sex[s] for s in dev) == ["F"] * 16 + ["M"] * 16
    bundled = {p.name for p in train.iterdir() if p.is_dir()}
    assert set(dev) <= bundled and f"{len(bundled) - len(dev)} LibriSpeech" in card["training_data"]
    files = sorted(f for s in dev for f in (train / s).rglob("*.flac"))
    assert all(sf.info(f).samplerate == 16000 for f in files)
    parts = [part for f in files for part in np.array_split(load_audio(f), 3)]
    speakers = np.repeat([f.relative_to(train).parts[0] for f in files], 3)
    emb = Embedder().embed_signals(parts).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    first, second = np.triu_indices(len(parts), 1)
    scores = np.einsum("ij,ij->i", emb[first], emb[second])
    labels = (speakers[first] == speakers[second]).astype(int)
    assert sklearn_eer(scores, labels) == pytest.approx(card["dev_protocol"]["eer"]["clean"], abs=2e-3)
