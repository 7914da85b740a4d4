"""The original's three training phases: softmax pre-training, triplet training, softmax probe on frozen embeddings.

Each phase trains with `model.fit` in "epochs" of `save_every` steps; at the end of each one the run validates,
logs (`log.csv`, `tensorboard/`), halves the learning rate on a plateau and writes `OUT/<phase>/last.keras`
(model + optimizer state) and `state.json` atomically, and `best.keras` when the validation metric improved.
Started again with the same command, a run resumes from `last.keras` (step, optimizer state, learning rate).

The recipe of each phase is written once, here; training across processes (train.multiworker) overrides the
hooks of :class:`Trainer` only, and :mod:`train.run` picks which one runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..data.sources import FeatureSource, open_features
from ..data.features import FEATURE_SETTINGS
from ..data.inputs import load_training_inputs
from ..data.targets import TeacherTargets, read_targets, target_key
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
from ..model.losses import AAMSoftmaxLoss, ShardedTripletLoss, SoftmaxCrossEntropy, triplet_loss
from ..model.rescnn import (
    EMBEDDING_SIZE,
    HEAD_NAME,
    Teacher,
    build_rescnn,
    head_of,
    load_model,
    model_identity,
    model_width,
    teacher_of,
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

# What Keras' fit takes as validation_data: (crops, labels), or None for none.
Validation = tuple[np.ndarray, np.ndarray] | None

log = logging.getLogger(__name__)


# Options a resumed run must keep as its state.json records them, and their defaults (what older states hold).
RESUMED_AS_WRITTEN = ("lr_schedule", "speaker_weight", "triplet_margin", "precision")
TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _value_text(value: Any) -> str:
    """An option's value as a refusal prints it (a float without trailing zeros)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


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
    """One phase of training: prepares data and model (fresh, from a previous phase, or resumed), then fits.

    Hooks: the methods a runner that trains one phase across processes overrides (train.multiworker's
    ``WorkerTrainer``), so that every phase's recipe (heads, SpecAugment, crops, input pipelines, checks) is
    written once. Here, in one process:

    - where the model is built and compiled: :meth:`make_strategy` (the devices, in whose scope models are built),
      :meth:`compile` (optimizer and loss of a fresh model) and :meth:`triplet_loss`;
    - where batches come from: :meth:`feed` (what fit gets of the softmax phase's global batches: all) and
      :meth:`triplet_part` (the seed of the hard-negative pool and the rows it feeds to each batch);
    - where checkpoints are written: :attr:`checkpoint_dir` (last.keras, best.keras, state.json, log.csv),
      :meth:`run_state` (what state.json records) and :meth:`resumable_state` (the state to resume from, checked
      against this run by :meth:`load_resumable`);
    - how validation is shared: :meth:`softmax_validation`, :meth:`triplet_validation` and :meth:`pool_refresh`
      (the callbacks that embed or evaluate with the current weights), and :meth:`callbacks` (more callbacks).
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.run_dir = config.run_dir
        self.checkpoint_dir = self.run_dir
        self.strategy = self.make_strategy()
        self.devices = device_count(self.strategy)
        self.loss_shards = loss_shards(self.strategy)  # triplet batches: each shard is [anchors; positives; negatives]
        self.resume_state: dict | None = None
        # Kept for callers (tests, the quality recipe, the multi-worker runner) once fit starts: the model, the step
        # it started from and the state its checkpoints write.
        self.model: keras.Model | None = None
        self.first_step = 0
        self.state: dict = {}

    # ----- hooks (see the class doc) -----

    def make_strategy(self) -> Any:
        """The device strategy of --strategy (none or mirrored): see strategy.make_strategy."""
        return make_strategy(self.config.strategy)

    def resumable_state(self) -> dict | None:
        """The saved state of the run folder to resume from, None when the run is fresh (resume_state's checks)."""
        return resume_state(self.run_dir)

    def compile(self, model: keras.Model, loss: Any, metrics: list[str] | None, loss_weight: float = 1.0) -> None:
        """Give a freshly built model the phase's optimizer (the original's: Adam, SGD for triplet) and loss (times
        loss_weight; the model's own added losses, a teacher's, are not weighed by it)."""
        kind, _ = OPTIMIZERS[self.config.phase]
        c = self.config
        lr = keras.optimizers.schedules.CosineDecay(c.learning_rate, c.steps) if c.lr_schedule == "cosine" else \
            c.learning_rate
        optimizer = keras.optimizers.Adam(lr) if kind == "adam" else keras.optimizers.SGD(lr)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                      loss_weights=None if loss_weight == 1.0 else [loss_weight])

    def triplet_loss(self) -> Any:
        """The triplet phase's loss, over the batch (a tf.distribute replica computes it over its own shard)."""
        return ShardedTripletLoss(1, alpha=self.config.triplet_margin)

    def feed(self, batches: Any) -> Any:
        """What fit gets from the softmax phase's global batches (a PyDataset, tf.data Dataset or iterator)."""
        return batches

    def triplet_part(self, start: int) -> tuple[list[int], int]:
        """The seed of the hard-negative pool (new on each resume: seeded by the step) and its rows of each batch."""
        return [self.config.seed, start], self.config.batch_size

    def softmax_validation(self, model: keras.Model, validation: Validation
                           ) -> tuple[Validation, list[keras.callbacks.Callback]]:
        """Fit's validation_data and the callbacks that add val_* to the logs: Keras' own validation here."""
        return validation, []

    def triplet_validation(self, x: np.ndarray, speakers: np.ndarray) -> TripletValidation:
        """The callback that adds the validation EER and loss of held-out crops to the logs."""
        return TripletValidation(x, speakers, self.config.batch_size, self.config.seed)

    def pool_refresh(self, pool: batching.TripletPool) -> PoolRefresh:
        """The callback that embeds new rounds of the hard-negative pool with the current weights."""
        return PoolRefresh(pool, self.config.refresh_every, self.config.batch_size)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """Callbacks for fit besides the run's own (run_callbacks) and the phase's: none here."""
        return []

    # ----- data -----

    def _inputs(self) -> dict:
        if self.config.data is None:
            raise DeepSpeakerError(f"the {self.config.phase} phase needs training inputs (--data_filename)")
        inputs = load_training_inputs(self.config.data, crop_frames=self.config.crop_frames)
        if len(inputs["speakers"]) < 2 or len(inputs["x_train"]) == 0:
            raise DeepSpeakerError(f"{self.config.data}: training needs at least 2 speakers with crops, "
                                   f"found {len(inputs['speakers'])}")
        return inputs

    def _cache(self) -> FeatureSource:
        cache_dir = self.config.features_dir
        if cache_dir is None:
            raise DeepSpeakerError("the triplet phase needs a feature cache (--cache_dir or --data_filename beside it)")
        cache = open_features(cache_dir)
        _check_features(cache.settings, str(cache_dir))
        return cache

    # ----- model -----

    def load_resumable(self) -> keras.Model | None:
        """The model of last.keras with its optimizer, after checking state.json against this run; None if fresh."""
        state = self.resumable_state()
        if state is None:
            return None
        path = self.run_dir / LAST
        _check_features(state.get("feature_settings", {}), str(self.run_dir / STATE))
        if self.config.phase != "probe" and not math.isclose(state["width"], self.config.width, rel_tol=1e-6):
            raise DeepSpeakerError(f"{self.run_dir}: a run of width {state['width']:g} is there; this run uses "
                                   f"width {self.config.width:g} (another --output_dir or the same --width)")
        for name in RESUMED_AS_WRITTEN:
            # A state written before the option existed holds its default (the plateau, 1, 0.1, float32).
            there, here = state.get(name, TRAIN_DEFAULTS[name]), getattr(self.config, name)
            if there != here:
                raise DeepSpeakerError(f"{self.run_dir}: a run with --{name} {_value_text(there)} is there; this run "
                                       f"uses {_value_text(here)} (another --output_dir or the same --{name})")
        if self.config.lr_schedule == "cosine" and state.get("steps") != self.config.steps:
            raise DeepSpeakerError(f"{self.run_dir}: a cosine schedule over {state.get('steps')} steps is there; this "
                                   f"run asks for {self.config.steps} (--steps fixes the schedule: the same --steps, "
                                   f"or another --output_dir)")
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

    def softmax_model(self, num_speakers: int, teacher: Teacher | None = None) -> keras.Model:
        """A fresh ResCNN with the configured softmax head over num_speakers (and the distillation layer of a
        teacher), compiled; the speaker loss weighs --speaker_weight."""
        c = self.config
        model = build_rescnn(width=c.width, num_speakers=num_speakers, precision=c.precision, head=c.softmax_head,
                             teacher=teacher)
        loss = SoftmaxCrossEntropy() if c.softmax_head == "softmax" else AAMSoftmaxLoss(c.margin, c.scale)
        self.compile(model, loss, ["accuracy"], loss_weight=c.speaker_weight)
        return model

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

    def run_state(self, model: keras.Model, **extra) -> dict:
        """What the run's state.json records (the resumed run's state, updated), with extra fields."""
        c = self.config
        state = dict(self.resume_state or {})
        state.setdefault("started_from", extra.pop("started_from", None))
        state.update(phase=c.phase, seed=c.seed, width=c.width, precision=c.precision, lr_schedule=c.lr_schedule,
                     crop_frames=c.crop_frames,
                     batch_size=c.batch_size, save_every=c.save_every, steps=c.steps,
                     feature_settings=FEATURE_SETTINGS, **extra)
        return state

    def _fit(self, model, data, validation, state, extra_callbacks=(), identity_model=None) -> dict:
        """model.fit from the saved step to config.steps, in epochs of save_every steps; returns the last logs."""
        c = self.config
        self.model, self.state = model, state
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.first_step = start = optimizer_step(model)
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
                callbacks=[*extra_callbacks, *self.callbacks(),
                           *run_callbacks(c, state, self.checkpoint_dir, identity_model=identity_model)],
            )
        finally:  # an iterator over worker processes stops them (a Dataset or PyDataset has nothing to close)
            if hasattr(batches, "close"):
                batches.close()
        return {k: float(v[-1]) for k, v in history.history.items()}

    def train(self) -> dict:
        """Run the phase; returns the final logs (loss, accuracy or EER) plus best_value and step."""
        remove_stale_temporaries(self.checkpoint_dir)
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
            train_segments, held_out = batching.speaker_segments(cache, c.holdout, c.seed, c.fewest_speakers)
            x_val, y_val, val_keys = self._held_out_crops(cache, held_out)
            inputs = {"speakers": sorted(train_segments)}
        else:
            inputs = self._inputs()
        num_speakers = len(inputs["speakers"])
        teacher = self._teacher(cache) if c.teacher else None
        model = self.load_resumable()
        if model is not None and model.output_shape[-1] != num_speakers:
            raise DeepSpeakerError(f"{self.run_dir}: its softmax has {model.output_shape[-1]} speakers, "
                                   f"the inputs {num_speakers}")
        if model is not None and head_of(model) != c.softmax_head:
            raise DeepSpeakerError(f"{self.run_dir}: a run with the {head_of(model)} head is there; this run uses "
                                   f"{c.softmax_head} (--softmax-head)")
        wanted = None if teacher is None else Teacher(teacher.embeddings.shape[1], c.teacher_weight, c.teacher_loss)
        if model is not None and teacher_of(model) != wanted:
            raise DeepSpeakerError(f"{self.run_dir}: a run {teacher_of(model) or 'without a teacher'} is there; this "
                                   f"run trains {wanted or 'without a teacher'} (--teacher, --teacher_weight, "
                                   f"--teacher_loss)")
        if model is None:
            model = self.softmax_model(num_speakers, wanted)
        # Recorded only when used, so that the original's runs keep the original's state.
        extra = {"softmax_head": c.softmax_head, "margin": c.margin, "scale": c.scale} if c.softmax_head != "softmax" \
            else {}
        if c.spec_augment:
            extra["spec_augment"] = list(self._masks())
        if teacher is not None:
            extra.update(teacher=teacher.teacher, teacher_identity=teacher.identity, teacher_weight=c.teacher_weight,
                         teacher_loss=c.teacher_loss, speaker_weight=c.speaker_weight)
        state = self.run_state(model, speakers=list(inputs["speakers"]), random_crops=c.random_crops, **extra)
        if c.random_crops:
            validation = (x_val, y_val) if teacher is None else ((x_val, teacher.rows(val_keys)), y_val)
        else:
            validation = (inputs["x_test"], inputs["y_test"]) if len(inputs["x_test"]) else None
        validation, validators = self.softmax_validation(model, validation)

        def data(start):
            if c.random_crops and c.input_pipeline != "pydataset":
                sampler = RandomCropSampler(cache, train_segments, c.crop_frames, c.batch_size, c.seed, self._masks())
                if c.input_pipeline == "processes":
                    return iter(ProcessBatches(sampler, c.steps - start, start, workers=c.input_workers))
                return tf_dataset(sampler, first_step=start, num_batches=c.steps - start)
            if c.random_crops:
                return batching.RandomCropBatches(cache, train_segments, c.crop_frames, c.batch_size,
                                                  c.steps - start, first_step=start, seed=c.seed, masks=self._masks(),
                                                  teacher=teacher)
            return batching.SoftmaxBatches(inputs["x_train"], inputs["y_train"], c.batch_size, c.steps - start,
                                           first_step=start, seed=c.seed, masks=self._masks())

        return self._fit(model, lambda start: self.feed(data(start)), validation, state, extra_callbacks=validators)

    def _held_out_crops(self, cache: FeatureSource, held_out: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Held-out crops (about one per crop length of held-out audio), their speaker indices and the target key
        (``speaker/utterance``) of each."""
        rng = np.random.default_rng([self.config.seed, 1])
        crops, labels, keys = [], [], []
        for index, speaker in enumerate(sorted(held_out)):
            for segment in held_out[speaker]:
                count = max(1, round((segment[2] - segment[1]) / self.config.crop_frames))
                for _ in range(count):
                    crops.append(batching.segment_crop(cache, speaker, segment, crop_frames=self.config.crop_frames,
                                                       rng=rng))
                    labels.append(index)
                    keys.append(target_key(speaker, segment[0]))
        fewest = self.config.fewest_speakers
        if len(set(labels)) < fewest:
            raise DeepSpeakerError(f"{cache.path}: fewer than {fewest} speakers have held-out audio for the "
                                   f"validation")
        keep = np.sort(rng.permutation(len(crops))[: self.config.max_validation])
        return np.stack(crops)[keep], np.asarray(labels)[keep], [keys[i] for i in keep]

    def _teacher(self, cache: FeatureSource) -> TeacherTargets:
        """The --teacher targets (written by the command line before training), checked against this run's cache."""
        path = self.config.teacher_targets
        if not path.is_file():
            raise DeepSpeakerError(f"{path}: no teacher targets; `deep-speaker train softmax --teacher "
                                   f"{self.config.teacher}` (or `deep-speaker run --teacher`) computes them first")
        teacher = read_targets(path, self.config.teacher)
        teacher.check_covers(cache, path)
        return teacher

    def _train_triplet(self) -> dict:
        c = self.config
        cache = self._cache()
        train_segments, held_out = batching.triplet_segments(cache, crop_frames=c.crop_frames, holdout=c.holdout,
                                                             seed=c.seed)
        x_val, y_val, _ = self._held_out_crops(cache, held_out)
        model = self.load_resumable()
        started_from = None
        if model is None:
            source_model, source = self._initial_embedding("softmax")
            model = build_rescnn(width=c.width, precision=c.precision)
            if source_model is not None:  # weights by layer name: the same builder, so the same order
                model.set_weights(source_model.get_weights())
            self.compile(model, self.triplet_loss(), None)
            started_from = str(source) if source else None
            if source:
                log.info("triplet training starts from %s", source)
        state = self.run_state(model, started_from=started_from, triplet_margin=c.triplet_margin,
                               **({"spec_augment": list(self._masks())} if c.spec_augment else {}))
        pool_seed, rows = self.triplet_part(optimizer_step(model))
        pool = batching.TripletPool(cache, train_segments, c.crop_frames, c.pool_speakers, 2, c.pool_rounds,
                                    seed=pool_seed, masks=self._masks())
        refresh = self.pool_refresh(pool)
        refresh.set_model(model)
        pool.fill(refresh.embed)

        def data(first):
            return batching.TripletBatches(pool, rows, c.steps - first, first_step=first, seed=c.seed,
                                           replicas=self.loss_shards)

        validation = self.triplet_validation(x_val, y_val)
        start = optimizer_step(model)
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
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        # A checkpoint at step 0 too: killed before the first save, the run resumes instead of being refused.
        save_checkpoint(model, self.checkpoint_dir, state, best=True)

    def _train_probe(self) -> dict:
        c = self.config
        inputs = self._inputs()
        source = c.init_model or best_checkpoint(c.output_dir, "triplet") or best_checkpoint(c.output_dir, "softmax")
        if source is None:
            raise DeepSpeakerError(f"{c.output_dir}: no triplet or softmax checkpoint to probe; train one first "
                                   "or give --init_model")
        embedder = _checked_width(to_embedding_model(load_model(source)), source, c.width)
        identity = model_identity(embedder)
        model = self.load_resumable()
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
            self.compile(model, SoftmaxCrossEntropy(), ["accuracy"])
        state = self.run_state(model, started_from=str(source), embedding_identity=identity)
        validation = (x_test, inputs["y_test"]) if len(x_test) else None

        def data(start):
            return batching.SoftmaxBatches(x_train, inputs["y_train"], min(c.batch_size, len(x_train)),
                                           c.steps - start, first_step=start, seed=c.seed)

        return self._fit(model, data, validation, state, identity_model=embedder)

