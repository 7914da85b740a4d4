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
  ``use_multiprocessing`` as Keras offers them).

Training uses it with ``--input_pipeline tfdata`` (TrainConfig.input_pipeline); the default stays RandomCropBatches.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np

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

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(crops [B, crop_frames, 64, 1] float32, labels [B] int64) of a step."""
        labels, crops = self.plan(step)
        out = np.empty((self.batch_size, self.crop_frames, NUM_FILTERS, 1), np.float32)  # every row written below
        for row, (label, utt, start, length) in enumerate(crops):
            out[row, :length, :, 0] = self.arrays.load(self.speakers[label], utt)[start:start + length]
            out[row, length:] = 0.0  # the zero padding of a short segment
        rng = np.random.default_rng([self.seed, int(step), 1])  # SpecAugment's own generator, as RandomCropBatches
        return masked(out, rng, self.masks), labels.astype(np.int64)


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


def tf_dataset(sampler: RandomCropSampler, first_step: int, num_batches: int, prefetch: int | None = None) -> Any:
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
