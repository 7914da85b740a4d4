"""The wavlm-sv encoder against transformers called directly, on a tiny WavLMForXVector the test writes itself
(the format of microsoft/wavlm-base-plus-sv, random seeded weights); and the original Deep Speaker .h5 through the
encoder interface against the original's outputs."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads here, whatever the code under test would try

import h5py
import huggingface_hub
import numpy as np
import pytest
import soundfile as sf
import torch  # imported, not importorskip'ed: CI installs the wavlm extra, so a missing package must fail here
import transformers

from deep_speaker.cli import main
from deep_speaker.encoders import get_encoder
from deep_speaker.errors import DeepSpeakerError

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = REPO / "samples" / "librispeech" / "test-other"
FILES = [str(p) for speaker in ("1688", "2414") for p in sorted((HELD_OUT / speaker).rglob("*.flac"))[:2]]
# transformers' WavLM attention hands torch a float position bias with a boolean padding mask: torch's notice.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")
INSTALL = "encoder 'wavlm-sv' needs the wavlm extra: pip install 'deep-speaker[wavlm]'"


def tiny_config() -> transformers.WavLMConfig:
    """wavlm-base-plus-sv's architecture (GroupNorm feature encoder, its convolutions and TDNN, weighted layer
    sum), narrow and 2 layers deep."""
    return transformers.WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                                    feat_extract_norm="group", tdnn_dim=(32, 32, 32, 32, 64), xvector_output_dim=16,
                                    use_weighted_layer_sum=True)


def write_tiny(folder: Path, model_class=transformers.WavLMForXVector, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model_class(tiny_config()).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                          return_attention_mask=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("wavlm") / "tiny")


@pytest.fixture(scope="module")
def encoder(tiny):
    return get_encoder("wavlm-sv", model=tiny)


def reference_embeddings(folder: Path, paths: list[str]) -> np.ndarray:
    """The model card's recipe, done here directly: soundfile, the feature extractor, outputs.embeddings, L2."""
    features = transformers.Wav2Vec2FeatureExtractor.from_pretrained(folder)
    model = transformers.WavLMForXVector.from_pretrained(folder).eval()
    rows = []
    for path in paths:
        signal, rate = sf.read(path, dtype="float32")
        assert rate == 16000  # the bundled speech is 16 kHz: nothing to resample
        with torch.no_grad():
            rows.append(model(**features(signal, sampling_rate=rate, return_tensors="pt")).embeddings[0].numpy())
    rows = np.stack(rows).astype(np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_files_equal_transformers_directly(encoder, tiny):
    assert encoder.name == "wavlm-sv" and encoder.sample_rate == 16000 and encoder.embedding_size == 16
    out = encoder.embed_files(FILES)
    assert out.shape == (4, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference_embeddings(tiny, FILES), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    # The signals path (any rate is resampled) gives the rows of the files path.
    signals = [sf.read(f, dtype="float32")[0] for f in FILES]
    np.testing.assert_allclose(encoder.embed_signals(signals, 16000), out, rtol=0, atol=1e-6)


def test_batch_of_different_lengths_equals_each_alone(encoder, tiny):
    # Padding a batch changes the shorter utterances' embeddings even with the attention mask (by up to 5e-2
    # here), so the encoder runs one utterance per pass: a file's embedding never depends on its neighbours.
    lengths = {sf.info(f).frames for f in FILES}
    assert len(lengths) == len(FILES)
    together = encoder.embed_files(FILES)
    alone = np.concatenate([encoder.embed_files([f]) for f in FILES])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)


def test_identity_follows_weights_config_and_settings(encoder, tiny, tmp_path):
    assert encoder.identity == get_encoder("wavlm-sv", model=tiny).identity
    changed = tmp_path / "changed"
    model = transformers.WavLMForXVector.from_pretrained(tiny)
    with torch.no_grad():
        model.tdnn[0].kernel.weight[0, 0] += 1e-3
    model.save_pretrained(changed)
    shutil.copy(tiny / "preprocessor_config.json", changed)
    other = get_encoder("wavlm-sv", model=changed)
    assert other.identity != encoder.identity
    assert np.abs(other.embed_files(FILES[:1]) - encoder.embed_files(FILES[:1])).max() > 1e-6
    # The feature extractor's settings count as well.
    renormed = tmp_path / "renormed"
    shutil.copytree(tiny, renormed)
    config = json.loads((renormed / "preprocessor_config.json").read_text())
    (renormed / "preprocessor_config.json").write_text(json.dumps({**config, "do_normalize": False}))
    assert get_encoder("wavlm-sv", model=renormed).identity != encoder.identity
    # An unrelated file beside the weights does not.
    (renormed / "README.md").write_text("notes")
    shutil.copy(tiny / "preprocessor_config.json", renormed)
    assert get_encoder("wavlm-sv", model=renormed).identity == encoder.identity


@pytest.mark.filterwarnings("ignore:std\\(\\):UserWarning")  # the probe below the limit
def test_too_short_input_is_a_failure_at_the_pooling_limit(encoder, tiny, tmp_path):
    # The limit is found by running the model: below it the x-vector statistics pooling has one frame and its std is
    # NaN. (transformers' _get_tdnn_output_lengths ignores the TDNN dilation, so it cannot be asked: it says 8
    # frames are lost where 14 are.)
    model = transformers.WavLMForXVector.from_pretrained(tiny).eval()
    speech = sf.read(FILES[0], dtype="float32")[0]

    def finite(n: int) -> bool:
        try:
            with torch.no_grad():
                return bool(torch.isfinite(model(torch.from_numpy(speech[16000:16000 + n])[None]).embeddings).all())
        except RuntimeError:  # no frame at all is left for the last TDNN layers
            return False

    low, high = 400, 16000  # finite(high) and not finite(low): bisect to the shortest finite length
    assert finite(high) and not finite(low)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if finite(middle) else (middle, high)
    shortest = high
    assert encoder.settings["min_audio_seconds"] == shortest / 16000
    short, enough = tmp_path / "short.wav", tmp_path / "enough.wav"
    sf.write(short, speech[16000:16000 + shortest - 1], 16000)
    sf.write(enough, speech[16000:16000 + shortest], 16000)
    result = encoder.embed_files_with_failures([str(short), str(enough), FILES[0]])
    assert result.paths == [str(enough), FILES[0]] and np.all(np.isfinite(result.embeddings))
    assert [f.path for f in result.failures] == [str(short)] and "too short" in result.failures[0].reason


def test_hub_id_resolves_in_the_local_cache_only(tiny, encoder, tmp_path, monkeypatch):
    # The cache layout huggingface_hub writes: models--ORG--NAME/refs/main -> snapshots/<commit>/files.
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--someone--tiny-sv" / "snapshots" / commit
    shutil.copytree(tiny, snapshot)
    (cache / "models--someone--tiny-sv" / "refs").mkdir()
    (cache / "models--someone--tiny-sv" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    cached = get_encoder("wavlm-sv", model="someone/tiny-sv")
    assert cached.folder == snapshot and cached.identity == encoder.identity
    np.testing.assert_array_equal(cached.embed_files(FILES[:1]), encoder.embed_files(FILES[:1]))
    with pytest.raises(DeepSpeakerError) as exc:
        get_encoder("wavlm-sv")  # the default, microsoft/wavlm-base-plus-sv, is not in this cache
    message = str(exc.value)
    assert "\n" not in message and "hf download microsoft/wavlm-base-plus-sv" in message and str(cache) in message


def test_bad_model_folders_and_devices_are_one_line_errors(tiny, tmp_path):
    cases = {tmp_path / "missing": "not a model folder", "./missing/folder": "not a model folder"}
    empty = tmp_path / "empty"
    empty.mkdir()
    cases[empty] = "cannot load a WavLMForXVector"
    # Plain WavLM weights (no speaker head): transformers would give the head random weights without a word.
    cases[write_tiny(tmp_path / "plain", transformers.WavLMModel)] = "no x-vector head"
    for model, expected in cases.items():
        with pytest.raises(DeepSpeakerError) as exc:
            get_encoder("wavlm-sv", model=model)
        assert expected in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
    with pytest.raises(DeepSpeakerError, match="device 'nonsense' unusable") as exc:
        get_encoder("wavlm-sv", model=tiny, device="nonsense")
    assert "\n" not in str(exc.value)


def test_missing_package_is_one_line(monkeypatch, capsys):
    # A fresh import of the module with transformers absent: the module itself imports; the encoder says what to do.
    # Imported first, whatever ran before (a shuffled order may run this test first, seed 3492315515): monkeypatch
    # then puts the real module back afterwards, so later tests never get the one imported without transformers.
    importlib.import_module("deep_speaker.encoders.wavlm")
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "deep_speaker.encoders.wavlm")
    with pytest.raises(DeepSpeakerError) as exc:
        get_encoder("wavlm-sv")
    assert str(exc.value) == INSTALL
    assert main(["verify", FILES[0], FILES[1], "--encoder", "wavlm-sv"]) == 2
    assert capsys.readouterr().err.strip().endswith(INSTALL)


def test_cli_verify_scores_the_cosine(encoder, tiny, capsys):
    assert main(["verify", FILES[0], FILES[2], "--encoder", "wavlm-sv", "--model", str(tiny)]) == 0
    rows = reference_embeddings(tiny, [FILES[0], FILES[2]])
    assert f"score (cosine similarity) = {rows[0] @ rows[1]:.4f}" in capsys.readouterr().out


def test_original_deep_speaker_checkpoint_through_the_encoder(reference_checkpoint, libri_mini, tmp_path):
    """The original's .h5, and its full-model layout under the released checkpoint's name, reproduce its outputs."""
    with np.load(reference_checkpoint / "reference.npz", allow_pickle=False) as data:
        path, expected = libri_mini / str(data["paths"][0]), data["full_embedding"][0]
    released = tmp_path / "ResCNN_triplet_training_checkpoint_265.h5"
    with h5py.File(reference_checkpoint / "ResCNN_random_triplet.h5", "r") as src, h5py.File(released, "w") as dst:
        weights = dst.create_group("model_weights")  # what the original's ModelCheckpoint writes
        for key, value in src.attrs.items():
            weights.attrs[key] = value
        for name in src:
            src.copy(src[name], weights, name=name)
    for model in (reference_checkpoint / "ResCNN_random_triplet.h5", released):
        # A window longer than the file: the model on all its frames, as the original computed full_embedding.
        out = get_encoder("deep-speaker", model=str(model), window_seconds=60).embed_files([path])
        np.testing.assert_allclose(out[0], expected, rtol=0, atol=1e-4)
