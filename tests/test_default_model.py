"""The packaged default model: found with no --model, announced once, and as good as its model card says."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve

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
    assert embedder.identity == card["model_identity"]

    files = sorted(HELD_OUT.rglob("*.flac"))
    speakers = np.array([f.parent.parent.name for f in files])
    emb = embedder.embed_files(files).astype(np.float64)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    rows, cols = np.triu_indices(len(files), 1)
    scores = np.einsum("ij,ij->i", emb[rows], emb[cols])
    labels = (speakers[rows] == speakers[cols]).astype(int)
    # Independent EER: scikit-learn's ROC, crossing of FAR and FRR interpolated.
    far, tpr, _ = roc_curve(labels, scores)
    frr = 1.0 - tpr
    i = np.flatnonzero(far >= frr)[0]
    t = (frr[i - 1] - far[i - 1]) / ((far[i] - far[i - 1]) - (frr[i] - frr[i - 1]))
    eer = far[i - 1] + t * (far[i] - far[i - 1])
    assert eer == pytest.approx(card["eer"], abs=2e-3)
    assert scores[labels == 1].mean() == pytest.approx(card["sap"], abs=2e-3)
    assert scores[labels == 0].mean() == pytest.approx(card["san"], abs=2e-3)
