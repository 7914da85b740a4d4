"""The original's three training phases: softmax pre-training, triplet training, softmax probe on frozen embeddings.

Each phase trains with `model.fit` in "epochs" of `save_every` steps; at the end of each one the run validates,
logs (`log.csv`, `tensorboard/`), halves the learning rate on a plateau and writes `OUT/<phase>/last.keras`
(model + optimizer state) and `state.json` atomically, and `best.keras` when the validation metric improved.
Started again with the same command, a run resumes from `last.keras` (step, optimizer state, learning rate).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from . import batching
from ..atomic import save_model, write_json
from ..data.cache import FeatureCache
from ..errors import DeepSpeakerError
from ..settings import settings_difference
from ..data.features import FEATURE_SETTINGS
from ..model.checkpoints import STATE, best_checkpoint, latest_checkpoint, read_state
from ..model.losses import triplet_loss
from ..metrics import equal_error_rate, pair_scores
from ..model.rescnn import EMBEDDING_SIZE, HEAD_NAME, build_rescnn, load_model, model_identity, model_width, to_embedding_model
from ..data.inputs import load_training_inputs

PHASES = ("softmax", "triplet", "probe")
STRATEGIES = ("none", "mirrored", "multiworker")
# Per phase: optimizer and default learning rate as the original (Adam 1e-3 for softmax, Keras' SGD 1e-2),
# and the validation metric that picks best.keras.
OPTIMIZERS = {"softmax": ("adam", 1e-3), "triplet": ("sgd", 1e-2), "probe": ("adam", 1e-3)}
MONITORS = {"softmax": ("val_accuracy", "max"), "triplet": ("val_eer", "min"), "probe": ("val_accuracy", "max")}


@dataclass
class TrainConfig:
    """Everything a training run depends on; the defaults are the original's where it had one."""

    phase: str
    output_dir: Path
    data: Path | None = None  # training inputs (.npz, or the original full_inputs.pkl name)
    cache_dir: Path | None = None  # triplet phase: the feature cache (default: the folder of `data`)
    init_model: Path | None = None  # starting weights (default: best softmax for triplet, best triplet for probe)
    steps: int = 1000
    batch_size: int = 96
    learning_rate: float | None = None
    width: float = 1.0
    crop_frames: int = 160
    seed: int = 0
    save_every: int = 100
    precision: str = "float32"
    strategy: str = "none"
    holdout: float = 0.2  # triplet, random-crop softmax: held-out share of each speaker's audio (validation)
    random_crops: bool = False  # softmax: fresh random crops of the cache each step instead of the fixed inputs
    refresh_every: int = 100  # triplet pool: steps between two new rounds (the original: 100 batches)
    pool_speakers: int = 640
    pool_rounds: int = 4
    max_validation: int = 1000  # crops embedded for the triplet validation EER
    verbose: int = 2

    def __post_init__(self):
        self.output_dir = Path(self.output_dir)
        if self.phase not in PHASES:
            raise DeepSpeakerError(f"unknown phase {self.phase!r}; choose one of {', '.join(PHASES)}")
        if self.strategy not in STRATEGIES:
            raise DeepSpeakerError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.steps < 1 or self.save_every < 1 or self.batch_size < 1 or self.crop_frames < 1:
            raise DeepSpeakerError("steps, save_every, batch_size and crop_frames must be positive")
        if self.learning_rate is None:
            self.learning_rate = OPTIMIZERS[self.phase][1]

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.phase


def optimizer_step(model: keras.Model) -> int:
    """The optimizer's update count (also for a tf.distribute MirroredVariable, which int() refuses)."""
    return int(np.asarray(model.optimizer.iterations))


MULTIWORKER_UNAVAILABLE = (
    "--strategy multiworker is not available: Keras 3's fit does not run under TensorFlow's "
    "MultiWorkerMirroredStrategy (keras-team/keras#20585), and under a multi-process Keras distribution on JAX "
    "model.predict cannot return outputs that span processes, which the hard-negative pool and the validation "
    "need; use --strategy mirrored for the devices of one machine")


def _make_strategy(name: str):
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


def _devices(strategy) -> int:
    """How many devices a strategy or Keras distribution trains on."""
    if strategy is None:
        return 1
    if isinstance(strategy, keras.distribution.DataParallel):
        return int(strategy.device_mesh.devices.size)
    return strategy.num_replicas_in_sync


def _loss_shards(strategy) -> int:
    """In how many parts of a batch the loss is computed separately: one per tf.distribute replica, while a
    Keras distribution (JAX) computes it over the whole batch."""
    return 1 if strategy is None or isinstance(strategy, keras.distribution.DataParallel) else _devices(strategy)


def _check_features(settings: dict, where: str) -> None:
    features = {k: v for k, v in settings.items() if k in FEATURE_SETTINGS}
    if features != FEATURE_SETTINGS:
        raise DeepSpeakerError(f"{where}: made with other feature settings "
                               f"({settings_difference(features, FEATURE_SETTINGS)})")


def _checked_width(model: keras.Model, path: Path, width: float) -> keras.Model:
    """The model, after checking it is a ResCNN of the configured width."""
    try:
        found = model_width(model)
    except ValueError:
        raise DeepSpeakerError(f"{path}: not a ResCNN checkpoint (no conv64-s layer)") from None
    if not math.isclose(found, width, rel_tol=1e-6):
        raise DeepSpeakerError(f"{path}: a ResCNN of width {found:g}, this run uses width {width:g} (--width)")
    return model


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
        best = float(self.best)
        return {"best": best if math.isfinite(best) else None, "wait": int(self.wait), "cooldown_counter": int(self.cooldown_counter)}


def finite_logs(logs: dict) -> dict:
    """The scalar entries of Keras logs as floats, a non-finite one as None (state.json is strict JSON)."""
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in logs.items() if np.isscalar(v)}


class RunCheckpoint(keras.callbacks.Callback):
    """At each epoch end: best.keras when the monitored metric improved, then last.keras and state.json."""

    def __init__(self, run_dir: Path, state: dict, monitor: str, mode: str, plateau: ResumableReduceLROnPlateau,
                 identity_model: keras.Model | None = None):
        super().__init__()
        self.run_dir, self.state, self.monitor, self.mode, self.plateau = run_dir, state, monitor, mode, plateau
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
        if improved:
            save_model(self.model, self.run_dir / "best.keras")
        self.state.update(
            step=step,
            epoch=epoch + 1,
            learning_rate=float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            plateau=self.plateau.counters(),
            last_logs=finite_logs(logs),
            model_identity=model_identity(self.identity_model or self.model),
        )
        if improved:
            self.state.update(best_value=float(value), best_step=step)
        save_model(self.model, self.run_dir / "last.keras")
        write_json(self.run_dir / STATE, self.state, indent=1)


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

    def on_epoch_end(self, epoch, logs=None):
        embeddings = self.model.predict(self.x, batch_size=self.batch_size, verbose=0)
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
        return self.model.predict(x, batch_size=self.batch_size, verbose=0)

    def on_train_batch_end(self, batch, logs=None):
        if optimizer_step(self.model) % self.every == 0:
            self.pool.add_round(self.embed)


class Trainer:
    """One phase of training: prepares data and model (fresh, from a previous phase, or resumed), then fits."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.run_dir = config.run_dir
        self.strategy = _make_strategy(config.strategy)
        self.devices = _devices(self.strategy)
        self.loss_shards = _loss_shards(self.strategy)  # triplet batches: each shard is [anchors; positives; negatives]
        self.resume_state: dict | None = None
        self.model: keras.Model | None = None

    def scope(self):
        return self.strategy.scope() if self.strategy else contextlib.nullcontext()

    # ----- data -----

    def _inputs(self) -> dict:
        if self.config.data is None:
            raise DeepSpeakerError(f"the {self.config.phase} phase needs training inputs (--data_filename)")
        inputs = load_training_inputs(self.config.data, crop_frames=self.config.crop_frames)
        if len(inputs["speakers"]) < 2 or len(inputs["x_train"]) == 0:
            raise DeepSpeakerError(f"{self.config.data}: training needs at least 2 speakers with crops, "
                                   f"found {len(inputs['speakers'])}")
        return inputs

    def _cache(self) -> FeatureCache:
        c = self.config
        cache_dir = c.cache_dir or (Path(c.data).parent if c.data is not None else None)
        if cache_dir is None:
            raise DeepSpeakerError("the triplet phase needs a feature cache (--cache_dir or --data_filename beside it)")
        cache = FeatureCache(cache_dir)
        _check_features(cache.settings, str(cache_dir))
        return cache

    # ----- model -----

    def _load_resumable(self) -> keras.Model | None:
        """The model of last.keras with its optimizer, after checking state.json against this run; None if fresh."""
        path = latest_checkpoint(self.config.output_dir, self.config.phase)
        if path is None:
            return None
        state = read_state(self.run_dir)
        _check_features(state.get("feature_settings", {}), str(self.run_dir / "state.json"))
        if self.config.phase != "probe" and not math.isclose(state["width"], self.config.width, rel_tol=1e-6):
            raise DeepSpeakerError(f"{self.run_dir}: a run of width {state['width']:g} is there; this run uses "
                                   f"width {self.config.width:g} (another --output_dir or the same --width)")
        if state.get("precision", "float32") != self.config.precision:
            raise DeepSpeakerError(f"{self.run_dir}: a run in {state['precision']} is there; this run uses "
                                   f"{self.config.precision} (--precision)")
        try:
            model = keras.saving.load_model(path, custom_objects={"triplet_loss": triplet_loss})
        except (ValueError, OSError, TypeError) as e:
            raise DeepSpeakerError(f"{path}: cannot resume ({str(e).splitlines()[0]})") from None
        self.resume_state = state
        return model

    def _compile(self, model: keras.Model, loss, metrics) -> None:
        kind, _ = OPTIMIZERS[self.config.phase]
        lr = self.config.learning_rate
        optimizer = keras.optimizers.Adam(lr) if kind == "adam" else keras.optimizers.SGD(lr)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)

    def _initial_embedding(self, default_phase: str) -> tuple[keras.Model | None, Path | None]:
        """The embedding model of --init_model or of the best checkpoint of default_phase (None when neither)."""
        source = self.config.init_model or best_checkpoint(self.config.output_dir, default_phase)
        if source is None:
            return None, None
        return _checked_width(to_embedding_model(load_model(source)), source, self.config.width), source

    # ----- fit -----

    def _callbacks(self, state: dict, identity_model: keras.Model | None = None) -> list:
        c = self.config
        monitor, mode = MONITORS[c.phase]
        plateau = ResumableReduceLROnPlateau(restored=state.get("plateau"), monitor=monitor, mode=mode, factor=0.5,
                                             patience=10, min_lr=c.learning_rate / 10)  # the original: 1e-3 -> 1e-4
        callbacks = [StopAtStep(c.steps), plateau,
                     RunCheckpoint(self.run_dir, state, monitor, mode, plateau, identity_model),
                     keras.callbacks.CSVLogger(str(self.run_dir / "log.csv"), append=True)]
        # TensorBoard logs need the tensorboard package (not a dependency): written when it is installed.
        if keras.backend.backend() == "tensorflow" and importlib.util.find_spec("tensorboard") is not None:
            callbacks.append(keras.callbacks.TensorBoard(str(self.run_dir / "tensorboard"), write_graph=False))
        return callbacks

    def _state(self, model: keras.Model, **extra) -> dict:
        c = self.config
        state = dict(self.resume_state or {})
        state.setdefault("started_from", extra.pop("started_from", None))
        state.update(phase=c.phase, seed=c.seed, width=c.width, precision=c.precision, crop_frames=c.crop_frames,
                     batch_size=c.batch_size, save_every=c.save_every, steps=c.steps,
                     feature_settings=FEATURE_SETTINGS, **extra)
        return state

    def _fit(self, model, data, validation, state, extra_callbacks=(), identity_model=None) -> dict:
        """model.fit from the saved step to config.steps, in epochs of save_every steps; returns the last logs."""
        c = self.config
        self.model = model  # kept for callers (tests, the quality recipe) after training
        self.run_dir.mkdir(parents=True, exist_ok=True)
        start = optimizer_step(model)
        if start >= c.steps:
            print(f"{self.run_dir}: already at step {start} of {c.steps}; nothing to do")
            return dict(state.get("last_logs", {}))
        if start:
            print(f"{self.run_dir}: resuming at step {start}")
        history = model.fit(
            data(start),
            validation_data=validation,
            steps_per_epoch=c.save_every,
            epochs=math.ceil(c.steps / c.save_every),
            initial_epoch=start // c.save_every,
            shuffle=False,  # batches are already a seeded function of the step
            verbose=c.verbose,
            callbacks=[*extra_callbacks, *self._callbacks(state, identity_model)],
        )
        return {k: float(v[-1]) for k, v in history.history.items()}

    def train(self) -> dict:
        """Run the phase; returns the final logs (loss, accuracy or EER) plus best_value and step."""
        keras.utils.set_random_seed(self.config.seed)
        # The whole phase in the strategy's scope: models are built in it and a Keras distribution (JAX) shards
        # the batches of fit and predict only while it is the current one.
        with self.scope():
            logs = {"softmax": self._train_softmax, "triplet": self._train_triplet, "probe": self._train_probe}[
                self.config.phase]()
        state = read_state(self.run_dir) if (self.run_dir / "state.json").is_file() else {}
        return {**logs, "best_value": state.get("best_value"), "step": state.get("step")}

    def _train_softmax(self) -> dict:
        c = self.config
        if c.random_crops:
            cache = self._cache()
            train_segments, held_out = batching.speaker_segments(cache, c.holdout, c.seed)
            x_val, y_val = self._held_out_crops(cache, held_out)
            inputs = {"speakers": sorted(train_segments)}
        else:
            inputs = self._inputs()
        num_speakers = len(inputs["speakers"])
        model = self._load_resumable()
        if model is not None and model.output_shape[-1] != num_speakers:
            raise DeepSpeakerError(f"{self.run_dir}: its softmax has {model.output_shape[-1]} speakers, "
                                   f"the inputs {num_speakers}")
        if model is None:
            model = build_rescnn(c.width, num_speakers=num_speakers, precision=c.precision)
            self._compile(model, "sparse_categorical_crossentropy", ["accuracy"])
        state = self._state(model, speakers=list(inputs["speakers"]), random_crops=c.random_crops)
        if c.random_crops:
            validation = (x_val, y_val)
        else:
            validation = (inputs["x_test"], inputs["y_test"]) if len(inputs["x_test"]) else None

        def data(start):
            if c.random_crops:
                return batching.RandomCropBatches(cache, train_segments, c.crop_frames, c.batch_size,
                                                  c.steps - start, first_step=start, seed=c.seed)
            return batching.SoftmaxBatches(inputs["x_train"], inputs["y_train"], c.batch_size, c.steps - start,
                                           first_step=start, seed=c.seed)

        return self._fit(model, data, validation, state)

    def _held_out_crops(self, cache: FeatureCache, held_out: dict) -> tuple[np.ndarray, np.ndarray]:
        """Held-out crops (about one per crop length of held-out audio) and their speaker indices."""
        rng = np.random.default_rng([self.config.seed, 1])
        crops, labels = [], []
        for index, speaker in enumerate(sorted(held_out)):
            for segment in held_out[speaker]:
                count = max(1, round((segment[2] - segment[1]) / self.config.crop_frames))
                for _ in range(count):
                    crops.append(batching.segment_crop(cache, speaker, segment, self.config.crop_frames, rng))
                    labels.append(index)
        if len(set(labels)) < 2:
            raise DeepSpeakerError(f"{cache.path}: fewer than 2 speakers have held-out audio for the validation EER")
        keep = np.sort(rng.permutation(len(crops))[: self.config.max_validation])
        return np.stack(crops)[keep], np.asarray(labels)[keep]

    def _train_triplet(self) -> dict:
        c = self.config
        cache = self._cache()
        train_segments, held_out = batching.triplet_segments(cache, c.crop_frames, c.holdout, c.seed)
        x_val, y_val = self._held_out_crops(cache, held_out)
        model = self._load_resumable()
        started_from = None
        if model is None:
            source_model, source = self._initial_embedding("softmax")
            model = build_rescnn(c.width, precision=c.precision)
            if source_model is not None:  # weights by layer name: the same builder, so the same order
                model.set_weights(source_model.get_weights())
            self._compile(model, triplet_loss, None)
            started_from = str(source) if source else None
            if source:
                print(f"triplet training starts from {source}")
        state = self._state(model, started_from=started_from)
        start = optimizer_step(model)
        pool = batching.TripletPool(cache, train_segments, c.crop_frames, c.pool_speakers, 2, c.pool_rounds,
                                    seed=[c.seed, start])
        refresh = PoolRefresh(pool, c.refresh_every, c.batch_size)
        refresh.set_model(model)
        pool.fill(refresh.embed)

        def data(first):
            return batching.TripletBatches(pool, c.batch_size, c.steps - first, first_step=first, seed=c.seed,
                                           replicas=self.loss_shards)

        validation = TripletValidation(x_val, y_val, c.batch_size, c.seed)
        if start == 0:
            self._starting_point_as_best(model, validation, state)
        return self._fit(model, data, None, state, extra_callbacks=(refresh, validation))

    def _starting_point_as_best(self, model: keras.Model, validation: TripletValidation, state: dict) -> None:
        """Validate the starting model (e.g. the softmax checkpoint) and keep it as best.keras until a step beats it."""
        logs: dict = {}
        validation.set_model(model)
        validation.on_epoch_end(-1, logs)
        print(f"starting point: val_eer {logs['val_eer']:.4f}")
        state.update(best_value=logs["val_eer"], best_step=0, start_logs=finite_logs(logs))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_model(model, self.run_dir / "best.keras")

    def _train_probe(self) -> dict:
        c = self.config
        inputs = self._inputs()
        source = c.init_model or best_checkpoint(c.output_dir, "triplet") or best_checkpoint(c.output_dir, "softmax")
        if source is None:
            raise DeepSpeakerError(f"{c.output_dir}: no triplet or softmax checkpoint to probe; train one first "
                                   "or give --init_model")
        embedder = _checked_width(to_embedding_model(load_model(source)), source, c.width)
        identity = model_identity(embedder)
        model = self._load_resumable()
        if model is not None and self.resume_state.get("embedding_identity") != identity:
            raise DeepSpeakerError(f"{self.run_dir}: probe of another embedding model than {source}; "
                                   "use another --output_dir")
        # The embedding layers are frozen, so each crop's embedding is computed once, not at every step.
        x_train = embedder.predict(inputs["x_train"], batch_size=c.batch_size, verbose=0)
        x_test = embedder.predict(inputs["x_test"], batch_size=c.batch_size, verbose=0)
        if model is None:
            model = keras.Sequential([keras.Input((EMBEDDING_SIZE,)),
                                      keras.layers.Dense(len(inputs["speakers"]), activation="softmax",
                                                         name=HEAD_NAME)], name="probe")
            self._compile(model, "sparse_categorical_crossentropy", ["accuracy"])
        state = self._state(model, started_from=str(source), embedding_identity=identity)
        validation = (x_test, inputs["y_test"]) if len(x_test) else None

        def data(start):
            return batching.SoftmaxBatches(x_train, inputs["y_train"], min(c.batch_size, len(x_train)),
                                           c.steps - start, first_step=start, seed=c.seed)

        return self._fit(model, data, validation, state, identity_model=embedder)


def train(config: TrainConfig) -> dict:
    """Run one training phase (see Trainer.train)."""
    return Trainer(config).train()
