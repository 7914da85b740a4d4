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

Scope: the softmax phase (fixed inputs, or --random_crops). Not here yet: the triplet phase (per-worker pools)
and validation during training (Keras' predict cannot return outputs spanning processes).

    KERAS_BACKEND=jax python -m deep_speaker.train.multiworker --coordinator HOST:PORT --workers 2 --worker I \\
        --data_filename inputs.npz --output_dir runs --steps 1000
"""

from __future__ import annotations

import argparse
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
from ..model.rescnn import build_rescnn
from . import batching
from .callbacks import StopAtStep, optimizer_step, restore_seed_states, seed_states
from .config import TrainConfig

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
        print(f"multiworker: error: {message}", file=sys.stderr, flush=True)
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


def train_softmax(config: TrainConfig, cluster: Cluster) -> dict:
    """The softmax phase on all workers of a cluster (see the module doc); returns the last logs and the step."""
    if config.phase != "softmax":
        raise DeepSpeakerError(f"multi-worker training runs the softmax phase only, not {config.phase}")
    connect(cluster)
    import jax  # the JAX backend is there: connect checked it
    from jax.experimental import multihost_utils

    run_dir = config.run_dir
    if cluster.worker == 0:
        remove_stale_temporaries(run_dir)
    keras.utils.set_random_seed(config.seed)  # the same initial weights and dropout seeds on every worker
    if config.random_crops:
        from .phases import Trainer

        cache = Trainer(config)._cache()  # the phase's own checks of the cache (feature settings)
        segments, _ = batching.speaker_segments(cache, config.holdout, config.seed)
        speakers = sorted(segments)
    else:
        inputs = load_training_inputs(config.data, crop_frames=config.crop_frames)
        speakers = list(inputs["speakers"])
    state = resume_state(run_dir)
    # Building or loading the model is collective (each variable's value is checked across processes): a worker
    # that does not see worker 0's checkpoint must stop before, not start afresh against the others' loading.
    saved = int(state.get("step", 0)) if state is not None else 0
    starts = np.asarray(multihost_utils.process_allgather(np.int64(saved))).ravel()
    if (starts != saved).any():
        raise DeepSpeakerError(f"the workers would resume from different steps ({', '.join(map(str, starts))}): "
                               f"every worker must find worker 0's checkpoint at {run_dir / LAST} (a shared "
                               f"--output_dir, or a copy)")
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
    try:
        history = model.fit(LocalRows(batches, cluster), steps_per_epoch=config.save_every,
                            epochs=math.ceil(config.steps / config.save_every),
                            initial_epoch=start // config.save_every, shuffle=False, verbose=config.verbose,
                            callbacks=[StopAtStep(config.steps), WorkerZeroCheckpoint(run_dir, state, cluster.worker),
                                       throughput])
    except (jax.errors.JaxRuntimeError, ValueError) as exc:
        if not lost_peer(exc):
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WorkerLost(f"worker {cluster.worker} of {cluster.workers}: lost the other workers during training "
                         f"({reason}); the last checkpoint in {run_dir} is step {state.get('step', start)}: run the "
                         f"same command on every worker to resume from it") from None
    return {**{k: float(v[-1]) for k, v in history.history.items()}, "step": optimizer_step(model),
            "resumed_from": start, "samples_per_s": throughput.samples_per_s()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", required=True, metavar="HOST:PORT", help="worker 0's address")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--worker", type=int, required=True, help="this worker's index, 0 .. workers-1")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all workers")
    parser.add_argument("--data_filename", type=Path)
    parser.add_argument("--cache_dir", type=Path)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--random_crops", action="store_true")
    for name, kind, default in (("steps", int, 1000), ("batch_size", int, 96), ("save_every", int, 100),
                                ("width", float, 1.0), ("crop_frames", int, 160), ("seed", int, 0),
                                ("learning_rate", float, None)):
        parser.add_argument(f"--{name}", type=kind, default=default)
    parser.add_argument("--precision", default="float32")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cluster = Cluster(args.coordinator, args.workers, args.worker, args.timeout)
        config = TrainConfig("softmax", args.output_dir, data=args.data_filename, cache_dir=args.cache_dir,
                             steps=args.steps, batch_size=args.batch_size, save_every=args.save_every,
                             width=args.width, crop_frames=args.crop_frames, seed=args.seed,
                             learning_rate=args.learning_rate, precision=args.precision,
                             random_crops=args.random_crops, verbose=0)
        logs = train_softmax(config, cluster)
    except DeepSpeakerError as exc:
        print(f"multiworker: error: {exc}", file=sys.stderr, flush=True)
        # Not sys.exit: JAX's shutdown waits for the lost workers (then aborts with a stack dump), and a
        # half-initialised JAX runtime can hang the interpreter's exit.
        os._exit(1 if isinstance(exc, WorkerLost) else 2)
    rate = logs.get("samples_per_s")
    print(f"worker {cluster.worker}: step {logs['step']} (from step {logs['resumed_from']}), "
          f"loss {logs.get('loss', float('nan')):.4f}" + (f", {rate:.1f} samples/s" if rate else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
