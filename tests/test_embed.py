"""Embedder against independent computations: the original's reference outputs and the model called directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from deep_speaker.data.audio import load_audio
from deep_speaker.data.features import extract_features
from deep_speaker.encoders.deepspeaker import Embedder, split_pieces
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.eval.export import save_embeddings
from deep_speaker.model.rescnn import load_model


@pytest.fixture(scope="module")
def model(reference_checkpoint):
    return load_model(reference_checkpoint / "ResCNN_random_triplet.h5")


@pytest.fixture(scope="module")
def reference(reference_checkpoint):
    with np.load(reference_checkpoint / "reference.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def files(libri_mini):
    return sorted(str(p) for p in (libri_mini / "test-other").rglob("*.flac"))[:6]


def direct(model, features: np.ndarray) -> np.ndarray:
    """The model's own output on one input [T, 64] (batch of one, Keras predict)."""
    return model.predict(features[None, :, :, None], verbose=0)[0]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def test_whole_file_equals_original_reference(model, reference, libri_mini):
    # A window longer than the file: the embedding is the model on all its frames, as the original computed it.
    embedder = Embedder(model, window_seconds=60)
    out = embedder.embed_files([libri_mini / str(reference["paths"][0])])
    assert out.shape == (1, 512)
    np.testing.assert_allclose(out[0], reference["full_embedding"][0], atol=1e-4)


def test_crops_equal_original_reference(model, reference):
    out = Embedder(model).embed_features_batch([c[:, :, 0] for c in reference["crops"]])
    np.testing.assert_allclose(out, reference["crop_embeddings"], atol=1e-5)


def test_long_file_is_normalised_mean_of_its_windows(model, libri_mini, reference):
    path = libri_mini / str(reference["paths"][0])
    features = extract_features(path)
    window, hop = 160, 80
    starts = list(range(0, len(features) - window + 1, hop))
    if starts[-1] != len(features) - window:
        starts.append(len(features) - window)  # the tail window, aligned to the last frame
    expected = unit(np.mean([direct(model, features[s:s + window]) for s in starts], axis=0))
    got = Embedder(model, window_seconds=1.6, hop_seconds=0.8).embed_files([path])[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len(starts) > 10


def test_short_utterance_is_zero_padded(model, reference):
    features = reference["features_3"][:100]
    padded = np.zeros((160, 64), np.float32)
    padded[:100] = features
    np.testing.assert_allclose(Embedder(model).embed_features(features), direct(model, padded), atol=1e-5)


def padded_to(features: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros((length, features.shape[1]), np.float32)
    out[:len(features)] = features
    return out


def test_utterance_pooling_is_the_model_on_the_whole_utterance(model, reference, libri_mini, files):
    # The original's whole-file embedding (its own code, its own file): one pass over every frame.
    embedder = Embedder(model, pooling="utterance")
    features = extract_features(libri_mini / str(reference["paths"][0]))
    got = embedder.embed_features(features)
    np.testing.assert_allclose(got, direct(model, padded_to(features, -(-len(features) // 16) * 16)), atol=1e-5)
    if len(features) % 16 == 0:
        np.testing.assert_allclose(got, reference["full_embedding"][0], atol=1e-4)
    # Utterances of other lengths, and a short one padded to 1.6 s, batched together: each row is the model on
    # that utterance alone, zero-padded at the end to a multiple of 16 frames (the network's stride).
    several = [extract_features(f) for f in files] + [features[:100], features[:333]]
    assert len({len(f) for f in several}) == len(several)
    batched = embedder.embed_features_batch(several)
    for row, feats in zip(batched, several):
        np.testing.assert_allclose(row, direct(model, padded_to(feats, -(-max(len(feats), 160) // 16) * 16)),
                                   atol=1e-5)
    assert embedder.settings["pooling"] == "utterance" and "hop_frames" not in embedder.settings
    assert "pooling" not in Embedder(model).settings  # windows: the settings recorded before poolings existed


def test_long_utterances_go_through_in_near_equal_pieces():
    features = np.random.default_rng(0).standard_normal((1000, 64)).astype(np.float32)
    for max_frames, sizes in ((1000, [1000]), (999, [500, 500]), (400, [334, 334, 332]), (90, [84] * 11 + [76])):
        pieces = split_pieces(features, max_frames=max_frames, min_frames=160, multiple=16)
        assert [len(p) for p in pieces] == [-(-max(s, 160) // 16) * 16 for s in sizes]
        np.testing.assert_array_equal(np.concatenate([p[:s] for p, s in zip(pieces, sizes)]), features)
        assert all(not p[s:].any() for p, s in zip(pieces, sizes))


def test_a_card_beside_the_model_file_sets_its_default_pooling(reference_checkpoint, reference, tmp_path):
    (tmp_path / "m.h5").symlink_to(reference_checkpoint / "ResCNN_random_triplet.h5")
    (tmp_path / "other.h5").symlink_to(reference_checkpoint / "ResCNN_random_triplet.h5")
    (tmp_path / "model_card.json").write_text(json.dumps({"model": "m.h5", "pooling": "utterance"}))
    carded = Embedder(tmp_path / "m.h5")
    assert carded.pooling == "utterance" and Embedder(tmp_path / "other.h5").pooling == "windows"  # not its card
    assert Embedder(tmp_path / "m.h5", pooling="windows").pooling == "windows"
    features = reference["features_3"]
    np.testing.assert_allclose(carded.embed_features(features),
                               Embedder(tmp_path / "other.h5", pooling="utterance").embed_features(features))
    with pytest.raises(DeepSpeakerError, match=r"apply to --pooling windows, not utterance \(the model card's\): "
                                               r"add --pooling windows$"):
        Embedder(tmp_path / "m.h5", window_seconds=2.0)
    (tmp_path / "model_card.json").write_text(json.dumps({"model": "m.h5", "pooling": "frames"}))
    with pytest.raises(DeepSpeakerError, match="unknown pooling in the model card 'frames'"):
        Embedder(tmp_path / "m.h5")


def test_batching_does_not_change_results(model, files):
    one = Embedder(model, batch_size=1).embed_files(files)
    many = Embedder(model, batch_size=64).embed_files(files)
    np.testing.assert_allclose(one, many, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)


def test_embed_signal_equals_embed_files(model, files):
    embedder = Embedder(model)
    np.testing.assert_allclose(embedder.embed_signal(load_audio(files[0]), 16000),
                               embedder.embed_files(files[:1])[0], atol=1e-5)
    # The batched entry point: one row per signal, as the files give them.
    np.testing.assert_allclose(embedder.embed_signals([load_audio(f) for f in files[:3]], 16000),
                               embedder.embed_files(files[:3]), atol=1e-5)
    # Another rate is resampled first: 8 kHz speech still gives a unit vector close to the original.
    low = embedder.embed_signal(load_audio(files[0], 8000), 8000)
    assert abs(np.linalg.norm(low) - 1) < 1e-5


def test_bad_files_are_reported_and_the_rest_embedded(model, files, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wave file")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(32000, np.float32), 16000)
    short = tmp_path / "short.wav"
    sf.write(short, 0.1 * np.random.default_rng(0).standard_normal(1600).astype(np.float32), 16000)
    missing = tmp_path / "missing.wav"
    paths = [files[0], str(corrupt), str(silent), files[1], str(short), str(missing)]
    embedder = Embedder(model)
    result = embedder.embed_files_with_failures(paths)
    assert result.paths == files[:2]
    np.testing.assert_allclose(result.embeddings, embedder.embed_files(files[:2]), atol=1e-6)
    reasons = {f.path: f.reason for f in result.failures}
    assert set(reasons) == {str(corrupt), str(silent), str(short), str(missing)}
    assert "silent" in reasons[str(silent)] and "too short" in reasons[str(short)]
    assert "no such file" in reasons[str(missing)] and "unreadable" in reasons[str(corrupt)]
    with pytest.raises(DeepSpeakerError, match="4 file"):
        embedder.embed_files(paths)


def test_mixed_bfloat16_close_to_float32(model, files):
    f32 = Embedder(model).embed_files(files[:2])
    bf16 = Embedder(model, precision="mixed_bfloat16").embed_files(files[:2])
    assert bf16.dtype == np.float32
    assert np.all(np.sum(f32 * bf16, axis=1) > 0.99)


def test_save_embeddings_formats(tmp_path):
    emb = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    paths = ["a.wav", "dir/b.flac", "ü.wav"]
    save_embeddings(tmp_path / "e.npz", emb, paths, model_id="abc123", speakers=["s1", "s1", "s2"])
    with np.load(tmp_path / "e.npz", allow_pickle=False) as data:
        np.testing.assert_array_equal(data["embeddings"], emb)
        assert list(data["paths"]) == paths and str(data["model_identity"]) == "abc123"
        assert str(data["encoder"]) == "deep-speaker"
        assert list(data["speakers"]) == ["s1", "s1", "s2"]
    save_embeddings(tmp_path / "e.npy", emb, paths, model_id="abc123")
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy", allow_pickle=False), emb)
    save_embeddings(tmp_path / "e.csv", emb, paths, model_id="abc123")
    rows = (tmp_path / "e.csv").read_text(encoding="utf8").splitlines()
    assert rows[0].startswith("path,e0,e1") and len(rows) == 4
    np.testing.assert_allclose([float(v) for v in rows[2].split(",")[1:]], emb[1], rtol=1e-6)
    with pytest.raises(DeepSpeakerError, match="unknown output format"):
        save_embeddings(tmp_path / "e.txt", emb, paths, model_id="abc123")


def test_bad_settings_are_clear_errors(model):
    with pytest.raises(DeepSpeakerError, match="would skip audio"):
        Embedder(model, window_seconds=1.0, hop_seconds=2.0)
    with pytest.raises(DeepSpeakerError, match="unknown pooling 'frames'"):
        Embedder(model, pooling="frames")
    # Refused before any model loads: the path does not exist.
    with pytest.raises(DeepSpeakerError, match="--window and --hop apply to --pooling windows, not utterance$"):
        Embedder("/nonexistent.keras", pooling="utterance", hop_seconds=1.6)
    with pytest.raises(DeepSpeakerError, match="unknown trim mode 'loud'"):
        Embedder(model, trim="loud")
    with pytest.raises(DeepSpeakerError, match=r"features must be \[T > 0, 64\]"):
        Embedder(model).embed_features(np.zeros((10, 40), np.float32))
