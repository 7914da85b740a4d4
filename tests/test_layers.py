"""The ResCNN's own layers against Keras' layers and plain autodiff, on real filterbank features."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from deep_speaker.data.features import extract_features
from deep_speaker.model.layers import BatchNormalization, ClippedReLU
from deep_speaker.model.rescnn import build_rescnn

# The fused batch normalisation and these gradient checks are TensorFlow's path; on JAX the layers run Keras' own
# computation (covered there by the model and training tests).
pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow-backend layers")


@pytest.fixture(scope="module")
def activations(libri_mini) -> np.ndarray:
    """[12, 160, 64, 8]: real fbank crops through a fixed random 3x3 convolution (BN's usual input)."""
    paths = sorted((libri_mini / "test-other").rglob("*.flac"))[:12]
    crops = np.stack([extract_features(p)[:160] for p in paths])[..., None]
    kernel = np.random.default_rng(0).standard_normal((3, 3, 1, 8)).astype(np.float32)
    return tf.nn.conv2d(crops, kernel, 1, "SAME").numpy() * 3.0 + 1.5


def _train_step(layer, x):
    """(output, d sum(output * w) / d [x, gamma, beta]) of one training-mode call."""
    x = tf.constant(x)
    weights = tf.constant(np.random.default_rng(1).standard_normal(x.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return y.numpy().astype(np.float32), [g.numpy().astype(np.float32) for g in grads]


def _pair(dtype="float32", momentum=0.9):
    ours, keras_bn = BatchNormalization(momentum=momentum, dtype=dtype), keras.layers.BatchNormalization(
        momentum=momentum, dtype=dtype)
    for layer in (ours, keras_bn):
        layer.build((None, 160, 64, 8))
    rng = np.random.default_rng(2)
    weights = [rng.uniform(0.5, 2.0, 8), rng.standard_normal(8), rng.standard_normal(8), rng.uniform(0.5, 2.0, 8)]
    for layer in (ours, keras_bn):
        layer.set_weights([w.astype(np.float32) for w in weights])
    return ours, keras_bn


def test_batch_normalization_matches_keras_in_training(activations):
    ours, reference = _pair()
    y, grads = _train_step(ours, activations)
    y_ref, grads_ref = _train_step(reference, activations)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-3 * np.abs(g_ref).max())
    np.testing.assert_allclose(ours.get_weights()[3], reference.get_weights()[3], rtol=1e-4)


def test_batch_normalization_moving_statistics(activations):
    # 30 values per channel, so the biased and unbiased variances differ by 3%.
    x = activations[:2, :3, :5]
    ours, _ = _pair()
    initial = ours.get_weights()
    ours(x, training=True)
    flat = x.reshape(-1, 8).astype(np.float64)
    np.testing.assert_allclose(ours.get_weights()[2], 0.9 * initial[2] + 0.1 * flat.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(ours.get_weights()[3], 0.9 * initial[3] + 0.1 * flat.var(axis=0), rtol=1e-5)


def test_batch_normalization_matches_keras_in_inference(activations):
    ours, reference = _pair()
    np.testing.assert_allclose(ours(activations, training=False).numpy(),
                               reference(activations, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_batch_normalization_in_bfloat16_agrees_with_float32(activations):
    ours, _ = _pair("mixed_bfloat16")
    reference, _ = _pair()
    y, grads = _train_step(ours, activations)
    y_ref, grads_ref = _train_step(reference, activations)
    assert keras.backend.standardize_dtype(ours(activations, training=True).dtype) == "bfloat16"
    np.testing.assert_allclose(y, y_ref, atol=0.05 * np.abs(y_ref).max())
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, atol=0.02 * np.abs(g_ref).max())


def test_clipped_relu_gradient_is_autodiff_of_the_original_formula(activations):
    x = np.concatenate([activations.ravel()[:5000] * 8, [0.0, 20.0, -0.0, 19.99, 20.01, -1e-3]]).astype(np.float32)
    for dtype in ("float32", "bfloat16"):
        xt = tf.constant(x, dtype=dtype)
        upstream = tf.constant(np.random.default_rng(3).standard_normal(x.shape), dtype=dtype)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xt)
            ours = ClippedReLU(20.0, dtype=dtype)(xt)
            original = tf.minimum(tf.maximum(xt, 0.0), 20.0)  # the original's Lambda
        np.testing.assert_array_equal(ours.numpy(), original.numpy())
        np.testing.assert_array_equal(tape.gradient(ours, xt, upstream).numpy(),
                                      tape.gradient(original, xt, upstream).numpy())


def _with_keras_layers(model: keras.Model, dtype: str) -> keras.Model:
    """The same network and weights in dtype, with Keras' own BatchNormalization and a ReLU clipped at 20."""
    def clone(layer):
        config = {**layer.get_config(), "dtype": dtype}
        if isinstance(layer, BatchNormalization):
            return keras.layers.BatchNormalization.from_config(config)
        if isinstance(layer, ClippedReLU):
            return keras.layers.ReLU(max_value=layer.ceiling, name=layer.name, dtype=dtype)
        return layer.__class__.from_config(config)

    other = keras.models.clone_model(model, clone_function=clone)
    other.set_weights([w.astype(dtype) for w in model.get_weights()])
    return other


def test_training_step_of_the_model_matches_keras_layers(libri_mini):
    paths = sorted((libri_mini / "test-other").rglob("*.flac"))[:12]
    x = np.stack([extract_features(p)[:160] for p in paths])[..., None]
    keras.utils.set_random_seed(0)
    model = build_rescnn(width=0.125)
    # float64: at initialisation float32 rounding grows through the 28 layers to ~1% of a gradient, in Keras'
    # own float32 layers as much as in ours, so float32 would not be a sharp reference.
    reference = _with_keras_layers(model, "float64")
    assert not any(isinstance(layer, (BatchNormalization, ClippedReLU)) for layer in reference.layers)
    direction = np.random.default_rng(4).standard_normal((len(x), 512))
    results = []
    for m, dtype in ((model, "float32"), (reference, "float64")):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(m(x.astype(dtype), training=True) * direction.astype(dtype))  # smooth: no hinge
        results.append((float(loss), tape.gradient(loss, m.trainable_weights)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-4)
    for weight, g, g_ref in zip(model.trainable_weights, results[0][1], results[1][1]):
        if weight.path.endswith("bias") and weight.path.startswith(("conv", "res")):
            continue  # a bias before batch normalisation has gradient 0: both are rounding noise
        error = np.linalg.norm(g.numpy() - g_ref.numpy()) / np.linalg.norm(g_ref.numpy())
        # float32 rounding against the float64 reference: measured 1 % to 3.4 % of a gradient's norm (2 threads, and
        # 1 thread, which sums in another order: res1_2_branch_2b_bn/beta); a wrong gradient (e.g. batch
        # statistics taken as constants) is off by O(1). 0.1 lies between the two.
        assert error < 0.1, weight.path


def test_saved_config_names_our_layers():
    config = json.dumps(build_rescnn(width=0.0625).get_config())
    assert '"deep_speaker>BatchNormalization"' in config and '"deep_speaker>ClippedReLU"' in config


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_clipped_relu_gradient_on_jax(activations):
    # keras.ops.custom_gradient takes another path on JAX: the same check there, in a JAX-backend process.
    # JAX's own autodiff splits a tie of maximum/minimum (0.5 at x = 0 and x = 20); ours keeps the original's
    # TensorFlow convention (1 there), checked separately.
    x = np.concatenate([activations.ravel()[:2000] * 8, [0.0, 20.0, 19.99, 20.01, -1e-3]]).astype(np.float32)
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp, numpy as np
        from deep_speaker.model.layers import ClippedReLU
        x = jnp.asarray(np.frombuffer(bytes.fromhex({x.tobytes().hex()!r}), np.float32))
        layer = ClippedReLU(20.0)
        ours = jax.grad(lambda v: jnp.sum(layer(v) * jnp.cos(v)))(x)
        plain = jax.grad(lambda v: jnp.sum(jnp.minimum(jnp.maximum(v, 0.0), 20.0) * jnp.cos(v)))(x)
        kink = (x == 0) | (x == 20)
        print("MAXDIFF", float(jnp.max(jnp.abs(jnp.where(kink, 0, ours - plain)))),
              float(jnp.max(jnp.abs(layer(x) - jnp.clip(x, 0, 20)))),
              float(jnp.max(jnp.abs(jnp.where(kink, ours - (jnp.cos(x) - jnp.clip(x, 0, 20) * jnp.sin(x)), 0)))),
              int(kink.sum()))
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("MAXDIFF")[1].split() == ["0.0", "0.0", "0.0", "2"]


# ----- AAM-softmax (ArcFace): the cosine head and the margin, against numpy -----


def _aam_reference(cos: np.ndarray, labels: np.ndarray, m: float, s: float) -> np.ndarray:
    """Plain loop: s cos(θ_y + m) at the target if θ_y + m <= π, else s (cos θ_y - 1 + cos m); s cos θ elsewhere."""
    logits = s * cos.astype(np.float64)
    for i, y in enumerate(labels):
        theta = np.arccos(np.clip(cos[i, y], -1.0, 1.0))
        logits[i, y] = s * (np.cos(theta + m) if theta + m <= np.pi else cos[i, y] - 1.0 + np.cos(m))
    return logits


def _real_vectors(activations, n: int = 12, d: int = 64) -> np.ndarray:
    return activations.reshape(len(activations), -1)[:n, :d].astype(np.float32)


def test_cosine_head_is_the_cosine_to_each_class_weight(activations):
    from deep_speaker.model.layers import CosineHead

    x = _real_vectors(activations)
    head = CosineHead(7)
    head.build(x.shape)
    w = head.get_weights()[0].astype(np.float64)
    expected = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(head(x).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("m, s", [(0.2, 32.0), (0.5, 10.0)])
def test_aam_logits_and_loss_match_numpy_including_the_fallback_beyond_pi(activations, m, s):
    from scipy.special import logsumexp

    from deep_speaker.model.losses import AAMSoftmaxLoss, aam_logits

    rng = np.random.default_rng(5)
    x = _real_vectors(activations)
    w = rng.standard_normal((x.shape[1], 6))
    cos = ((x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True)))
    # Targets beyond π - m (the fallback), exactly at it (both branches meet at -s), near 0 and at 1.
    cos[:4, 0] = [-0.999, np.cos(np.pi - m) - 1e-4, -1.0, 1.0]
    cos = cos.astype(np.float32)
    labels = np.array([0, 0, 0, 0] + rng.integers(0, 6, len(x) - 4).tolist())
    expected = _aam_reference(cos, labels, m, s)
    assert (np.arccos(np.clip(cos[labels == 0, 0], -1, 1)) + m > np.pi).sum() >= 2  # the fallback is exercised
    logits = keras.ops.convert_to_numpy(aam_logits(labels, cos, margin=m, scale=s))
    np.testing.assert_allclose(logits, expected, atol=2e-3 * s)  # float32 arccos/cos round near |cos| = 1
    assert logits[1, 0] == pytest.approx(-s, abs=0.05)
    loss = float(AAMSoftmaxLoss(m, s)(labels, cos))
    reference = np.mean(logsumexp(expected, axis=1) - expected[np.arange(len(labels)), labels])
    assert loss == pytest.approx(reference, rel=1e-4)
    # m = 0 is the plain softmax of s cos θ: the margin is the only difference.
    plain = np.mean(logsumexp(s * cos.astype(np.float64), axis=1) - s * cos[np.arange(len(labels)), labels])
    assert float(AAMSoftmaxLoss(0.0, s)(labels, cos)) == pytest.approx(plain, rel=1e-4)


def test_aam_model_loads_in_safe_mode_and_its_embedding_model_is_the_network_without_the_head(tmp_path, libri_mini):
    from deep_speaker.model.layers import CosineHead
    from deep_speaker.model.losses import AAMSoftmaxLoss
    from deep_speaker.model.rescnn import head_of, load_model, num_speakers_of, to_embedding_model

    paths = sorted((libri_mini / "test-other").rglob("*.flac"))[:4]
    x = np.stack([extract_features(p)[:96] for p in paths])[..., None]
    keras.utils.set_random_seed(1)
    model = build_rescnn(width=0.0625, num_speakers=5, head="aam")
    model.compile(optimizer="adam", loss=AAMSoftmaxLoss(0.3, 20.0), metrics=["accuracy"])
    model.fit(x, np.arange(4), epochs=1, verbose=0)
    model.save(tmp_path / "aam.keras")
    loaded = keras.saving.load_model(tmp_path / "aam.keras", safe_mode=True)
    assert isinstance(loaded.get_layer("softmax-layer"), CosineHead) and head_of(loaded) == "aam"
    assert loaded.loss.margin == 0.3 and loaded.loss.scale == 20.0 and num_speakers_of(loaded) == 5
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    embedder = to_embedding_model(load_model(tmp_path / "aam.keras"))
    assert [layer.name for layer in embedder.layers] == [layer.name for layer in build_rescnn(width=0.0625).layers]
    # The embedding is the L2-normalised `affine` output of the trained network (dropout is off in inference).
    affine = keras.Model(model.input, model.get_layer("affine").output).predict(x, verbose=0)
    np.testing.assert_allclose(embedder.predict(x, verbose=0),
                               affine / np.linalg.norm(affine, axis=1, keepdims=True), atol=1e-5)
    assert head_of(build_rescnn(width=0.0625, num_speakers=5)) == "softmax"


# ----- the softmax head's cross-entropy, the same on every backend -----

# Logits of 4 rows over 6 speakers: the true class ordinary, likely, and (rows 2, 3) below Keras' clip at 1e-7
# (p_y about 1e-11 and 1e-16), where a trained softmax model's wrong confident rows sit.
LOGITS = np.array([[0.3, -1.2, 2.0, 0.1, -0.4, 0.9], [4.0, 0.0, -1.0, 0.5, 0.2, -2.0],
                   [12.0, 0.0, -13.0, 1.0, 2.0, 0.0], [20.0, 1.0, 3.0, -17.0, 0.0, 0.5]], dtype=np.float32)
LABELS = np.array([2, 0, 2, 3])
GRADIENT_ON = """
import json, numpy as np, keras
from deep_speaker.model.losses import SoftmaxCrossEntropy
z = np.array({logits}, np.float32); y = np.array({labels})
def gradient(loss):
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        v = tf.Variable(z)
        with tf.GradientTape() as tape:
            value = loss(y, keras.activations.softmax(v))
        return float(value), tape.gradient(value, v).numpy()
    import jax
    value, g = jax.value_and_grad(lambda v: loss(y, keras.activations.softmax(v)))(z)
    return float(value), np.asarray(g)
print("RESULT", json.dumps({{name: [v, g.tolist()] for name, (v, g) in (
    ("ours", gradient(SoftmaxCrossEntropy())), ("keras", gradient(keras.losses.SparseCategoricalCrossentropy())))}}))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_softmax_cross_entropy_keeps_its_gradient_below_keras_clip_on_every_backend(backend):
    # Reference, float64: -log softmax(z)_y averaged over rows, and its gradient (softmax(z) - onehot(y)) / rows.
    z = LOGITS.astype(np.float64)
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    onehot = np.eye(z.shape[1])[LABELS]
    loss = -log_p[np.arange(len(z)), LABELS].mean()
    grad = (np.exp(log_p) - onehot) / len(z)
    script = GRADIENT_ON.format(logits=LOGITS.tolist(), labels=LABELS.tolist())
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    found = {name: (value, np.array(g)) for name, (value, g) in
             json.loads(run.stdout.split("RESULT")[1]).items()}
    value, ours = found["ours"]
    # float32 softmax and log: relative rounding ~1e-7 of values of order 1-40.
    assert value == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(ours, grad, rtol=0, atol=1e-6)
    if backend == "jax":
        # What the loss is for: Keras' own loss on JAX clips p at 1e-7, so rows 2 and 3 lose their true class's -1.
        keras_grad = found["keras"][1]
        assert np.abs(keras_grad[2:] - grad[2:]).max() > 0.2 and np.allclose(keras_grad[:2], grad[:2], atol=1e-6)
    else:  # TensorFlow's Keras finds the softmax's logits: ours is its computation
        np.testing.assert_array_equal(ours, found["keras"][1])
