"""ResCNN, original-checkpoint loading, saving and the triplet loss, against the original's outputs and numpy."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import h5py
import keras
import numpy as np
import pytest

from deep_speaker.errors import DeepSpeakerError
from deep_speaker.model.losses import ShardedTripletLoss, triplet_loss
from deep_speaker.model.rescnn import (
    averaged_model,
    build_rescnn,
    conv_flops,
    load_model,
    load_original_weights,
    model_identity,
    to_embedding_model,
)

CHECKPOINT = "ResCNN_random_triplet.h5"


@pytest.fixture(scope="module")
def reference(reference_checkpoint):
    with np.load(reference_checkpoint / "reference.npz", allow_pickle=False) as data:
        return {k: data[k] for k in ("crops", "crop_embeddings", "full_input", "full_embedding")}


@pytest.fixture(scope="module")
def reference_model(reference_checkpoint):
    model = build_rescnn()
    load_original_weights(model, reference_checkpoint / CHECKPOINT)
    return model


def embed(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def write_legacy_h5(model, path, weights_group=None):
    """Write model's weights in the Keras 2 save_weights layout (optionally under a group, as full-model files)."""
    with h5py.File(path, "w") as f:
        root = f.create_group(weights_group) if weights_group else f
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.15.0"
        root.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        for layer in model.layers:
            group = root.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for name, w in zip(names, layer.weights):
                group.create_dataset(name, data=keras.ops.convert_to_numpy(w))


def test_reference_checkpoint_reproduces_original_embeddings(reference_model, reference):
    crops = embed(reference_model, reference["crops"])
    assert np.abs(crops - reference["crop_embeddings"]).max() < 1e-4
    # 1380 frames: 690, 345 (odd) then 173, 87 -- both padding cases of the stride-2 convolutions.
    full = embed(reference_model, reference["full_input"])
    assert full.shape == (1, 512)
    assert np.abs(full - reference["full_embedding"]).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(crops, axis=1), 1.0, atol=1e-5)


def test_layer_names_and_parameters_match_the_original(reference_model, reference_checkpoint):
    with h5py.File(reference_checkpoint / CHECKPOINT, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
    assert [layer.name for layer in reference_model.layers] == names
    assert reference_model.count_params() == 24_185_728
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in reference_model.layers)


def test_full_model_file_loads_weights_without_reading_config(tmp_path, reference_checkpoint, reference):
    path = tmp_path / "ResCNN_triplet_training_checkpoint_1.h5"
    with h5py.File(reference_checkpoint / CHECKPOINT, "r") as src, h5py.File(path, "w") as dst:
        weights = dst.create_group("model_weights")
        for key, value in src.attrs.items():
            weights.attrs[key] = value
        for name in src:
            src.copy(src[name], weights, name=name)
        # Stands in for marshalled Lambda bytecode: any attempt to deserialise it fails.
        dst.attrs["model_config"] = np.void(b"\xe3\x00\x00\x00not json, not a config\x00")
        dst.attrs["training_config"] = np.void(b"\x80\x04garbage")
    model = build_rescnn()
    load_original_weights(model, path)
    for model in (model, load_model(path)):
        assert np.abs(embed(model, reference["crops"]) - reference["crop_embeddings"]).max() < 1e-4


def test_softmax_head_skipped_when_absent(reference_checkpoint, reference):
    model = build_rescnn(num_speakers=7)
    head_before = [w.copy() for w in model.get_layer("softmax-layer").get_weights()]
    load_original_weights(model, reference_checkpoint / CHECKPOINT)
    for before, after in zip(head_before, model.get_layer("softmax-layer").get_weights()):
        np.testing.assert_array_equal(before, after)
    assert [layer.name for layer in model.layers[-3:]] == ["dropout", "affine", "softmax-layer"]
    embedding = to_embedding_model(model)
    assert embedding.layers[-1].name == "ln" and "dropout" not in [layer.name for layer in embedding.layers]
    assert np.abs(embed(embedding, reference["crops"]) - reference["crop_embeddings"]).max() < 1e-4
    assert to_embedding_model(embedding) is embedding
    assert model_identity(model) == model_identity(embedding)


def test_original_softmax_head_loads_when_present(tmp_path):
    # The original names its head nothing, so Keras 2 calls it "dense" (or "dense_N").
    source = build_rescnn(width=0.0625, num_speakers=3)
    path = tmp_path / "softmax.h5"
    write_legacy_h5(source, path)
    with h5py.File(path, "r+") as f:
        names = [layer.name for layer in source.layers]
        f.attrs["layer_names"] = [("dense_1" if n == "softmax-layer" else n).encode() for n in names]
        f.move("softmax-layer", "dense_1")
    target = build_rescnn(width=0.0625, num_speakers=3)
    load_original_weights(target, path)
    for a, b in zip(source.get_layer("softmax-layer").get_weights(), target.get_layer("softmax-layer").get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DeepSpeakerError, match="softmax head dense_1"):
        load_original_weights(build_rescnn(width=0.0625, num_speakers=4), path)


def test_other_width_is_a_one_line_error(tmp_path, reference_checkpoint):
    path = tmp_path / "narrow.h5"
    write_legacy_h5(build_rescnn(width=0.25), path)
    with pytest.raises(DeepSpeakerError) as error:
        load_original_weights(build_rescnn(), path)
    message = str(error.value)
    assert "\n" not in message and "conv64-s" in message and "width" in message
    with pytest.raises(DeepSpeakerError, match="conv64-s"):
        load_original_weights(build_rescnn(width=0.25), reference_checkpoint / CHECKPOINT)
    assert load_model(path).name == "ResCNN_w0.25"  # load_model reads the width from the file


def test_keras_round_trip_is_safe_and_exact(tmp_path):
    model = build_rescnn(width=0.125)
    x = np.random.default_rng(0).standard_normal((3, 75, 64, 1)).astype(np.float32)
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "best.keras")
    build_rescnn(width=0.125).save(run / "last.keras")
    with zipfile.ZipFile(run / "best.keras") as archive:
        config = archive.read("config.json").decode()
    assert "Lambda" not in config and "lambda" not in config
    for source in (run / "best.keras", run):  # a run directory prefers best.keras
        loaded = load_model(source)
        np.testing.assert_array_equal(embed(loaded, x), embed(model, x))
        assert model_identity(loaded) == model_identity(model)
    model.save_weights(tmp_path / "m.weights.h5")
    np.testing.assert_array_equal(embed(load_model(tmp_path / "m.weights.h5"), x), embed(model, x))


def test_model_saved_with_keras_batch_normalization_loads_into_our_layers(tmp_path):
    from deep_speaker.encoders.deepspeaker import packaged_model
    from deep_speaker.model.layers import BatchNormalization

    # A model as saved before deep_speaker.model.layers.BatchNormalization existed (the packaged model until
    # 2026-12-02): the packaged model's layers and weights, its batch normalisations Keras' own.
    def keras_batch_norm(layer):
        if isinstance(layer, BatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    ours = load_model(packaged_model())
    old = keras.models.clone_model(ours, clone_function=keras_batch_norm)
    old.set_weights(ours.get_weights())
    path = tmp_path / "keras_bn.keras"
    old.save(path)
    as_saved = keras.saving.load_model(path, safe_mode=True, compile=False)
    assert type(as_saved.get_layer("conv64-s_bn")) is keras.layers.BatchNormalization
    model = load_model(path)
    assert isinstance(model.get_layer("conv64-s_bn"), BatchNormalization)
    assert model_identity(model) == model_identity(as_saved)
    x = np.random.default_rng(5).standard_normal((4, 240, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(embed(model, x), embed(as_saved, x), atol=1e-5)


def test_load_model_errors(tmp_path):
    with pytest.raises(DeepSpeakerError, match="best.keras"):
        load_model(tmp_path)
    with pytest.raises(DeepSpeakerError, match="not found"):
        load_model(tmp_path / "missing.keras")
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04.")
    with pytest.raises(DeepSpeakerError, match="unknown model format"):
        load_model(tmp_path / "model.pkl")
    (tmp_path / "other.h5").write_bytes(b"not hdf5")
    with pytest.raises(DeepSpeakerError, match="unreadable"):
        load_model(tmp_path / "other.h5")
    inputs = keras.Input((8,))
    keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs)).save(tmp_path / "mlp.keras")
    with pytest.raises(DeepSpeakerError, match="not a ResCNN"):
        load_model(tmp_path / "mlp.keras")


def test_mixed_bfloat16_agrees_with_float32(reference_checkpoint, reference):
    model = build_rescnn(precision="mixed_bfloat16")
    load_original_weights(model, reference_checkpoint / CHECKPOINT)
    assert model.get_layer("conv64-s").compute_dtype == "bfloat16"
    assert model.get_layer("conv64-s").kernel.dtype == "float32"
    out = model(reference["crops"], training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    out = keras.ops.convert_to_numpy(out)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(out * reference["crop_embeddings"], axis=1)
    assert cosine.min() > 0.99


def numpy_triplet_loss(embeddings, alpha=0.1):
    a, p, n = np.split(embeddings.astype(np.float64), 3)
    cos = lambda u, v: np.sum(u * v, axis=1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)  # noqa: E731
    return np.mean(np.maximum(cos(a, n) - cos(a, p) + alpha, 0.0))


def test_triplet_loss_matches_numpy():
    rng = np.random.default_rng(3)
    y = rng.standard_normal((96, 512)).astype(np.float32)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    y[32:40] = y[:8] + 0.01 * rng.standard_normal((8, 512)).astype(np.float32)  # some triplets under the margin
    y[32:40] /= np.linalg.norm(y[32:40], axis=1, keepdims=True)
    got = float(keras.ops.convert_to_numpy(triplet_loss(np.zeros((96, 1)), y)))
    assert got == pytest.approx(numpy_triplet_loss(y), abs=1e-6)
    got = float(keras.ops.convert_to_numpy(triplet_loss(None, keras.ops.cast(y, "bfloat16"), alpha=0.5)))
    assert got == pytest.approx(numpy_triplet_loss(y, 0.5), abs=1e-2)


def test_sharded_triplet_loss_is_the_mean_over_blocks():
    # Multi-worker batches: one [anchors; positives; negatives] block per worker, side by side.
    rng = np.random.default_rng(4)
    y = rng.standard_normal((96, 16)).astype(np.float32)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    y[48:56] = y[64:72]  # the second block's positives are its negatives: loss alpha there
    expected = np.mean([numpy_triplet_loss(block, 0.3) for block in np.split(y, 2)])
    loss = ShardedTripletLoss(2, alpha=0.3)
    assert float(keras.ops.convert_to_numpy(loss(np.zeros((96, 1)), y))) == pytest.approx(expected, abs=1e-6)
    unsharded = float(keras.ops.convert_to_numpy(triplet_loss(None, y, alpha=0.3)))
    assert abs(unsharded - expected) > 1e-3  # the layout counts
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert (restored.shards, restored.alpha) == (2, 0.3)


def test_averaged_model_is_the_mean_of_each_variable():
    keras.utils.set_random_seed(1)
    a = build_rescnn(width=0.0625, num_speakers=3)  # a softmax model: averaged as its embedding model
    keras.utils.set_random_seed(2)
    b = build_rescnn(width=0.0625)
    for w in b.weights:  # fresh batch-norm statistics are 0 and 1 in both: make them differ too
        w.assign(w + np.random.default_rng(3).normal(size=w.shape).astype("float32"))
    mean = averaged_model([a, b])
    embedding_a = to_embedding_model(a)
    assert [w.path for w in mean.weights] == [w.path for w in b.weights]
    for m, wa, wb in zip(mean.weights, embedding_a.weights, b.weights, strict=True):
        np.testing.assert_allclose(np.asarray(m), (np.asarray(wa) + np.asarray(wb)) / 2, rtol=1e-6, atol=1e-7)
    x = np.random.default_rng(0).normal(size=(2, 100, 64, 1)).astype("float32")
    np.testing.assert_allclose(averaged_model([a, a]).predict(x, verbose=0), embedding_a.predict(x, verbose=0),
                               atol=1e-6)
    with pytest.raises(DeepSpeakerError, match="of one width"):
        averaged_model([a, build_rescnn(width=0.125)])


def test_width_and_flops():
    model = build_rescnn(width=0.25)
    assert [model.get_layer(f"conv{f}-s").filters for f in (64, 128, 256, 512)] == [16, 32, 64, 128]
    assert model.get_layer("affine").kernel.shape == (4 * 128, 512)
    # Independent count: per stage a 5x5 stride-2 conv then six 3x3 convs at the halved size, then affine.
    expected, t, f, cin = 0, 160, 64, 1
    for cout in (16, 32, 64, 128):
        t, f = -(-t // 2), -(-f // 2)
        expected += 2 * t * f * (25 * cin * cout + 6 * 9 * cout * cout)
        cin = cout
    assert conv_flops(model, 160) == expected + 2 * 512 * 512


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_jax_backend_reproduces_original(reference_checkpoint):
    # The asymmetric "same" padding and the custom layers must hold on another backend too.
    script = (
        "import numpy as np\n"
        "from deep_speaker.model.rescnn import build_rescnn, load_original_weights\n"
        f"ref = np.load({str(reference_checkpoint / 'reference.npz')!r}, allow_pickle=False)\n"
        "m = build_rescnn()\n"
        f"load_original_weights(m, {str(reference_checkpoint / CHECKPOINT)!r})\n"
        "e = np.asarray(m(ref['full_input'], training=False))\n"
        "print(float(np.abs(e - ref['full_embedding']).max()))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-4


def test_config_round_trip_of_custom_layers():
    model = build_rescnn(width=0.0625, num_speakers=2, precision="mixed_bfloat16")
    clone = keras.Model.from_config(json.loads(json.dumps(model.get_config())))
    assert clone.get_layer("clipped_relu_0").ceiling == 20.0
    assert clone.get_layer("softmax-layer").dtype_policy.name == "float32"
    assert clone.get_layer("average").dtype_policy.name == "mixed_bfloat16"
