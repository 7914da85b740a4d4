"""The Deep Speaker triplet loss on cosine similarity, the softmax cross-entropy of the original's softmax head on
every backend, and the additive angular margin (AAM) softmax loss."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from .constants import TRIPLET_MARGIN

# The smallest normal float32: the floor of a softmax probability whose log the loss takes (-log = 87.3).
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def triplet_loss(y_true, y_pred, *, alpha: float = TRIPLET_MARGIN, shards: int = 1):
    """mean(max(cos(a, n) - cos(a, p) + alpha, 0)) over a batch of [anchors; positives; negatives] thirds.

    y_true is ignored (Keras passes one). y_pred holds unit-length embeddings, so a cosine is a dot
    product; it is computed in float32 whatever the model's compute dtype. With shards > 1 the batch is
    that many contiguous [anchors; positives; negatives] blocks of equal size (one per training worker, each
    mined from its own pool), and the mean runs over all their triplets. The batch size must be a multiple
    of 3 x shards.
    """
    del y_true
    embeddings = ops.cast(y_pred, "float32")
    # [shards, 3, n, d]: a reshape works with a dynamic batch size on every backend, unlike slicing by n.
    triplets = ops.reshape(embeddings, (shards, 3, -1, ops.shape(embeddings)[-1]))
    anchors, positives, negatives = triplets[:, 0], triplets[:, 1], triplets[:, 2]
    cos_ap = ops.sum(anchors * positives, axis=-1)
    cos_an = ops.sum(anchors * negatives, axis=-1)
    return ops.mean(ops.maximum(cos_an - cos_ap + alpha, 0.0))


@keras.saving.register_keras_serializable(package="deep_speaker")
class ShardedTripletLoss(keras.losses.Loss):
    """triplet_loss over `shards` contiguous [anchors; positives; negatives] blocks (one per training worker) with
    margin ``alpha``."""

    def __init__(self, shards: int = 1, alpha: float = TRIPLET_MARGIN, name: str = "sharded_triplet", **kwargs):
        super().__init__(name=name, **kwargs)
        self.shards, self.alpha = int(shards), float(alpha)

    def call(self, y_true, y_pred):
        # a scalar: Keras' batch mean keeps it
        return triplet_loss(y_true, y_pred, alpha=self.alpha, shards=self.shards)

    def get_config(self):
        return {**super().get_config(), "shards": self.shards, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="deep_speaker")
class SoftmaxCrossEntropy(keras.losses.Loss):
    """mean(-log p_y) of the softmax head's probabilities p: the original's sparse categorical cross-entropy.

    Keras computes it from the softmax's own logits under TensorFlow (it finds the op that made p), but clips p at
    its epsilon (1e-7) on the other backends, where a true class with p_y < 1e-7 then gets no gradient: on JAX the
    quickstart's softmax phase reached 29 % training accuracy where TensorFlow reaches 71 %. So TensorFlow keeps
    Keras' own computation (same bits as before), and elsewhere p_y is floored at float32's smallest normal number
    instead, which leaves the gradient p - onehot(y) of the logits whole until p_y underflows.
    """

    def __init__(self, name: str = "softmax_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        if keras.backend.backend() == "tensorflow":
            return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
        labels = ops.cast(ops.reshape(y_true, (-1, 1)), "int32")
        p_y = ops.take_along_axis(ops.cast(y_pred, "float32"), labels, axis=-1)[:, 0]
        return -ops.log(ops.maximum(p_y, FLOAT32_TINY))


def aam_logits(y_true, cosines, *, margin: float = 0.2, scale: float = 32.0):
    """s cos(θ_y + m) for the target y, s cos θ_j for the others (ArcFace); where θ_y + m > π, s (cos θ_y - 1 +
    cos m) instead: the non-easy-margin threshold of WeSpeaker's ArcMarginProduct, equal to s cos(θ_y + m) = -s
    at θ_y = π - m and decreasing in θ_y beyond it, where cos(θ_y + m) would rise again."""
    cosines = ops.cast(cosines, "float32")
    target = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), ops.shape(cosines)[-1], dtype="float32")
    cos_y = ops.sum(cosines * target, axis=-1, keepdims=True)
    # clip: the gradient of sqrt at 0 (θ_y = 0 or π exactly) is infinite.
    sin_y = ops.sqrt(ops.clip(1.0 - ops.square(cos_y), 1e-12, 1.0))
    shifted = cos_y * math.cos(margin) - sin_y * math.sin(margin)
    phi = ops.where(cos_y > math.cos(math.pi - margin), shifted, cos_y - 1.0 + math.cos(margin))
    return scale * (cosines + target * (phi - cos_y))


@keras.saving.register_keras_serializable(package="deep_speaker")
class AAMSoftmaxLoss(keras.losses.Loss):
    """mean(-log softmax(aam_logits(y, cos θ, m, s))_y): the additive angular margin softmax loss."""

    def __init__(self, margin: float = 0.2, scale: float = 32.0, name: str = "aam_softmax", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin, self.scale = float(margin), float(scale)

    def call(self, y_true, y_pred):
        logits = aam_logits(y_true, y_pred, margin=self.margin, scale=self.scale)
        return keras.losses.sparse_categorical_crossentropy(ops.reshape(y_true, (-1,)), logits, from_logits=True)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "scale": self.scale}
