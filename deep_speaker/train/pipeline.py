"""The softmax phase's random-crop batches, fast: the same batches as :class:`~.batching.RandomCropBatches` for
the same seed and step, cut without reopening an array per crop, and fed by tf.data in parallel with prefetching.

A batch is a function of (seed, step) only, drawn in the order RandomCropBatches draws (labels, then per crop
its segment and its start), so training stays seeded and resumable exactly as before, whichever pipeline feeds
it. Today's batcher spends its time opening an utterance's array for every crop and in two ``rng.integers``
calls per crop; here each array is opened once (kept in a bounded table of the most recent ones), a crop is
one slice copy into the batch, and the per-crop draws are computed from one block of the generator's raw
stream (:func:`bounded_draws`, numpy's own algorithm, checked against it in the tests), from the frame counts
of the cache's index. The cache is read through its interface only (``entry``, ``load``), so the per-file
cache and the sharded store serve alike.

- :class:`RandomCropSampler`: ``batch(step)`` -> (crops [B, T, 64, 1] float32, labels [B] int64).
- :func:`tf_dataset`: a ``tf.data.Dataset`` of the batches of steps first..last, the sampler run by
  ``tf.numpy_function`` in parallel map calls (AUTOTUNE, deterministic order) and prefetched.
- :class:`SamplerBatches`: the same batches as a Keras ``PyDataset`` (any backend; ``workers`` and
  ``use_multiprocessing`` as Keras offers them, which send every batch back through a pipe).
- :class:`ProcessBatches`: the same batches cut by worker processes into shared memory they reuse (any backend;
  a host's cores are not held to one GIL, as tf.data's ``numpy_function`` calls are).

Training uses them with ``--input_pipeline tfdata`` or ``processes`` (TrainConfig.input_pipeline); the default
stays RandomCropBatches.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Callable, Iterator

import keras
import numpy as np
from threadpoolctl import threadpool_limits

from ..data.sources import open_features
from ..data.features import NUM_FILTERS
from ..data.inputs import Segment
from ..errors import DeepSpeakerError
from .batching import OPEN_ARRAYS, Masks, OpenArrays, masked


class RandomCropSampler:
    """Random-crop softmax batches as a function of the step (RandomCropBatches' draws, crops copied from arrays
    opened once)."""

    def __init__(self, cache: Any, segments: dict[str, list[Segment]], crop_frames: int, batch_size: int,
                 seed: int = 0, masks: Masks = None, open_arrays: int = OPEN_ARRAYS):
        if batch_size < 1 or crop_frames < 1:
            raise DeepSpeakerError(f"batch size and crop length must be positive, got {batch_size} and {crop_frames}")
        self.cache, self.crop_frames, self.batch_size = cache, crop_frames, batch_size
        self.seed, self.masks = seed, masks
        self.speakers = sorted(segments)
        if not self.speakers or not all(segments[s] for s in self.speakers):
            raise DeepSpeakerError("random crops need at least one training segment per speaker")
        # Per speaker: its segments as (utterance, lo, frames of cache[lo:hi]), the length a crop is cut from.
        self.segments = [[(utt, lo, max(0, min(hi, int(cache.entry(speaker, utt)["frames"])) - lo))
                          for utt, lo, hi in segments[speaker]] for speaker in self.speakers]
        self.arrays = OpenArrays(cache, open_arrays)  # tf.data calls batch() from several threads
        # What a worker process rebuilds this sampler from (ProcessBatches): plain values, no objects.
        self.spec = {"cache": str(cache.path), "segments": {s: [tuple(g) for g in segments[s]] for s in self.speakers},
                     "crop_frames": crop_frames, "batch_size": batch_size, "seed": seed, "masks": masks,
                     "open_arrays": open_arrays}

    def plan(self, step: int, fast: bool = True) -> tuple[np.ndarray, list[tuple[int, str, int, int]]]:
        """Labels [B] and per crop (label, utterance, first frame, frames copied) of a step, drawn as
        RandomCropBatches draws them (crop_or_pad's start only for a segment at least a crop long).

        ``fast``: the per-crop draws computed from the generator's raw 32-bit stream (:func:`bounded_draws`)
        instead of two ``rng.integers`` calls per crop (most of the batch's time); the same numbers.
        """
        rng = np.random.default_rng([self.seed, int(step)])
        labels = rng.integers(0, len(self.speakers), size=self.batch_size)
        if fast:
            drawn = bounded_draws(rng, 2 * self.batch_size + 8)
            if drawn is not None:
                try:
                    return labels, self._crops(labels, drawn)
                except IndexError:  # more rejections than values drawn (about never): the generator's own calls
                    rng = np.random.default_rng([self.seed, int(step)])
                    labels = rng.integers(0, len(self.speakers), size=self.batch_size)
        return labels, self._crops(labels, lambda bound: int(rng.integers(bound)))

    def _crops(self, labels: np.ndarray, draw: Callable[[int], int]) -> list[tuple[int, str, int, int]]:
        crops = []
        for label in labels.tolist():
            segments = self.segments[label]
            utt, lo, frames = segments[draw(len(segments))]
            if frames >= self.crop_frames:
                crops.append((label, utt, lo + draw(frames - self.crop_frames + 1), self.crop_frames))
            else:  # zero-padded at the end
                crops.append((label, utt, lo, frames))
        return crops

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.batch_size, self.crop_frames, NUM_FILTERS, 1

    def batch(self, step: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(crops [B, crop_frames, 64, 1] float32, labels [B] int64) of a step; the crops written into ``out`` (an
        array of that shape and dtype) when given."""
        labels, crops = self.plan(step)
        if out is None:
            out = np.empty(self.shape, np.float32)  # every row written below
        for row, (label, utt, start, length) in enumerate(crops):
            out[row, :length, :, 0] = self.arrays.load(self.speakers[label], utt)[start:start + length]
            out[row, length:] = 0.0  # the zero padding of a short segment
        rng = np.random.default_rng([self.seed, int(step), 1])  # SpecAugment's own generator, as RandomCropBatches
        crops_out = masked(out, rng, self.masks)
        if crops_out is not out:
            out[...] = crops_out
        return out, labels.astype(np.int64)


def bounded_draws(rng: np.random.Generator, count: int) -> Callable[[int], int] | None:
    """A function giving what successive ``rng.integers(bound)`` calls would give, from ``count`` raw 64-bit values
    drawn at once: numpy's Lemire draw on the generator's 32-bit stream (PCG64 hands out the low, then the high half
    of each 64-bit value, a half left over from earlier draws first), rejections included. None for another bit
    generator; IndexError once the values drawn run out. Leaves ``rng`` advanced past them."""
    state = rng.bit_generator.state
    if state.get("bit_generator") != "PCG64":
        return None
    raw = rng.bit_generator.random_raw(count)
    halves = np.empty(2 * count, np.uint64)
    halves[0::2], halves[1::2] = raw & np.uint64(0xFFFFFFFF), raw >> np.uint64(32)
    stream = ([int(state["uinteger"])] if state["has_uint32"] else []) + halves.tolist()
    position = 0

    def draw(bound: int) -> int:
        nonlocal position
        if bound == 1:  # numpy returns the only value without drawing
            return 0
        if not 1 < bound <= 0xFFFFFFFF:
            raise IndexError(bound)  # numpy's 64-bit path: let the generator do it
        m = stream[position] * bound
        position += 1
        leftover = m & 0xFFFFFFFF
        if leftover < bound:
            threshold = (0xFFFFFFFF - (bound - 1)) % bound
            while leftover < threshold:
                m = stream[position] * bound
                position += 1
                leftover = m & 0xFFFFFFFF
        return m >> 32

    return draw


def tf_dataset(sampler: RandomCropSampler, *, first_step: int, num_batches: int, prefetch: int | None = None) -> Any:
    """The batches of steps ``first_step`` .. ``first_step + num_batches - 1`` as a ``tf.data.Dataset``."""
    try:
        import tensorflow as tf
    except ImportError:
        raise DeepSpeakerError("the tfdata input pipeline needs TensorFlow; use --input_pipeline pydataset") from None
    autotune = tf.data.AUTOTUNE

    def cut(step):
        x, y = tf.numpy_function(sampler.batch, [step], (tf.float32, tf.int64), stateful=False)
        x.set_shape([sampler.batch_size, sampler.crop_frames, NUM_FILTERS, 1])
        y.set_shape([sampler.batch_size])
        return x, y

    steps = tf.data.Dataset.range(first_step, first_step + num_batches)
    # deterministic: batches leave in step order however many calls run at once.
    data = steps.map(cut, num_parallel_calls=autotune, deterministic=True)
    return data.prefetch(autotune if prefetch is None else prefetch)


class SamplerBatches(keras.utils.PyDataset):
    """The sampler's batches of steps first_step.. as a Keras PyDataset (every backend)."""

    def __init__(self, sampler: RandomCropSampler, num_batches: int, first_step: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.sampler, self.length, self.first_step = sampler, num_batches, first_step

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sampler.batch(self.first_step + index)


def _slot_bytes(shape: tuple[int, ...]) -> tuple[int, int]:
    """Bytes of a slot's float32 crops of ``shape`` and of its int64 labels (one per crop)."""
    return int(np.prod(shape)) * 4, shape[0] * 8


def _slot_views(memory: SharedMemory, shape: tuple[int, ...], slots: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (crops, labels) arrays of each slot of a worker's shared memory."""
    crop_bytes, label_bytes = _slot_bytes(shape)
    views = []
    for slot in range(slots):
        base = slot * (crop_bytes + label_bytes)
        views.append((np.ndarray(shape, np.float32, memory.buf, base),
                      np.ndarray(shape[:1], np.int64, memory.buf, base + crop_bytes)))
    return views


def _serve(spec: dict, memory_name: str, slots: int, tasks: Any, done: Any) -> None:
    """A ProcessBatches worker: cuts the batch of each (step, slot) task into that slot, then reports it done; ends
    when the task pipe is closed (by ``close``, or by the training process ending, even by SIGKILL)."""
    threadpool_limits(limits=1, user_api="blas")  # parallel by processes
    spec = dict(spec)
    sampler = RandomCropSampler(open_features(spec.pop("cache")), **spec)
    memory = SharedMemory(memory_name)
    views = _slot_views(memory, sampler.shape, slots)
    while True:
        try:
            task = tasks.recv()
        except EOFError:
            return
        step, slot = task
        try:
            views[slot][1][:] = sampler.batch(step, out=views[slot][0])[1]
        except Exception as error:  # noqa: BLE001 (any failure is reported by the parent, in one line)
            done.put((step, slot, f"{type(error).__name__}: {error}"))
            return
        done.put((step, slot, None))


class ProcessBatches:
    """The sampler's batches of steps ``first_step`` .. ``first_step + num_batches - 1``, in step order, cut by
    ``workers`` processes into shared-memory slots each reuses (``slots`` per worker), so a host's cores serve
    batches without sharing one GIL, and without a pipe or a new segment per batch; every Keras backend.

    Step k is cut by worker k mod W into its slot (k div W) mod S; the parent copies each batch out before that
    slot takes its next step, so a batch handed out is never written again. The workers rebuild the sampler from
    ``sampler.spec`` (the cache's path and plain values) in processes started by a fork server (no state of this
    process, TensorFlow's threads included, is inherited; a script using it needs the ``if __name__ ==
    "__main__"`` guard, as for any process started so). A worker that dies or fails stops the iteration with a
    one-line error; ``close`` (also at the end of the iteration) stops the workers and frees the memory; workers
    whose training process is killed end by themselves, and the memory is then freed by multiprocessing's
    resource tracker.
    """

    def __init__(self, sampler: RandomCropSampler, num_batches: int, first_step: int = 0,
                 workers: int | None = None, slots: int = 2, timeout: float = 300.0):
        if workers is None:
            workers = max(1, len(os.sched_getaffinity(0)) // 2 if hasattr(os, "sched_getaffinity")
                          else (os.cpu_count() or 2) // 2)
        if workers < 1 or slots < 1:
            raise DeepSpeakerError(f"need at least one worker and one slot, got {workers} and {slots}")
        self.sampler, self.length, self.first_step = sampler, num_batches, first_step
        self.workers, self.slots, self.timeout = workers, slots, timeout
        self._processes: list[Any] = []
        self._tasks: list[Any] = []  # per worker, the writing end of its task pipe
        self._memories: list[SharedMemory] = []
        self._views: list[list[tuple[np.ndarray, np.ndarray]]] = []  # per worker, per slot: (crops, labels)

    def __len__(self) -> int:
        return self.length

    def _start(self) -> list[Any]:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            context.set_forkserver_preload([__name__])  # imported once in the server, not in every worker
        shape = self.sampler.shape
        size = self.slots * sum(_slot_bytes(shape))
        done = []
        for _ in range(self.workers):
            memory = SharedMemory(create=True, size=size)
            self._memories.append(memory)
            self._views.append(_slot_views(memory, shape, self.slots))
            # A pipe, not a queue, for the tasks: only this process holds its writing end, so a worker reads EOF
            # once this process is gone, however it ended (the fork server outlives it while workers run).
            reader, writer = context.Pipe(duplex=False)
            self._tasks.append(writer)
            done.append(context.Queue())
            process = context.Process(target=_serve, args=(self.sampler.spec, memory.name, self.slots, reader,
                                                           done[-1]), daemon=True)
            process.start()
            reader.close()
            self._processes.append(process)
        return done

    def _wait(self, worker: int, done: Any, step: int, deadline: float) -> int:
        """The slot of ``step``, once ``worker`` reports it cut."""
        while True:
            try:
                got, slot, error = done.get(timeout=1.0)
                break
            except queue.Empty:
                process = self._processes[worker]
                if not process.is_alive():
                    raise DeepSpeakerError(f"input worker {worker} died (exit code {process.exitcode}) before "
                                           f"batch {step}; the run resumes from its last checkpoint") from None
                if time.monotonic() > deadline:
                    raise DeepSpeakerError(f"input worker {worker}: no batch {step} in {self.timeout:g} s") from None
        if error is not None:
            raise DeepSpeakerError(f"input worker {worker}, batch {step}: {error}")
        if got != step:  # each worker answers its tasks in order
            raise DeepSpeakerError(f"input worker {worker} sent batch {got}, expected {step}")
        return slot

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._processes:
            raise DeepSpeakerError("ProcessBatches is iterated once; make another for another pass")
        end, ahead = self.first_step + self.length, self.workers * self.slots
        try:
            done = self._start()
            tasks = self._tasks
            for k in range(min(ahead, self.length)):
                tasks[k % self.workers].send((self.first_step + k, (k // self.workers) % self.slots))
            for k in range(self.length):
                worker, step = k % self.workers, self.first_step + k
                slot = self._wait(worker, done[worker], step, time.monotonic() + self.timeout)
                crops, labels = (np.array(v) for v in self._views[worker][slot])  # copied: the slot is refilled next
                if step + ahead < end:
                    tasks[worker].send((step + ahead, slot))
                yield crops, labels
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers and free their shared memory (also done when an iteration ends or fails)."""
        for writer in self._tasks:
            writer.close()
        self._tasks = []
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(timeout=10)
        self._views = []  # the arrays over the shared memory go first, or it cannot be closed
        for memory in self._memories:
            memory.close()
            memory.unlink()
        self._memories = []
