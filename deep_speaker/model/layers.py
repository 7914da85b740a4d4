"""The ResCNN's own layers: registered, so a saved `.keras` model loads with `safe_mode=True` (no Lambda layers).

`ClippedReLU` and `BatchNormalization` compute what the original's Keras 2 layers computed, with a cheaper
backward pass: under TensorFlow, which runs a graph op by op, the autodiff of `min(max(x, 0), 20)` and of
Keras 3's unfused batch normalisation made a training step spend more time in these two layers than in
the convolutions' forward pass (see benchmarks/bench_train.py).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="deep_speaker")
class ClippedReLU(keras.layers.Layer):
    """min(max(x, 0), ceiling): the original's clipped ReLU (ceiling 20), gradient 1 on [0, ceiling]."""

    def __init__(self, ceiling: float = 20.0, **kwargs):
        super().__init__(**kwargs)
        self.ceiling = float(ceiling)

    def call(self, x):
        ceiling = self.ceiling

        @ops.custom_gradient
        def clipped(x):
            def grad(*args, upstream=None):
                upstream = args[0] if upstream is None else upstream
                # One mask and one product instead of two selects against materialised zeros; the closed
                # interval is what autodiff of the original's min(max(x, 0), 20) gives at the two kinks.
                return upstream * ops.cast(ops.logical_and(x >= 0, x <= ceiling), upstream.dtype)

            return ops.minimum(ops.maximum(x, 0.0), ceiling), grad

        return clipped(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "ceiling": self.ceiling}


@keras.saving.register_keras_serializable(package="deep_speaker")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization, y = gamma (x - mean) / sqrt(var + eps) + beta, as one fused op under TensorFlow.

    Same weights, statistics and moving-average updates as the Keras layer it extends (biased batch variance),
    so checkpoints load into either. On other backends, and for inputs the fused op does not take (a mask,
    not channels-last images), Keras' own computation runs; XLA (JAX) fuses it by itself.
    """

    def call(self, inputs, training=None, mask=None):
        # The fused op normalises the channels of [N, H, W, C] images, with offset and scale.
        if keras.backend.backend() != "tensorflow" or mask is not None or len(inputs.shape) != 4 \
                or self.axis not in (-1, 3) or not (self.center and self.scale) or self.synchronized or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        # The fused kernel takes bfloat16 activations with float32 parameters and statistics.
        x = ops.cast(inputs, self.compute_dtype)
        gamma, beta = ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32")
        if training and self.trainable:
            y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]),
                epsilon=self.epsilon, is_training=True)
            # The fused op returns the unbiased variance; Keras' moving average uses the biased one.
            count = ops.cast(ops.prod(ops.shape(x)[:-1]), "float32")
            variance = variance * (count - 1.0) / ops.maximum(count, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
            return y
        y, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=ops.cast(self.moving_mean, "float32"),
            variance=ops.cast(self.moving_variance, "float32"), epsilon=self.epsilon, is_training=False)
        return y


@keras.saving.register_keras_serializable(package="deep_speaker")
class TemporalAverage(keras.layers.Layer):
    """mean(x, axis=1): average over time of [batch, time, features], accumulated in float32."""

    def call(self, x):
        # bfloat16 has 8 mantissa bits: summing hundreds of frames in it would lose the average.
        return ops.cast(ops.mean(ops.cast(x, "float32"), axis=1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return super().get_config()


@keras.saving.register_keras_serializable(package="deep_speaker")
class L2Normalize(keras.layers.Layer):
    """x / sqrt(max(sum(x^2), 1e-12)) over the last axis, always in float32 (as K.l2_normalize)."""

    def __init__(self, **kwargs):
        kwargs["dtype"] = "float32"  # unit-length embeddings must not be bfloat16-rounded
        super().__init__(**kwargs)

    def call(self, x):
        x = ops.cast(x, "float32")
        return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config()


@keras.saving.register_keras_serializable(package="deep_speaker")
class CosineHead(keras.layers.Layer):
    """cos θ_j = <x / |x|, w_j / |w_j|> for each speaker j: the AAM-softmax (ArcFace) head, without its margin.

    The margin needs the label, so it lives in the loss (deep_speaker.model.losses.AAMSoftmaxLoss); the argmax,
    hence the accuracy, is the cosines'. Always float32, as the plain softmax head.
    """

    def __init__(self, units: int, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units),
                                      initializer="glorot_uniform")

    def call(self, x):
        x = ops.cast(x, "float32")
        x = x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))
        w = self.kernel * ops.rsqrt(ops.maximum(ops.sum(ops.square(self.kernel), axis=0, keepdims=True), 1e-12))
        return ops.matmul(x, w)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="deep_speaker")
class TeacherProjection(keras.layers.Layer):
    """Knowledge distillation beside the speaker head: adds ``weight * mean_i(1 - cos(W x_i + b, t_i))`` to the
    model's loss (x: the student's embedding, t: the teacher's embedding of the same utterance) and returns x
    unchanged, so the head and its loss, metrics and monitor are those of a model without a teacher.

    The projection W (units = the teacher's embedding size) is trained with the network and dropped with the head
    (``to_embedding_model``). Always float32, as the heads.
    """

    def __init__(self, units: int, weight: float = 1.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.units, self.weight = int(units), float(weight)

    def build(self, input_shape):
        embedding_shape, _ = input_shape
        self.kernel = self.add_weight(name="kernel", shape=(embedding_shape[-1], self.units),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def call(self, inputs):
        x, teacher = inputs
        projected = ops.matmul(ops.cast(x, "float32"), self.kernel) + self.bias
        teacher = ops.cast(teacher, "float32")
        cosine = ops.sum(projected * teacher, axis=-1) * ops.rsqrt(ops.maximum(
            ops.sum(ops.square(projected), axis=-1) * ops.sum(ops.square(teacher), axis=-1), 1e-12))
        self.add_loss(self.weight * ops.mean(1.0 - cosine))
        return x

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "weight": self.weight}


def _unit_rows(x):
    """x / ||x|| per row, in float32."""
    x = ops.cast(x, "float32")
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


@keras.saving.register_keras_serializable(package="deep_speaker")
class TeacherPairwise(keras.layers.Layer):
    """Knowledge distillation of the teacher's geometry beside the speaker head: adds
    ``weight * sum_{i != j} (cos(x_i, x_j) - cos(t_i, t_j))^2 / (n (n - 1))`` over the n rows of the batch to the
    model's loss (x: the student's embedding, t: the teacher's embedding of the same utterance) and returns x
    unchanged, as :class:`TeacherProjection` does.

    No weights: the student's own embedding space takes the teacher's cosines, so nothing is dropped with the head but
    the layer. ``units`` is the teacher's embedding size (the second input's). Always float32, as the heads.
    """

    def __init__(self, units: int, weight: float = 1.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.units, self.weight = int(units), float(weight)

    def call(self, inputs):
        x, teacher = _unit_rows(inputs[0]), _unit_rows(inputs[1])
        difference = ops.matmul(x, ops.transpose(x)) - ops.matmul(teacher, ops.transpose(teacher))
        n = ops.cast(ops.shape(x)[0], "float32")
        # The diagonal is 1 - 1 = 0 (unit rows): the sum over all pairs is the sum over i != j.
        self.add_loss(self.weight * ops.sum(ops.square(difference)) / ops.maximum(n * (n - 1.0), 1.0))
        return inputs[0]

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "weight": self.weight}
