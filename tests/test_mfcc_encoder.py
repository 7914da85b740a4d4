"""The mean-MFCC baseline encoder: its embeddings of real speech equal a plain loop (soundfile, python_speech_features,
a mean), it is registered by name, and its identity is a digest of its settings (no weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from python_speech_features import mfcc

from deep_speaker.data.audio import AudioError
from deep_speaker.encoders import available_encoders, encoder_declaration, get_encoder
from deep_speaker.encoders.mfcc import MeanMFCCEncoder

HELD_OUT = Path(__file__).resolve().parents[1] / "samples" / "librispeech" / "test-other"


@pytest.fixture(scope="module")
def files() -> list[Path]:
    """Two files of each of two speakers."""
    speakers = sorted(p for p in HELD_OUT.iterdir() if p.is_dir())[:2]
    return [f for s in speakers for f in sorted(s.rglob("*.flac"))[:2]]


def test_embeddings_equal_a_plain_loop(files: list[Path]) -> None:
    encoder = get_encoder("mean-mfcc")
    assert isinstance(encoder, MeanMFCCEncoder) and "mean-mfcc" in available_encoders()
    expected = []
    for path in files:
        signal, rate = sf.read(path, dtype="float32")
        assert rate == 16000
        expected.append(mfcc(signal, samplerate=16000).mean(axis=0))
    got = encoder.embed_files(files)
    assert got.shape == (len(files), 13) == (len(files), encoder.embedding_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-6, atol=1e-6)
    signal, _ = sf.read(files[0], dtype="float32")
    np.testing.assert_allclose(encoder.embed_signal(signal), expected[0], rtol=1e-6, atol=1e-6)


def test_resampled_input_and_too_short_audio(files: list[Path]) -> None:
    encoder = MeanMFCCEncoder()
    signal, _ = sf.read(files[0], dtype="float32")
    at_8k = signal[::2]  # any rate is resampled to 16 kHz first
    assert encoder.embed_signal(at_8k, 8000).shape == (13,)
    with pytest.raises(AudioError, match="too short"):
        encoder.embed_signal(signal[:100])


def test_identity_is_a_digest_of_the_settings_and_there_are_no_weights() -> None:
    a, b = MeanMFCCEncoder(), get_encoder("mean-mfcc")
    assert a.identity == b.identity and len(a.identity) == 16
    assert a.settings["numcep"] == 13 and a.settings["winlen"] == 0.025 and a.settings["winstep"] == 0.01
    assert a.weights.path is None and a.weights.package is None and a.weights.identity == a.identity
    declaration = encoder_declaration("mean-mfcc")
    assert declaration.options == () and not declaration.embeds_cached_features
