"""Training across processes (machines): the JAX backend with a Keras distribution that spans them.

The phases' recipe is :class:`phases.Trainer`'s (heads, SpecAugment, random crops, input pipelines, resume
checks): :class:`WorkerTrainer` overrides its hooks only. What runs across workers is checked with the
configuration (config.MULTIWORKER): anything else is refused with one line before any worker starts.

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
EER is computed the same way, on worker 0's numbers for all (the learning-rate plateau must decide alike), and so
are the softmax phase's validation loss and accuracy (the held-out crops evaluated on a local copy).

    KERAS_BACKEND=jax deep-speaker train softmax --strategy multiworker --coordinator HOST:PORT --workers 2 \\
        --worker I --data-filename inputs.npz --output-dir runs --steps 1000
    KERAS_BACKEND=jax deep-speaker train triplet --strategy multiworker ... --cache-dir CACHE --output-dir runs
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..errors import DeepSpeakerError
from ..model.checkpoints import LAST, resume_state
from ..model.losses import ShardedTripletLoss
from ..model.rescnn import build_rescnn
from . import batching
from .callbacks import PoolRefresh, TripletValidation, optimizer_step
from .config import TrainConfig
from .phases import Trainer, Validation

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

    def rows(self, batch_size: int) -> slice:
        """This worker's contiguous share of a global batch: rows [w B/W, (w+1) B/W)."""
        if batch_size % self.workers:
            raise DeepSpeakerError(f"batch size {batch_size} is not a multiple of the {self.workers} workers")
        share = batch_size // self.workers
        return slice(self.worker * share, (self.worker + 1) * share)


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
    """This worker's contiguous share of each global batch of another PyDataset (Cluster.rows)."""

    def __init__(self, batches: keras.utils.PyDataset, cluster: Cluster, **kwargs):
        super().__init__(**kwargs)
        self.batches, self.cluster = batches, cluster

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.batches[index]
        rows = self.cluster.rows(len(x))
        return x[rows], y[rows]


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
    """A model built on this worker's own devices, given the training model's current weights before each use:
    Keras' predict under a distribution that spans processes cannot return outputs."""

    def __init__(self, build: Callable[[], keras.Model], batch_size: int):
        with this_worker_only():
            self.model = build()
        self.batch_size = batch_size

    def embed(self, trained: keras.Model, x: np.ndarray) -> np.ndarray:
        """Outputs for crops under trained's weights (replicated on every device, so each worker has them all)."""
        with this_worker_only():
            self.model.set_weights(trained.get_weights())
            return self.model.predict(x, batch_size=self.batch_size, verbose=0)

    def evaluate(self, trained: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """The compiled loss and metrics of crops and labels under trained's weights."""
        with this_worker_only():
            self.model.set_weights(trained.get_weights())
            return self.model.evaluate(x, y, batch_size=self.batch_size, verbose=0, return_dict=True)


def worker_zero_values(logs: dict, keys: tuple[str, ...]) -> None:
    """Replace the logs' values of keys by worker 0's on every worker: all must take the same learning-rate and
    best-checkpoint decisions, even where their float arithmetic differs."""
    from jax.experimental import multihost_utils

    present = [k for k in keys if k in logs]
    values = multihost_utils.broadcast_one_to_all(np.asarray([logs[k] for k in present], np.float64))
    logs.update(zip(present, map(float, np.asarray(values))))


class LocalPoolRefresh(PoolRefresh):
    """PoolRefresh embedding this worker's own pool with its local copy of the weights."""

    def __init__(self, pool: batching.TripletPool, every: int, local: LocalCopy):
        super().__init__(pool, every, local.batch_size)
        self.local = local

    def embed(self, x: np.ndarray) -> np.ndarray:
        return self.local.embed(self.model, x)


class SharedValidation(TripletValidation):
    """TripletValidation on the local copy, with worker 0's val_eer and val_loss given to every worker."""

    def __init__(self, x: np.ndarray, speakers: np.ndarray, seed: int, local: LocalCopy):
        super().__init__(x, speakers, local.batch_size, seed)
        self.local = local

    def embed(self, x: np.ndarray) -> np.ndarray:
        return self.local.embed(self.model, x)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if logs is not None:
            worker_zero_values(logs, ("val_eer", "val_loss"))


class SharedSoftmaxValidation(keras.callbacks.Callback):
    """The softmax phase's val_loss and val_accuracy as Keras' own validation computes them (the compiled loss and
    metrics of the held-out crops), on the local copy, with worker 0's values given to every worker."""

    def __init__(self, x: np.ndarray, y: np.ndarray, local: LocalCopy):
        super().__init__()
        self.x, self.y, self.local = x, y, local

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            results = self.local.evaluate(self.model, self.x, self.y)
            logs.update({f"val_{k}": float(v) for k, v in results.items()})
            worker_zero_values(logs, tuple(f"val_{k}" for k in sorted(results)))


class WorkerTrainer(Trainer):
    """This worker's part of the softmax or triplet phase: Trainer's recipe, through its hooks (see the module doc).

    The strategy joins the cluster; the resume state is agreed by all workers; the softmax phase feeds this
    worker's rows of every global batch and validates on a local copy; the triplet phase mines its own pool, fed
    as its own block of each batch under a loss averaged over the workers' blocks; workers other than 0 write their
    (collective) checkpoints into a scratch folder.
    """

    def __init__(self, config: TrainConfig, cluster: Cluster):
        self.cluster = cluster
        self.throughput = Throughput(config.batch_size)
        super().__init__(config)

    def make_strategy(self) -> keras.distribution.DataParallel:
        return connect(self.cluster)

    def resumable_state(self) -> dict | None:
        state = agreed_resume_state(self.run_dir)
        if state is not None and self.config.phase == "triplet" and state.get("workers") != self.cluster.workers:
            raise DeepSpeakerError(f"{self.run_dir}: a run of {state.get('workers')} workers is there (its loss "
                                   "averages their triplet blocks); resume it on as many, or use another --output_dir")
        return state

    def run_state(self, model: keras.Model, **extra) -> dict:
        return super().run_state(model, workers=self.cluster.workers, **extra)

    def triplet_loss(self) -> ShardedTripletLoss:
        return ShardedTripletLoss(self.cluster.workers, alpha=self.config.triplet_margin)

    def feed(self, batches: Any) -> Any:
        if isinstance(batches, keras.utils.PyDataset):
            return LocalRows(batches, self.cluster)
        return local_rows(batches, self.cluster)  # --input_pipeline processes: an iterator

    def triplet_part(self, start: int) -> tuple[list[int], int]:
        # A pool per worker (its own speakers and crops), new on each resume as in single-process training.
        seed, rows = super().triplet_part(start)
        return [*seed, self.cluster.worker], rows // self.cluster.workers

    @functools.cached_property
    def local_embedding(self) -> LocalCopy:
        """One local copy of the embedding model for the pool and the validation EER (built on first use: after
        the training model, whose initial weights the global seed decides)."""
        return LocalCopy(lambda: build_rescnn(width=self.config.width, precision=self.config.precision),
                         self.config.batch_size)

    def pool_refresh(self, pool: batching.TripletPool) -> PoolRefresh:
        return LocalPoolRefresh(pool, self.config.refresh_every, self.local_embedding)

    def triplet_validation(self, x: np.ndarray, speakers: np.ndarray) -> TripletValidation:
        return SharedValidation(x, speakers, self.config.seed, self.local_embedding)

    def softmax_validation(self, model: keras.Model, validation: Validation
                           ) -> tuple[Validation, list[keras.callbacks.Callback]]:
        if validation is None:
            return None, []
        local = LocalCopy(lambda: self.softmax_model(model.output_shape[-1]), self.config.batch_size)
        return None, [SharedSoftmaxValidation(*validation, local)]

    def callbacks(self) -> list[keras.callbacks.Callback]:
        return [self.throughput]

    def train(self) -> dict:
        """Trainer.train on this worker; also the step it resumed from and the global samples/s."""
        with contextlib.ExitStack() as stack:
            if self.cluster.worker != 0:
                # Saving is collective: the other workers write the same checkpoints into a scratch folder.
                self.checkpoint_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="deep-speaker-worker-")))
            stack.enter_context(peers_watched(self.cluster, self.run_dir,
                                              lambda: self.state.get("step", self.first_step)))
            result = super().train()
        return {**result, "step": optimizer_step(self.model), "resumed_from": self.first_step,
                "samples_per_s": self.throughput.samples_per_s()}


def local_rows(batches: Iterator[tuple[np.ndarray, np.ndarray]], cluster: Cluster
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """LocalRows of an iterator of global batches; closing it closes theirs (ProcessBatches' processes)."""
    try:
        for x, y in batches:
            yield x[cluster.rows(len(x))], y[cluster.rows(len(x))]
    finally:
        batches.close()


def train_worker(config: TrainConfig) -> dict:
    """This worker's part of a --strategy multiworker run of the softmax or triplet phase (config.coordinator,
    .workers, .worker); returns the last logs, the step, the step resumed from and the global samples/s."""
    cluster = Cluster(config.coordinator, config.workers, config.worker, config.worker_timeout)
    return WorkerTrainer(config, cluster).train()
