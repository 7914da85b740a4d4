"""The Deep Speaker triplet loss on cosine similarity."""

from __future__ import annotations

from keras import ops


def triplet_loss(y_true, y_pred, alpha: float = 0.1):
    """mean(max(cos(a, n) - cos(a, p) + alpha, 0)) over a batch of [anchors; positives; negatives] thirds.

    y_true is ignored (Keras passes one). y_pred holds unit-length embeddings, so a cosine is a dot
    product; it is computed in float32 whatever the model's compute dtype. The batch size must be a
    multiple of 3.
    """
    del y_true
    embeddings = ops.cast(y_pred, "float32")
    # [3, n, d]: a reshape works with a dynamic batch size on every backend, unlike slicing by n.
    triplets = ops.reshape(embeddings, (3, -1, ops.shape(embeddings)[-1]))
    anchors, positives, negatives = triplets[0], triplets[1], triplets[2]
    cos_ap = ops.sum(anchors * positives, axis=-1)
    cos_an = ops.sum(anchors * negatives, axis=-1)
    return ops.mean(ops.maximum(cos_an - cos_ap + alpha, 0.0))
