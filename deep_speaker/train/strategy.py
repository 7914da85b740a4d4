"""The device strategy of a run: the framework's own multi-device mechanism behind ``--strategy``."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import keras

from ..errors import DeepSpeakerError

# Why `--strategy multiworker` is not a strategy of Trainer: Keras 3's fit does not run under TensorFlow's
# MultiWorkerMirroredStrategy (keras-team/keras#20585), and under a multi-process Keras distribution on JAX
# model.predict cannot return outputs that span processes, which the hard-negative pool and the validation
# need. train() hands such runs to deep_speaker.train.multiworker instead.
MULTIWORKER_UNAVAILABLE = "--strategy multiworker runs through deep_speaker.train.multiworker (train()), not Trainer"


def make_strategy(name: str) -> Any:
    """The framework's own multi-device mechanism for a --strategy name (None for 'none').

    TensorFlow: tf.distribute.MirroredStrategy. JAX: a Keras distribution (keras.distribution.DataParallel) over
    all devices.
    """
    if name == "none":
        return None
    if name == "multiworker":
        raise DeepSpeakerError(MULTIWORKER_UNAVAILABLE)
    backend = keras.backend.backend()
    if backend == "jax":
        return keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    if backend != "tensorflow":
        raise DeepSpeakerError(f"--strategy {name} needs the TensorFlow or JAX backend (KERAS_BACKEND={backend})")
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    # Without GPUs, mirror over the logical CPU devices (one unless configured), e.g. for testing.
    return tf.distribute.MirroredStrategy(None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")])


def device_count(strategy: Any) -> int:
    """How many devices a strategy or Keras distribution trains on."""
    if strategy is None:
        return 1
    if isinstance(strategy, keras.distribution.DataParallel):
        return int(strategy.device_mesh.devices.size)
    return strategy.num_replicas_in_sync


def loss_shards(strategy: Any) -> int:
    """In how many parts of a batch the loss is computed separately: one per tf.distribute replica, while a
    Keras distribution (JAX) computes it over the whole batch."""
    return 1 if strategy is None or isinstance(strategy, keras.distribution.DataParallel) else device_count(strategy)


def strategy_scope(strategy: Any) -> ContextManager:
    """The strategy's scope (models built and batches sharded under it); a no-op without a strategy."""
    return strategy.scope() if strategy else contextlib.nullcontext()
