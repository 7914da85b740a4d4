"""The Keras callbacks of a training run: stop at the step budget, a resumable learning-rate plateau, the
checkpoints and state of the run folder, the triplet validation and the hard-negative pool refresh."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import keras
import numpy as np

from ..metrics import equal_error_rate, pair_scores
from ..model.checkpoints import LOG, save_checkpoint
from ..model.losses import triplet_loss
from ..model.rescnn import model_identity
from . import batching
from .config import TrainConfig


def optimizer_step(model: keras.Model) -> int:
    """The optimizer's update count (also for a tf.distribute MirroredVariable, which int() refuses)."""
    return int(np.asarray(model.optimizer.iterations))


def finite_logs(logs: dict) -> dict:
    """The scalar entries of Keras logs as floats, a non-finite one as None (state.json is strict JSON)."""
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in logs.items() if np.isscalar(v)}


class StopAtStep(keras.callbacks.Callback):
    """Stop when the optimizer has made `steps` updates (the last epoch may be shorter than save_every)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if optimizer_step(self.model) >= self.steps:
            self.model.stop_training = True


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose wait/best/cooldown counters survive a restart (kept in state.json)."""

    def __init__(self, restored: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.restored = restored or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key in ("best", "wait", "cooldown_counter"):
            if self.restored.get(key) is not None:  # None: no best yet (strict JSON has no infinity)
                setattr(self, key, self.restored[key])

    def counters(self) -> dict:
        """The counters to store in state.json (an infinite best, i.e. none yet, as None)."""
        best = float(self.best)
        return {"best": best if math.isfinite(best) else None, "wait": int(self.wait),
                "cooldown_counter": int(self.cooldown_counter)}


def seed_states(model: keras.Model) -> dict[str, list[int]]:
    """The state of the random-seed generator of each layer that has one (dropout masks), by layer name.

    Keras' .keras files do not bring these back (a loaded model draws fresh seeds, and the variables' paths
    change from one build to the next), so a resumed run would mask other units than an uninterrupted one;
    the checkpoint's state carries them instead.
    """
    return {layer.name: np.asarray(keras.ops.convert_to_numpy(layer.seed_generator.state)).tolist()
            for layer in model.layers if getattr(layer, "seed_generator", None) is not None}


def restore_seed_states(model: keras.Model, states: dict[str, list[int]]) -> None:
    """Set the seed generators of a model's layers to the states :func:`seed_states` recorded."""
    for layer in model.layers:
        generator = getattr(layer, "seed_generator", None)
        if generator is not None and layer.name in states:
            generator.state.assign(np.asarray(states[layer.name],
                                              dtype=keras.backend.standardize_dtype(generator.state.dtype)))


class RunCheckpoint(keras.callbacks.Callback):
    """At each epoch end: best.keras when the monitored metric improved, a kept copy at every multiple of
    ``keep_every`` steps (0: none), then last.keras and state.json."""

    def __init__(self, run_dir: Path, state: dict, monitor: str, mode: str,
                 plateau: ResumableReduceLROnPlateau | None, identity_model: keras.Model | None = None,
                 keep_every: int = 0):
        super().__init__()
        self.run_dir, self.state, self.monitor, self.mode, self.plateau = run_dir, state, monitor, mode, plateau
        self.keep_every = keep_every
        self.identity_model = identity_model  # the embedding model whose identity the state records

    def _improved(self, value: float | None) -> bool:
        best = self.state.get("best_value")
        if value is None or not np.isfinite(value):
            return False
        return best is None or (value > best if self.mode == "max" else value < best)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        step = optimizer_step(self.model)
        value = logs.get(self.monitor)
        improved = self._improved(value)
        self.state.update(
            step=step,
            epoch=epoch + 1,
            learning_rate=float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            plateau=None if self.plateau is None else self.plateau.counters(),
            last_logs=finite_logs(logs),
            model_identity=model_identity(self.identity_model or self.model),
            seed_states=seed_states(self.model),
        )
        if improved:
            self.state.update(best_value=float(value), best_step=step)
        save_checkpoint(self.model, self.run_dir, self.state, best=improved,
                        keep=bool(self.keep_every) and step % self.keep_every == 0)


def validation_triplets(speakers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices [anchors; positives; negatives]: each crop with a same-speaker partner, a random other speaker's crop."""
    anchors, positives, negatives = [], [], []
    for i, speaker in enumerate(speakers):
        same = np.flatnonzero((speakers == speaker) & (np.arange(len(speakers)) != i))
        if len(same):
            anchors.append(i)
            positives.append(rng.choice(same))
            negatives.append(rng.choice(np.flatnonzero(speakers != speaker)))
    return np.asarray(anchors + positives + negatives, dtype=np.int64)


class TripletValidation(keras.callbacks.Callback):
    """Adds val_eer (all pairs of held-out crops) and val_loss (random held-out triplets) to a triplet run's logs."""

    def __init__(self, x: np.ndarray, speakers: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self.x, self.speakers, self.batch_size = x, speakers, batch_size
        self.triplets = validation_triplets(speakers, np.random.default_rng([seed, 2]))

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Embeddings of crops under the current model."""
        return self.model.predict(x, batch_size=self.batch_size, verbose=0)

    def on_epoch_end(self, epoch, logs=None):
        embeddings = self.embed(self.x)
        if logs is None:
            return
        logs["val_eer"] = equal_error_rate(*pair_scores(embeddings, self.speakers))
        if len(self.triplets):
            logs["val_loss"] = float(keras.ops.convert_to_numpy(triplet_loss(None, embeddings[self.triplets])))


class PoolRefresh(keras.callbacks.Callback):
    """Every `every` steps, add a round of crops embedded by the current model to the triplet pool."""

    def __init__(self, pool: batching.TripletPool, every: int, batch_size: int):
        super().__init__()
        self.pool, self.every, self.batch_size = pool, every, batch_size

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Embeddings of crops under the current model."""
        return self.model.predict(x, batch_size=self.batch_size, verbose=0)

    def on_train_batch_end(self, batch, logs=None):
        if optimizer_step(self.model) % self.every == 0:
            self.pool.add_round(self.embed)


def run_callbacks(config: TrainConfig, state: dict, run_dir: Path, *,
                  identity_model: keras.Model | None = None) -> list:
    """The callbacks of every phase: step budget, learning-rate plateau (unless --lr_schedule cosine), checkpoints and
    state, CSV (and TensorBoard) log, written into run_dir (the run folder; a scratch folder on the workers other than
    0 of a multi-worker run)."""
    monitor, mode = config.monitor
    plateau = None
    if config.lr_schedule == "plateau":  # a cosine schedule lives in the optimizer
        plateau = ResumableReduceLROnPlateau(restored=state.get("plateau"), monitor=monitor, mode=mode, factor=0.5,
                                             patience=10, min_lr=config.learning_rate / 10)  # the original: 1e-3 -> 1e-4
    callbacks = [StopAtStep(config.steps), *([plateau] if plateau else []),
                 RunCheckpoint(run_dir, state, monitor, mode, plateau, identity_model, keep_every=config.keep_every),
                 keras.callbacks.CSVLogger(str(run_dir / LOG), append=True)]
    # TensorBoard logs need the tensorboard package (not a dependency): written when it is installed.
    if keras.backend.backend() == "tensorflow" and importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False))
    return callbacks
