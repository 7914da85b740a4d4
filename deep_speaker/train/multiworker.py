"""Training across processes (machines): the JAX backend with a Keras distribution that spans them.

Every worker runs the same command with its own index. ``jax.distributed.initialize`` joins them through
worker 0's coordinator (host:port), and ``keras.distribution.DataParallel`` over all devices of all workers
shards each global batch. Every worker cuts the same global batch (a seeded function of the step, as
single-process training does) and feeds only its own rows (:class:`LocalRows`); XLA computes the loss, the
batch-norm statistics and the gradients over the whole global batch with cross-process all-reduces, so N steps
on W workers equal N steps of one process on the same global batches (up to float rounding).
Only worker 0 writes checkpoints (save_checkpoint: atomic); a resumed run loads last.keras on every worker.
A worker that loses the others mid-run stops with one line (exit 1) naming the step to resume from; one that
cannot reach them within --timeout stops with one line (exit 2).

The triplet phase: each worker mines hard negatives from its own pool (TripletPool seeded by the worker's index),
embedded with a copy of the current weights on the worker's own devices (:class:`LocalCopy`: Keras' predict under
a distribution that spans processes cannot return outputs), and feeds its own [anchors; positives; negatives]
block of each global batch; the loss is the mean over all workers' triplets (ShardedTripletLoss). The validation
EER is computed the same way, on worker 0's numbers for all (the learning-rate plateau must decide alike).
Not here yet: validation during the softmax phase.

    KERAS_BACKEND=jax deep-speaker train softmax --strategy multiworker --coordinator HOST:PORT --workers 2 \\
        --worker I --data-filename inputs.npz --output-dir runs --steps 1000
    KERAS_BACKEND=jax deep-speaker train triplet --strategy multiworker ... --cache-dir CACHE --output-dir runs
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from ..data.inputs import load_training_inputs
from ..errors import DeepSpeakerError
from ..model.checkpoints import LAST, remove_stale_temporaries, resume_state, save_checkpoint
from ..model.losses import ShardedTripletLoss
from ..model.rescnn import build_rescnn
from . import batching
from .callbacks import PoolRefresh, StopAtStep, TripletValidation, optimizer_step, restore_seed_states, seed_states
from .config import TrainConfig
from .phases import Trainer

log = logging.getLogger(__name__)


class WorkerLost(DeepSpeakerError):
    """Another worker stopped answering during training (killed, or its machine went down)."""


# What a collective whose peer is gone raises (JaxRuntimeError, or ValueError from a device_put that checks its
# value across processes), by transport: Gloo over TCP on CPUs, NCCL on GPUs, or the coordination service.
LOST_PEER = ("Gloo", "NCCL", "Connection reset", "Connection refused", "heartbeat", "UNAVAILABLE")


def lost_peer(exc: BaseException) -> bool:
    """Whether a training error says that another worker went away (rather than, e.g., out of memory)."""
    return any(word in str(exc) for word in LOST_PEER)


@dataclass(frozen=True)
class Cluster:
    """The workers of a run: the coordinator's host:port (worker 0 listens there), how many, and which this is."""

    coordinator: str
    workers: int
    worker: int
    timeout: float = 120.0  # seconds to wait for all workers to join before giving up

    def __post_init__(self) -> None:
        host, _, port = self.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise DeepSpeakerError(f"coordinator {self.coordinator!r}: expected HOST:PORT")
        if not 0 <= self.worker < self.workers or not self.timeout > 0:
            raise DeepSpeakerError(f"worker {self.worker} of {self.workers} (timeout {self.timeout:g} s): need "
                                   "0 <= worker < workers and a positive timeout")


def connect(cluster: Cluster) -> keras.distribution.DataParallel:
    """Join the other workers (jax.distributed.initialize) and make data parallelism over all their devices the
    current Keras distribution. If they are not all there within cluster.timeout, the process ends (exit 2)
    with one line on stderr."""
    if keras.backend.backend() != "jax":
        raise DeepSpeakerError(f"multi-worker training needs KERAS_BACKEND=jax (it is {keras.backend.backend()})")
    import jax

    message = (f"worker {cluster.worker} of {cluster.workers}: the workers did not all join at "
               f"{cluster.coordinator} within {cluster.timeout:g} s")

    def give_up() -> None:
        # JAX's own timeout aborts the process from C++ (SIGABRT, a stack dump), which no Python code can catch:
        # this watchdog ends the worker first, with one line.
        print(f"deep-speaker: error: {message}", file=sys.stderr, flush=True)
        os._exit(2)

    watchdog = threading.Timer(cluster.timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        # The coordinator listens on the address the workers were given (127.0.0.1 stays loopback), not on all
        # interfaces; a worker silent for the timeout (killed) ends the others through JAX's heartbeat.
        jax.distributed.initialize(cluster.coordinator, num_processes=cluster.workers, process_id=cluster.worker,
                                   initialization_timeout=math.ceil(cluster.timeout) + 60,
                                   heartbeat_timeout_seconds=math.ceil(cluster.timeout),
                                   coordinator_bind_address=cluster.coordinator)
    except Exception as exc:  # e.g. a coordinator port already in use
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DeepSpeakerError(f"{message} ({reason})") from None
    finally:
        watchdog.cancel()
    # Batches arrive already split by worker (LocalRows): Keras must not shard them again.
    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices(),
                                                   auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)
    return distribution


class LocalRows(keras.utils.PyDataset):
    """This worker's contiguous share of each global batch of another PyDataset: rows [w B/W, (w+1) B/W)."""

    def __init__(self, batches: keras.utils.PyDataset, cluster: Cluster, **kwargs):
        super().__init__(**kwargs)
        self.batches, self.cluster = batches, cluster

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.batches[index]
        if len(x) % self.cluster.workers:
            raise DeepSpeakerError(f"batch size {len(x)} is not a multiple of the {self.cluster.workers} workers")
        share = len(x) // self.cluster.workers
        rows = slice(self.cluster.worker * share, (self.cluster.worker + 1) * share)
        return x[rows], y[rows]


class WorkerZeroCheckpoint(keras.callbacks.Callback):
    """At the end of each epoch (save_every steps), worker 0 writes last.keras and state.json atomically.

    Keras' save under a cross-process distribution is itself collective (its device_put checks that every
    process holds the same value), so every worker saves at the same step: the others into a scratch folder.
    """

    def __init__(self, run_dir: Path, state: dict, worker: int):
        super().__init__()
        self.run_dir, self.state, self.worker = run_dir, state, worker

    def on_epoch_end(self, epoch, logs=None):
        step = optimizer_step(self.model)
        self.state.update(step=step, epoch=epoch + 1, seed_states=seed_states(self.model),
                          last_logs={k: float(v) for k, v in (logs or {}).items()})
        if self.worker == 0:
            save_checkpoint(self.model, self.run_dir, self.state)
        else:
            with tempfile.TemporaryDirectory(prefix="deep-speaker-worker-") as scratch:
                save_checkpoint(self.model, scratch, self.state)


class Throughput(keras.callbacks.Callback):
    """Global samples per second over the steps after the first one (which compiles), by this worker's clock."""

    def __init__(self, global_batch: int):
        super().__init__()
        self.global_batch, self.times = global_batch, []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())  # Keras has waited for the step's logs (the loss) by now

    def samples_per_s(self) -> float | None:
        if len(self.times) < 3:
            return None
        return self.global_batch * (len(self.times) - 1) / (self.times[-1] - self.times[0])


def agreed_resume_state(run_dir: Path) -> dict | None:
    """The run's saved state (None when fresh), after checking every worker would resume from the same step."""
    from jax.experimental import multihost_utils

    state = resume_state(run_dir)
    # Building or loading the model is collective (each variable's value is checked across processes): a worker
    # that does not see worker 0's checkpoint must stop before, not start afresh against the others' loading.
    saved = int(state.get("step", 0)) if state is not None else 0
    starts = np.asarray(multihost_utils.process_allgather(np.int64(saved))).ravel()
    if (starts != saved).any():
        raise DeepSpeakerError(f"the workers would resume from different steps ({', '.join(map(str, starts))}): "
                               f"every worker must find worker 0's checkpoint at {run_dir / LAST} (a shared "
                               f"--output_dir, or a copy)")
    return state


@contextlib.contextmanager
def peers_watched(cluster: Cluster, run_dir: Path, saved_step):
    """Turn the error of a collective whose peer went away into WorkerLost, naming the step to resume from."""
    import jax

    try:
        yield
    except (jax.errors.JaxRuntimeError, ValueError) as exc:
        if not lost_peer(exc):
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WorkerLost(f"worker {cluster.worker} of {cluster.workers}: lost the other workers during training "
                         f"({reason}); the last checkpoint in {run_dir} is step {saved_step()}: run the "
                         f"same command on every worker to resume from it") from None


@contextlib.contextmanager
def this_worker_only():
    """No Keras distribution inside: models built and run here live on this worker's own devices."""
    saved = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(saved)


class LocalCopy:
    """An embedding model on this worker's own devices, given the training model's current weights before each
    use: Keras' predict under a distribution that spans processes cannot return outputs."""

    def __init__(self, width: float, precision: str, batch_size: int):
        with this_worker_only():
            self.model = build_rescnn(width, precision=precision)
        self.batch_size = batch_size

    def embed(self, trained: keras.Model, x: np.ndarray) -> np.ndarray:
        """Embeddings of crops under trained's weights (replicated on every device, so each worker has them all)."""
        with this_worker_only():
            self.model.set_weights(trained.get_weights())
            return self.model.predict(x, batch_size=self.batch_size, verbose=0)


class LocalPoolRefresh(PoolRefresh):
    """PoolRefresh embedding this worker's own pool with its local copy of the weights."""

    def __init__(self, pool: batching.TripletPool, every: int, local: LocalCopy):
        super().__init__(pool, every, local.batch_size)
        self.local = local

    def embed(self, x: np.ndarray) -> np.ndarray:
        return self.local.embed(self.model, x)


class SharedValidation(TripletValidation):
    """TripletValidation on the local copy, with worker 0's val_eer and val_loss given to every worker: all must
    take the same learning-rate and best-checkpoint decisions, even where their float arithmetic differs."""

    def __init__(self, x: np.ndarray, speakers: np.ndarray, seed: int, local: LocalCopy):
        super().__init__(x, speakers, local.batch_size, seed)
        self.local = local

    def embed(self, x: np.ndarray) -> np.ndarray:
        return self.local.embed(self.model, x)

    def on_epoch_end(self, epoch, logs=None):
        from jax.experimental import multihost_utils

        super().on_epoch_end(epoch, logs)
        if logs is not None:
            keys = [k for k in ("val_eer", "val_loss") if k in logs]
            values = multihost_utils.broadcast_one_to_all(np.asarray([logs[k] for k in keys], np.float64))
            logs.update(zip(keys, map(float, np.asarray(values))))


def train_softmax(config: TrainConfig, cluster: Cluster) -> dict:
    """The softmax phase on all workers of a cluster (see the module doc); returns the last logs and the step."""
    connect(cluster)
    run_dir = config.run_dir
    if cluster.worker == 0:
        remove_stale_temporaries(run_dir)
    keras.utils.set_random_seed(config.seed)  # the same initial weights and dropout seeds on every worker
    if config.random_crops:
        cache = Trainer(config)._cache()  # the phase's own checks of the cache (feature settings)
        segments, _ = batching.speaker_segments(cache, config.holdout, config.seed)
        speakers = sorted(segments)
    else:
        inputs = load_training_inputs(config.data, crop_frames=config.crop_frames)
        speakers = list(inputs["speakers"])
    state = agreed_resume_state(run_dir)
    if state is not None:
        model = keras.saving.load_model(run_dir / LAST, safe_mode=True)
        restore_seed_states(model, state.get("seed_states", {}))
    else:
        model = build_rescnn(config.width, num_speakers=len(speakers), precision=config.precision)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        state = {}
    state.update(phase="softmax", seed=config.seed, width=config.width, precision=config.precision,
                 crop_frames=config.crop_frames, batch_size=config.batch_size, save_every=config.save_every,
                 steps=config.steps, speakers=speakers, workers=cluster.workers, random_crops=config.random_crops)
    start = optimizer_step(model)
    if start >= config.steps:
        return {**state.get("last_logs", {}), "step": start, "resumed_from": start}
    remaining = config.steps - start
    if config.random_crops:
        batches = batching.RandomCropBatches(cache, segments, config.crop_frames, config.batch_size, remaining,
                                             first_step=start, seed=config.seed)
    else:
        batches = batching.SoftmaxBatches(inputs["x_train"], inputs["y_train"], config.batch_size, remaining,
                                          first_step=start, seed=config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    throughput = Throughput(config.batch_size)
    with peers_watched(cluster, run_dir, lambda: state.get("step", start)):
        history = model.fit(LocalRows(batches, cluster), steps_per_epoch=config.save_every,
                            epochs=math.ceil(config.steps / config.save_every),
                            initial_epoch=start // config.save_every, shuffle=False, verbose=config.verbose,
                            callbacks=[StopAtStep(config.steps), WorkerZeroCheckpoint(run_dir, state, cluster.worker),
                                       throughput])
    return {**{k: float(v[-1]) for k, v in history.history.items()}, "step": optimizer_step(model),
            "resumed_from": start, "samples_per_s": throughput.samples_per_s()}


def train_triplet(config: TrainConfig, cluster: Cluster) -> dict:
    """The triplet phase on all workers of a cluster (see the module doc); returns the last logs and the step."""
    c = config
    share = c.batch_size // cluster.workers
    if c.batch_size % cluster.workers or share % 3:
        raise DeepSpeakerError(f"triplet batch size {c.batch_size}: each of the {cluster.workers} workers needs a "
                               "multiple of 3 rows (anchors, positives, negatives)")
    connect(cluster)
    if cluster.worker == 0:
        remove_stale_temporaries(c.run_dir)
    keras.utils.set_random_seed(c.seed)
    reader = Trainer(c)  # the single-process phase's own data, checks and resume, on the shared run folder
    cache = reader._cache()
    train_segments, held_out = batching.triplet_segments(cache, c.crop_frames, c.holdout, c.seed)
    x_val, y_val = reader._held_out_crops(cache, held_out)
    agreed_resume_state(c.run_dir)
    model = reader._load_resumable()
    started_from = None
    if model is not None and reader.resume_state.get("workers") != cluster.workers:
        raise DeepSpeakerError(f"{c.run_dir}: a run of {reader.resume_state.get('workers')} workers is there "
                               f"(its loss averages their triplet blocks); resume it on as many, or use another "
                               "--output_dir")
    if model is None:
        source_model, source = reader._initial_embedding("softmax")
        model = build_rescnn(c.width, precision=c.precision)
        if source_model is not None:
            model.set_weights(source_model.get_weights())
        reader._compile(model, ShardedTripletLoss(cluster.workers), None)
        started_from = str(source) if source else None
    state = reader._state(model, started_from=started_from, workers=cluster.workers,
                          **({"spec_augment": list(reader._masks())} if c.spec_augment else {}))
    start = optimizer_step(model)
    # A pool per worker (its own speakers and crops), new on each resume as in single-process training.
    pool = batching.TripletPool(cache, train_segments, c.crop_frames, c.pool_speakers, 2, c.pool_rounds,
                                seed=[c.seed, start, cluster.worker], masks=reader._masks())
    local = LocalCopy(c.width, c.precision, c.batch_size)
    refresh = LocalPoolRefresh(pool, c.refresh_every, local)
    refresh.set_model(model)
    pool.fill(refresh.embed)
    validation = SharedValidation(x_val, y_val, c.seed, local)
    throughput = Throughput(c.batch_size)
    with tempfile.TemporaryDirectory(prefix="deep-speaker-worker-") as scratch:
        # Saving is collective: workers other than 0 write the same checkpoints into a scratch folder.
        writer = Trainer(c if cluster.worker == 0 else dataclasses.replace(c, output_dir=Path(scratch)))
        writer.resume_state = reader.resume_state
        with peers_watched(cluster, c.run_dir, lambda: state.get("step", start)):
            if start == 0:
                writer._starting_point_as_best(model, validation, state)
            logs = writer._fit(model, lambda first: batching.TripletBatches(pool, share, c.steps - first,
                                                                            first_step=first, seed=c.seed),
                               None, state, extra_callbacks=(refresh, validation, throughput))
    return {**logs, "step": optimizer_step(model), "resumed_from": start, "samples_per_s": throughput.samples_per_s()}


def train_worker(config: TrainConfig) -> dict:
    """This worker's part of a --strategy multiworker run of the softmax or triplet phase (config.coordinator,
    .workers, .worker); returns the last logs, the step, the step resumed from and the global samples/s."""
    cluster = Cluster(config.coordinator, config.workers, config.worker, config.worker_timeout)
    single = dataclasses.replace(config, strategy="none")  # what Trainer's checks and helpers see
    phases = {"softmax": train_softmax, "triplet": train_triplet}
    if config.phase not in phases:
        raise DeepSpeakerError(f"multi-worker training runs the softmax and triplet phases, not {config.phase}: "
                               "train the probe on one machine")
    return phases[config.phase](single, cluster)
