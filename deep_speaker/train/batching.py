"""Training batches: softmax batches (fixed inputs shuffled, or fresh random crops), and hard triplet batches.

Triplet selection follows the original (LazyTripletBatcher): a pool ("history") holds random 160-frame crops
of a few rounds of speakers (2 crops each) with their embeddings under the model of the time they were added;
every K steps a new round replaces the oldest. Each batch takes anchors from the pool and, for each, the
least similar same-speaker crop (positive) and the most similar other-speaker crop (negative).
A speaker with a single utterance gets its two crops from that one utterance (two random, possibly
overlapping, windows): the positive is then another part of the same recording.

Augmented caches (``cache build --augment``): a copy of an utterance trains on the part of it that its source
trains on (scaled to its length when speed-perturbed) and is never held out, so validation stays on the
original held-out audio. With ``masks`` the batchers apply SpecAugment (deep_speaker.data.augment.spec_augment)
to every crop, from a generator of their own seeded by the step, so the crops are those of an unmasked run.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Any, Callable

import keras
import numpy as np

from ..data.augment import spec_augment
from ..data.inputs import Segment, split_speaker
from ..data.targets import TeacherTargets, target_key
from ..errors import DeepSpeakerError
from ..metrics import normalize_rows

EmbedFn = Callable[[np.ndarray], np.ndarray]
Masks = tuple[int, int] | None  # SpecAugment's (max_frames, max_bins), None for none
OPEN_ARRAYS = 4096  # arrays kept open: memory maps cost address space, not memory; a store's shards share theirs


class OpenArrays:
    """A cache's arrays opened once and kept (the ``limit`` most recently used): ``load`` as the cache's, without
    reopening an array for every crop. Safe from several threads (tf.data and PyDataset workers)."""

    def __init__(self, cache: Any, limit: int = OPEN_ARRAYS):
        self.cache, self.limit = cache, limit
        self._open: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    def load(self, speaker: str, utterance: str) -> np.ndarray:
        key = (speaker, utterance)
        with self._lock:
            array = self._open.get(key)
            if array is not None:
                self._open.move_to_end(key)
                return array
        # A plain view of the mapped memory: slicing a np.memmap builds a memmap object per crop, twice the copy's cost.
        array = np.asarray(self.cache.load(speaker, utterance))
        with self._lock:
            self._open[key] = array
            while len(self._open) > self.limit:
                self._open.popitem(last=False)
        return array


def masked(crops: np.ndarray, rng: np.random.Generator, masks: Masks) -> np.ndarray:
    """The crops [N, T, 64, 1], each with SpecAugment's 2 time and 2 frequency masks when masks is given."""
    if masks is None:
        return crops
    max_frames, max_bins = masks
    return np.stack([spec_augment(c, rng, masks=2, max_frames=max_frames, max_bins=max_bins) for c in crops])


def crop_or_pad(features: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random `length`-frame window of [T, 64] features (zero-padded at the end when shorter), as [length, 64, 1]."""
    frames = features.shape[0]
    if frames >= length:
        start = int(rng.integers(0, frames - length + 1))
        crop = np.asarray(features[start : start + length], dtype=np.float32)
    else:
        crop = np.zeros((length, features.shape[1]), dtype=np.float32)
        crop[:frames] = features
    return crop[:, :, None]


def hardest_negatives(
    anchor_emb: np.ndarray, candidate_emb: np.ndarray, *, candidate_speakers: np.ndarray, anchor_speakers: np.ndarray
) -> np.ndarray:
    """For each anchor, the index of the most cosine-similar candidate of another speaker."""
    similarity = normalize_rows(anchor_emb) @ normalize_rows(candidate_emb).T
    same = np.asarray(anchor_speakers)[:, None] == np.asarray(candidate_speakers)[None, :]
    if same.all(axis=1).any():
        raise DeepSpeakerError("triplet pool holds a single speaker: no negative possible")
    return np.where(same, -np.inf, similarity).argmax(axis=1)


def hardest_positives(
    anchor_emb: np.ndarray,
    candidate_emb: np.ndarray,
    *, candidate_speakers: np.ndarray,
    anchor_speakers: np.ndarray,
    anchor_indices: np.ndarray,
) -> np.ndarray:
    """For each anchor (pool index anchor_indices[i]), the index of the least similar other crop of its speaker."""
    similarity = normalize_rows(anchor_emb) @ normalize_rows(candidate_emb).T
    valid = np.asarray(anchor_speakers)[:, None] == np.asarray(candidate_speakers)[None, :]
    valid[np.arange(len(anchor_indices)), anchor_indices] = False  # the anchor is not its own positive
    if not valid.any(axis=1).all():
        raise DeepSpeakerError("a speaker has a single crop in the triplet pool: no positive possible")
    return np.where(valid, similarity, np.inf).argmin(axis=1)


def select_triplets(
    embeddings: np.ndarray, speakers: np.ndarray, *, num_triplets: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor, positive, negative) pool indices: random anchors, hardest positive and negative for each."""
    anchors = rng.choice(len(speakers), size=num_triplets, replace=num_triplets > len(speakers))
    positives = hardest_positives(embeddings[anchors], embeddings, candidate_speakers=speakers,
                                  anchor_speakers=speakers[anchors], anchor_indices=anchors)
    negatives = hardest_negatives(embeddings[anchors], embeddings, candidate_speakers=speakers,
                                  anchor_speakers=speakers[anchors])
    return anchors, positives, negatives


def arrange_for_replicas(anchors: np.ndarray, positives: np.ndarray, negatives: np.ndarray,
                         *, replicas: int) -> np.ndarray:
    """Concatenate triplet parts so each of `replicas` contiguous shards is itself [anchors; positives; negatives]."""
    # tf.distribute splits a global batch into contiguous shards; triplet_loss reads each shard as thirds.
    parts = zip(*(np.array_split(p, replicas) for p in (anchors, positives, negatives)))
    return np.concatenate([np.concatenate(shard) for shard in parts])


def speaker_segments(cache, holdout: float = 0.2, seed: int = 0, fewest: int = 2
                     ) -> tuple[dict[str, list[Segment]], dict[str, list[Segment]]]:
    """Per speaker of a cache (at least ``fewest``), train and held-out segments as split_speaker cuts them."""
    speakers = cache.speakers
    if len(speakers) < fewest:
        raise DeepSpeakerError(f"{cache.path}: training needs at least {fewest} speakers, the cache has "
                               f"{len(speakers)}")
    rng = np.random.default_rng(seed)
    train, test, copies = {}, {}, []
    for speaker in speakers:
        frames = {}
        for _, utt in cache.utterances(speaker):
            entry = cache.entry(speaker, utt)
            if "augment" in entry:
                copies.append((speaker, utt, entry))
            else:
                frames[utt] = entry["frames"]
        # A speaker of copies only (speed-perturbed) draws nothing: the originals split as without copies.
        train[speaker], test[speaker] = split_speaker(frames, holdout, rng) if frames else ([], [])
    for speaker, utt, entry in copies:
        source_speaker, source = entry["augment"]["speaker"], entry["augment"]["utterance"]
        if source_speaker not in train:
            raise DeepSpeakerError(f"{cache.path}: {speaker}/{utt} is a copy of {source_speaker}/{source}, "
                                   f"which the cache lacks; rebuild it")
        ratio = entry["frames"] / cache.entry(source_speaker, source)["frames"]
        train[speaker] += [(utt, round(lo * ratio), min(entry["frames"], round(hi * ratio)))
                           for u, lo, hi in train[source_speaker] if u == source]
    for speaker in [s for s in train if not train[s]]:  # copies only of held-out utterances
        del train[speaker], test[speaker]
    return train, test


def triplet_segments(cache, *, crop_frames: int = 160, holdout: float = 0.2, seed: int = 0
                     ) -> tuple[dict[str, list[Segment]], dict[str, list[Segment]]]:
    """speaker_segments, checking each speaker can give an anchor and a distinct positive crop."""
    train, test = speaker_segments(cache, holdout, seed)
    for speaker in train:
        if len(train[speaker]) == 1 and train[speaker][0][2] - train[speaker][0][1] <= crop_frames:
            raise DeepSpeakerError(
                f"{cache.path}: speaker {speaker} has a single training utterance of at most {crop_frames} frames: "
                "no positive crop possible (add utterances of this speaker or remove it)")
    return train, test


def segment_crop(cache, speaker: str, segment: Segment, *, crop_frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop [crop_frames, 64, 1] of one segment of a speaker's cached utterance."""
    utterance, lo, hi = segment
    return crop_or_pad(cache.load(speaker, utterance)[lo:hi], crop_frames, rng)


class TripletPool:
    """Recent crops with their embeddings (the original's history): rounds of speakers x crops, oldest dropped first."""

    def __init__(
        self,
        cache,
        by_speaker: dict[str, list[Segment]],
        crop_frames: int = 160,
        speakers_per_round: int = 640,
        crops_per_speaker: int = 2,
        rounds: int = 4,
        seed: int | list[int] = 0,
        masks: Masks = None,
    ):
        if crops_per_speaker < 2:
            raise DeepSpeakerError("crops_per_speaker must be at least 2 (anchor and positive)")
        self.arrays = OpenArrays(cache)  # a refresh crops a few hundred arrays: each opened once, not per crop
        self.by_speaker = by_speaker
        self.speaker_names = sorted(by_speaker)
        self.crop_frames = crop_frames
        self.speakers_per_round = min(speakers_per_round, len(by_speaker))
        self.crops_per_speaker = crops_per_speaker
        self.rng = np.random.default_rng(seed)
        self.masks = masks
        self._rounds: deque = deque(maxlen=rounds)
        # (inputs, embeddings, speaker indices), replaced as one object: batches are cut in a data thread.
        self.snapshot: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _round_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        chosen = self.rng.choice(len(self.speaker_names), size=self.speakers_per_round, replace=False)
        crops, labels = [], []
        for index in chosen:
            speaker = self.speaker_names[index]
            segments = self.by_speaker[speaker]
            # Distinct utterances when the speaker has enough, else several windows of the same ones.
            picks = self.rng.choice(len(segments), size=self.crops_per_speaker,
                                    replace=len(segments) < self.crops_per_speaker)
            for pick in picks:
                crops.append(segment_crop(self.arrays, speaker, segments[pick], crop_frames=self.crop_frames,
                                          rng=self.rng))
                labels.append(index)
        return masked(np.stack(crops), self.rng, self.masks), np.asarray(labels, np.int64)

    def add_round(self, embed: EmbedFn) -> None:
        """Crop a new round of speakers, embed it with the current model, and drop the oldest round when full."""
        inputs, labels = self._round_inputs()
        self._rounds.append((inputs, np.asarray(embed(inputs), np.float32), labels))
        # One array each, rebuilt per refresh (every K steps), so batch selection is a pure array lookup.
        self.snapshot = tuple(np.concatenate([r[i] for r in self._rounds]) for i in range(3))

    def fill(self, embed: EmbedFn) -> None:
        """Fill every round (at the start of training)."""
        for _ in range(self._rounds.maxlen):
            self.add_round(embed)


class TripletBatches(keras.utils.PyDataset):
    """Batches [anchors; positives; negatives] (per replica shard) of hard triplets from a TripletPool; y is unused."""

    def __init__(self, pool: TripletPool, batch_size: int, num_batches: int, first_step: int = 0, seed: int = 0,
                 replicas: int = 1, **kwargs):
        super().__init__(**kwargs)
        if batch_size % (3 * replicas):
            raise DeepSpeakerError(f"triplet batch size {batch_size} must be a multiple of 3 x {replicas} replica(s)")
        self.pool, self.batch_size, self.length = pool, batch_size, num_batches
        self.first_step, self.seed, self.replicas = first_step, seed, replicas

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        # Seeded by the global step, so a resumed run draws the same anchors as an uninterrupted one would.
        rng = np.random.default_rng([self.seed, self.first_step + index])
        inputs, embeddings, speakers = self.pool.snapshot
        a, p, n = select_triplets(embeddings, speakers, num_triplets=self.batch_size // 3, rng=rng)
        order = arrange_for_replicas(a, p, n, replicas=self.replicas)
        return inputs[order], np.zeros((len(order), 1), np.float32)


class RandomCropBatches(keras.utils.PyDataset):
    """Softmax batches of fresh random crops of the cache's training segments (labels: sorted speaker index); with
    ``teacher``, the inputs are (crops, the teacher's embedding of each crop's utterance)."""

    def __init__(self, cache, segments: dict[str, list[Segment]], crop_frames: int, batch_size: int,
                 num_batches: int, first_step: int = 0, seed: int = 0, masks: Masks = None,
                 teacher: TeacherTargets | None = None, **kwargs):
        super().__init__(**kwargs)
        self.cache, self.segments, self.speakers = cache, segments, sorted(segments)
        self.crop_frames, self.batch_size, self.length = crop_frames, batch_size, num_batches
        self.first_step, self.seed, self.masks, self.teacher = first_step, seed, masks, teacher

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Any, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.first_step + index])
        labels = rng.integers(0, len(self.speakers), size=self.batch_size)
        crops, keys = [], []
        for label in labels:
            speaker = self.speakers[label]
            segment = self.segments[speaker][rng.integers(len(self.segments[speaker]))]
            crops.append(segment_crop(self.cache, speaker, segment, crop_frames=self.crop_frames, rng=rng))
            keys.append(target_key(speaker, segment[0]))
        x = masked(np.stack(crops), np.random.default_rng([self.seed, self.first_step + index, 1]), self.masks)
        return ((x, self.teacher.rows(keys)) if self.teacher is not None else x), labels


class SoftmaxBatches(keras.utils.PyDataset):
    """Shuffled (x, y) batches over a fixed number of steps: a new seeded permutation for each pass over the data."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, num_batches: int, first_step: int = 0,
                 seed: int = 0, masks: Masks = None, **kwargs):
        super().__init__(**kwargs)
        if len(x) < batch_size:
            raise DeepSpeakerError(f"batch size {batch_size} is larger than the {len(x)} training crops")
        self.x, self.y, self.batch_size, self.length = x, y, batch_size, num_batches
        self.first_step, self.seed, self.masks = first_step, seed, masks
        self.per_pass = len(x) // batch_size  # the remainder of each permutation is skipped, as the original did
        self._permutation: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.length

    def _order(self, data_pass: int) -> np.ndarray:
        if self._permutation is None or self._permutation[0] != data_pass:
            perm = np.random.default_rng([self.seed, data_pass]).permutation(len(self.x))
            self._permutation = (data_pass, perm)
        return self._permutation[1]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        # The batch is a function of the global step alone, so resuming continues the same data stream.
        data_pass, slot = divmod(self.first_step + index, self.per_pass)
        rows = np.sort(self._order(data_pass)[slot * self.batch_size : (slot + 1) * self.batch_size])
        rng = np.random.default_rng([self.seed, self.first_step + index, 1])
        return masked(self.x[rows], rng, self.masks), self.y[rows]
