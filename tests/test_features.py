"""Features agree with the original path: python_speech_features.fbank + the per-frame Python loop."""

from __future__ import annotations

import numpy as np
import pytest
from python_speech_features import fbank

from deep_speaker.data.audio import read_audio
from deep_speaker.data.features import fbank_features, frame_signal


def reference_features(signal: np.ndarray) -> np.ndarray:
    """The original read_mfcc after trimming: psf.fbank(nfilt=64), then a Python loop normalising each frame."""
    energies, _ = fbank(signal, samplerate=16000, nfilt=64)
    return np.array([(v - np.mean(v)) / max(np.std(v), 1e-12) for v in energies], dtype=np.float32)


def test_every_librispeech_mini_file_matches_python_speech_features(libri_mini):
    files = sorted(libri_mini.rglob("*.flac"))
    assert len(files) == 100 + 232  # test-other + train-clean-100 (samples/README.md)
    worst = 0.0
    for path in files:
        signal = read_audio(path)
        ours = fbank_features(signal)
        ref = reference_features(signal)
        assert ours.dtype == np.float32 and ours.shape == ref.shape, path
        worst = max(worst, float(np.abs(ours - ref).max()))
    assert worst < 1e-4


def test_matches_features_the_original_code_computed(reference_checkpoint, libri_mini):
    ref = np.load(reference_checkpoint / "reference.npz", allow_pickle=False)
    for i, rel in enumerate(ref["paths"]):
        ours = fbank_features(read_audio(libri_mini / str(rel)))
        np.testing.assert_allclose(ours, ref[f"features_{i}"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("n", [1, 399, 400, 401, 560, 561, 16000])
def test_framing_matches_psf_framesig(n):
    from python_speech_features.sigproc import framesig

    x = np.random.default_rng(n).standard_normal(n)
    np.testing.assert_array_equal(frame_signal(x), framesig(x, 400, 160))
