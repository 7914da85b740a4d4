"""The original's three training phases: softmax pre-training, triplet training, softmax probe on frozen embeddings.

Each phase trains with `model.fit` in "epochs" of `save_every` steps; at the end of each one the run validates,
logs (`log.csv`, `tensorboard/`), halves the learning rate on a plateau and writes `OUT/<phase>/last.keras`
(model + optimizer state) and `state.json` atomically, and `best.keras` when the validation metric improved.
Started again with the same command, a run resumes from `last.keras` (step, optimizer state, learning rate).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import keras
import numpy as np

from ..data.cache import FeatureCache
from ..data.features import FEATURE_SETTINGS
from ..data.inputs import load_training_inputs
from ..errors import DeepSpeakerError
from ..model.checkpoints import (
    LAST,
    STATE,
    best_checkpoint,
    read_state,
    remove_stale_temporaries,
    resume_state,
    save_checkpoint,
)
from ..model.losses import AAMSoftmaxLoss, triplet_loss
from ..model.rescnn import (
    EMBEDDING_SIZE,
    HEAD_NAME,
    build_rescnn,
    head_of,
    load_model,
    model_identity,
    model_width,
    to_embedding_model,
)
from ..settings import settings_difference
from . import batching
from .callbacks import (
    PoolRefresh,
    TripletValidation,
    finite_logs,
    optimizer_step,
    restore_seed_states,
    run_callbacks,
    seed_states,
)
from .config import OPTIMIZERS, TrainConfig
from .pipeline import ProcessBatches, RandomCropSampler, tf_dataset
from .strategy import device_count, loss_shards, make_strategy, strategy_scope

log = logging.getLogger(__name__)


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


class Trainer:
    """One phase of training: prepares data and model (fresh, from a previous phase, or resumed), then fits."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.run_dir = config.run_dir
        self.strategy = make_strategy(config.strategy)
        self.devices = device_count(self.strategy)
        self.loss_shards = loss_shards(self.strategy)  # triplet batches: each shard is [anchors; positives; negatives]
        self.resume_state: dict | None = None
        self.model: keras.Model | None = None

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
        state = resume_state(self.run_dir)
        if state is None:
            return None
        path = self.run_dir / LAST
        _check_features(state.get("feature_settings", {}), str(self.run_dir / STATE))
        if self.config.phase != "probe" and not math.isclose(state["width"], self.config.width, rel_tol=1e-6):
            raise DeepSpeakerError(f"{self.run_dir}: a run of width {state['width']:g} is there; this run uses "
                                   f"width {self.config.width:g} (another --output_dir or the same --width)")
        if state.get("precision", "float32") != self.config.precision:
            raise DeepSpeakerError(f"{self.run_dir}: a run in {state['precision']} is there; this run uses "
                                   f"{self.config.precision} (--precision)")
        try:
            model = keras.saving.load_model(path, custom_objects={"triplet_loss": triplet_loss}, safe_mode=True)
        except (ValueError, OSError, TypeError) as e:
            raise DeepSpeakerError(f"{path}: cannot resume ({str(e).splitlines()[0]})") from None
        restore_seed_states(model, state.get("seed_states", {}))
        if optimizer_step(model) != state.get("step"):  # possible only for checkpoints saved without their state
            raise DeepSpeakerError(f"{self.run_dir}: {STATE} is of step {state.get('step')}, {LAST} of step "
                                   f"{optimizer_step(model)} (a save that did not finish); move the folder away")
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

    def _masks(self) -> batching.Masks:
        """SpecAugment's (max_frames, max_bins) when --spec-augment, else None."""
        return (self.config.mask_frames, self.config.mask_bins) if self.config.spec_augment else None

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
            log.info("%s: already at step %d of %d; nothing to do", self.run_dir, start, c.steps)
            return dict(state.get("last_logs", {}))
        if start:
            log.info("%s: resuming at step %d", self.run_dir, start)
        batches = data(start)
        try:
            history = model.fit(
                batches,
                validation_data=validation,
                steps_per_epoch=c.save_every,
                epochs=math.ceil(c.steps / c.save_every),
                initial_epoch=start // c.save_every,
                shuffle=False,  # batches are already a seeded function of the step
                verbose=c.verbose,
                callbacks=[*extra_callbacks, *run_callbacks(c, state, identity_model)],
            )
        finally:  # an iterator over worker processes stops them (a Dataset or PyDataset has nothing to close)
            if hasattr(batches, "close"):
                batches.close()
        return {k: float(v[-1]) for k, v in history.history.items()}

    def train(self) -> dict:
        """Run the phase; returns the final logs (loss, accuracy or EER) plus best_value and step."""
        remove_stale_temporaries(self.run_dir)
        keras.utils.set_random_seed(self.config.seed)
        # The whole phase in the strategy's scope: models are built in it and a Keras distribution (JAX) shards
        # the batches of fit and predict only while it is the current one.
        with strategy_scope(self.strategy):
            logs = {"softmax": self._train_softmax, "triplet": self._train_triplet, "probe": self._train_probe}[
                self.config.phase]()
        state = read_state(self.run_dir) if (self.run_dir / STATE).is_file() else {}
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
        if model is not None and head_of(model) != c.softmax_head:
            raise DeepSpeakerError(f"{self.run_dir}: a run with the {head_of(model)} head is there; this run uses "
                                   f"{c.softmax_head} (--softmax-head)")
        if model is None:
            model = build_rescnn(c.width, num_speakers=num_speakers, precision=c.precision, head=c.softmax_head)
            loss = "sparse_categorical_crossentropy" if c.softmax_head == "softmax" else AAMSoftmaxLoss(c.margin,
                                                                                                         c.scale)
            self._compile(model, loss, ["accuracy"])
        # Recorded only when used, so that the original's runs keep the original's state.
        extra = {"softmax_head": c.softmax_head, "margin": c.margin, "scale": c.scale} if c.softmax_head != "softmax" \
            else {}
        if c.spec_augment:
            extra["spec_augment"] = list(self._masks())
        state = self._state(model, speakers=list(inputs["speakers"]), random_crops=c.random_crops, **extra)
        if c.random_crops:
            validation = (x_val, y_val)
        else:
            validation = (inputs["x_test"], inputs["y_test"]) if len(inputs["x_test"]) else None

        def data(start):
            if c.random_crops and c.input_pipeline != "pydataset":
                sampler = RandomCropSampler(cache, train_segments, c.crop_frames, c.batch_size, c.seed, self._masks())
                if c.input_pipeline == "processes":
                    return iter(ProcessBatches(sampler, c.steps - start, start, workers=c.input_workers))
                return tf_dataset(sampler, start, c.steps - start)
            if c.random_crops:
                return batching.RandomCropBatches(cache, train_segments, c.crop_frames, c.batch_size,
                                                  c.steps - start, first_step=start, seed=c.seed, masks=self._masks())
            return batching.SoftmaxBatches(inputs["x_train"], inputs["y_train"], c.batch_size, c.steps - start,
                                           first_step=start, seed=c.seed, masks=self._masks())

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
                log.info("triplet training starts from %s", source)
        state = self._state(model, started_from=started_from,
                            **({"spec_augment": list(self._masks())} if c.spec_augment else {}))
        start = optimizer_step(model)
        pool = batching.TripletPool(cache, train_segments, c.crop_frames, c.pool_speakers, 2, c.pool_rounds,
                                    seed=[c.seed, start], masks=self._masks())
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
        log.info("starting point: val_eer %.4f", logs["val_eer"])
        state.update(best_value=logs["val_eer"], best_step=0, start_logs=finite_logs(logs), step=0, epoch=0,
                     seed_states=seed_states(model))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A checkpoint at step 0 too: killed before the first save, the run resumes instead of being refused.
        save_checkpoint(model, self.run_dir, state, best=True)

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
    """Run one training phase (see Trainer.train); with --strategy multiworker, this worker's part of it."""
    if config.strategy == "multiworker":
        from .multiworker import train_worker  # it builds on Trainer

        return train_worker(config)
    return Trainer(config).train()
