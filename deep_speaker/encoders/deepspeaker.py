"""The Embedder: audio files, signals or features -> L2-normalised 512-d speaker embeddings, in large batches.

An utterance is cut into overlapping windows of ``window_seconds`` (the last window is aligned to the end
so no frame is left out); its embedding is the L2-normalised mean of the window embeddings. An utterance
shorter than the window is embedded whole; one shorter than ``min_seconds`` is zero-padded at the end to
that length, as the original pads its 1.6 s crops.

Default window 1.6 s, hop 0.8 s: 160 frames is the crop length the original trains on (and embeds with,
one random crop per file), so every window looks like the model's training inputs; averaging all of them
at 50 % overlap uses the whole utterance deterministically, and every frame away from the ends lies in
two windows, so none is seen only at a window edge. With every window the same length, all windows of
all files share one shape and form full predict batches.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import weakref
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import keras
import numpy as np

from ..atomic import atomic_write
from ..data.audio import MIN_SPEECH_SECONDS, SAMPLE_RATE, AudioError, apply_trim, check_trim, read_audio, resample
from ..errors import DeepSpeakerError
from ..data.features import HOP_LENGTH, NUM_FILTERS, fbank_features
from ..metrics import normalize_rows
from ..model.checkpoints import latest_checkpoint
from ..model.rescnn import (load_model, model_identity, num_speakers_of, to_embedding_model,
                    with_precision)

FRAMES_PER_SECOND = SAMPLE_RATE / HOP_LENGTH  # 100 feature frames per second
DEFAULT_WINDOW_SECONDS = 1.6
DEFAULT_HOP_SECONDS = 0.8
DEFAULT_PAD_SECONDS = 1.6
DEFAULT_BATCH_SIZE = 32  # windows per predict call; larger gains nothing on CPU and costs memory
FILES_PER_CHUNK = 256  # files read ahead (in threads) while the model embeds the previous chunk
# Where 'deep-speaker train' writes its runs when it has no data folder; the newest triplet checkpoint is the
# default model (the original queries also look in CACHE/checkpoints, where training on a cache writes them).
DEFAULT_CHECKPOINT_ROOT = Path("checkpoints")
PACKAGED_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"

_announced: set[str] = set()
_FORWARD: "weakref.WeakKeyDictionary[keras.Model, Callable[[np.ndarray], np.ndarray]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class EmbedFailure:
    """A file that gave no embedding, and why (one line)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class EmbedResult:
    """Embeddings of the files that worked, in input order, and the failures of the others."""

    embeddings: np.ndarray  # float32 [n_ok, 512]
    paths: list[str]  # the files of the rows of ``embeddings``
    failures: list[EmbedFailure]


def _frames(seconds: float) -> int:
    return max(1, int(round(seconds * FRAMES_PER_SECOND)))


def window_starts(num_frames: int, window: int, hop: int) -> list[int]:
    """Start frames of the windows of an utterance: every ``hop``, plus one ending at the last frame."""
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, hop))
    if starts[-1] != num_frames - window:
        starts.append(num_frames - window)
    return starts


def split_windows(features: np.ndarray, window: int, hop: int, min_frames: int) -> list[np.ndarray]:
    """The model inputs ``[t, 64]`` of one utterance: its windows, itself, or itself zero-padded to ``min_frames``."""
    n = features.shape[0]
    if n < min_frames:
        padded = np.zeros((min_frames, features.shape[1]), dtype=np.float32)
        padded[:n] = features
        return [padded]
    return [features[s:s + window] for s in window_starts(n, window, hop)]


def _model_card() -> dict:
    """The packaged model's card ({} when missing or unreadable)."""
    try:
        card = json.loads((PACKAGED_MODEL_DIR / "model_card.json").read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _card_summary(card: dict) -> str:
    """'trained on X; held-out EER Y' from a model card, as far as the card says."""
    eer = card.get("eer")
    eer_text = f"{100 * eer:.1f} %" if isinstance(eer, (int, float)) else "unknown"
    return f"trained on {card.get('training_data', 'unknown data')}; held-out EER {eer_text}"


def packaged_model() -> Path | None:
    """The packaged demo model: the file its card names, else the one .keras file there (temporaries skipped)."""
    named = _model_card().get("model")
    if named and (PACKAGED_MODEL_DIR / named).is_file():
        return PACKAGED_MODEL_DIR / named
    found = sorted(p for p in PACKAGED_MODEL_DIR.glob("*.keras") if not p.name.startswith("."))
    return found[0] if found else None


def _announce(message: str) -> None:
    """Say once per process (stderr) which default model is used."""
    if message not in _announced:
        _announced.add(message)
        print(message, file=sys.stderr)


def default_model_path(checkpoint_roots: Sequence[str | os.PathLike] = (DEFAULT_CHECKPOINT_ROOT,)) -> Path:
    """The newest triplet checkpoint under the roots, else the packaged demo model, else a clear error."""
    found = [p for p in (latest_checkpoint(root, "triplet") for root in checkpoint_roots) if p is not None]
    if found:
        newest = max(found, key=lambda p: p.stat().st_mtime)
        _announce(f"deep-speaker: using the newest triplet checkpoint {newest}")
        return newest
    packaged = packaged_model()
    if packaged is not None:
        _announce(f"deep-speaker: using the packaged default model {packaged}, a small demo model "
                  f"({_card_summary(_model_card())}); pass --model for real use")
        return packaged
    searched = ", ".join(str(Path(root) / "triplet") for root in checkpoint_roots)
    raise DeepSpeakerError(f"no model given, no triplet checkpoint in {searched} and no packaged default model in "
                           f"{PACKAGED_MODEL_DIR}: pass --model PATH")


def resolve_model(model: keras.Model | str | os.PathLike | None) -> keras.Model:
    """A Keras model from a model, a path (.keras, original .h5, run dir) or None (the default model)."""
    if isinstance(model, keras.Model):
        return model
    return load_model(default_model_path() if model is None else model)


def forward_function(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """The model's inference function (float32 [B, T, 64, 1] -> numpy), shared by Embedders of that model.

    On TensorFlow it is traced once for every input length; JAX and torch compile per input shape in Keras'
    own `predict_on_batch`.
    """
    if keras.backend.backend() != "tensorflow":
        return model.predict_on_batch
    if model not in _FORWARD:
        import tensorflow as tf

        ref = weakref.ref(model)  # a strong reference here would keep the model (the cache key) alive forever
        # input_signature with free batch and time: no retracing when a batch has another window length.
        traced = tf.function(lambda x: ref()(x, training=False), input_signature=[
            tf.TensorSpec([None, None, NUM_FILTERS, 1], tf.float32)])
        _FORWARD[model] = lambda x: traced(x).numpy()
    return _FORWARD[model]


class Embedder:
    """Speaker embeddings of files, signals or features with one ResCNN, batched across files."""

    def __init__(self, model: keras.Model | str | os.PathLike | None = None,
                 window_seconds: float = DEFAULT_WINDOW_SECONDS, hop_seconds: float = DEFAULT_HOP_SECONDS,
                 min_seconds: float = DEFAULT_PAD_SECONDS, batch_size: int = DEFAULT_BATCH_SIZE,
                 precision: str = "float32", trim: str = "percentile",
                 min_audio_seconds: float = MIN_SPEECH_SECONDS, workers: int | None = None):
        if min(window_seconds, hop_seconds, min_seconds) <= 0:
            raise DeepSpeakerError("window, hop and minimum length must be positive")
        if hop_seconds > window_seconds:
            raise DeepSpeakerError(f"hop ({hop_seconds:g} s) longer than the window ({window_seconds:g} s) would skip audio")
        check_trim(trim)
        if batch_size < 1:
            raise DeepSpeakerError(f"batch size must be at least 1, got {batch_size}")
        self.model = with_precision(self._prepare(resolve_model(model)), precision)
        self.window = _frames(window_seconds)
        self.hop = _frames(hop_seconds)
        self.min_frames = min(_frames(min_seconds), self.window)
        self.batch_size = batch_size
        self.trim = trim
        self.min_audio_seconds = min_audio_seconds
        self.workers = workers or min(4, os.cpu_count() or 1)
        self._identity: str | None = None
        self._forward = forward_function(self.model)

    def _prepare(self, model: keras.Model) -> keras.Model:
        """The network whose outputs are averaged over windows: here the embedding model."""
        return to_embedding_model(model)

    def _reduce(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """One row per utterance from the sums of its windows' outputs: the L2-normalised mean embedding."""
        return normalize_rows(sums)

    @property
    def output_size(self) -> int:
        return int(self.model.output_shape[-1])

    @property
    def model_identity(self) -> str:
        """Hash of the embedding weights and feature settings (``model.model_identity``)."""
        if self._identity is None:
            self._identity = model_identity(self.model)
        return self._identity

    def _predict(self, windows: list[np.ndarray]) -> np.ndarray:
        """Embeddings [n, 512] of equal-length windows, ``batch_size`` per forward pass."""
        out = []
        for i in range(0, len(windows), self.batch_size):
            batch = np.stack(windows[i:i + self.batch_size]).astype(np.float32, copy=False)[..., None]
            out.append(np.asarray(self._forward(batch)))
        return np.concatenate(out)

    def embed_features_batch(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings [n, 512] of several utterances' features [T_i, 64]; windows of equal length share batches."""
        sums = np.zeros((len(features), self.output_size), dtype=np.float64)
        counts = np.zeros((len(features), 1), dtype=np.float64)
        buckets: dict[int, tuple[list[int], list[np.ndarray]]] = defaultdict(lambda: ([], []))
        for i, feats in enumerate(features):
            feats = np.asarray(feats, dtype=np.float32)
            if feats.ndim != 2 or feats.shape[1] != NUM_FILTERS or feats.shape[0] == 0:
                raise DeepSpeakerError(f"features must be [T > 0, {NUM_FILTERS}], got shape {feats.shape}")
            for w in split_windows(feats, self.window, self.hop, self.min_frames):
                owners, windows = buckets[w.shape[0]]
                owners.append(i)
                windows.append(w)
        for owners, windows in buckets.values():
            np.add.at(sums, np.asarray(owners), self._predict(windows))
            np.add.at(counts, np.asarray(owners), 1.0)
        return self._reduce(sums, counts).astype(np.float32)

    def embed_features(self, features: np.ndarray) -> np.ndarray:
        """Embedding [512] of one utterance's features [T, 64]."""
        return self.embed_features_batch([features])[0]

    def features_of_signal(self, signal: np.ndarray, sample_rate: int = SAMPLE_RATE, where: str = "signal") -> np.ndarray:
        """Features of a mono signal, resampled and trimmed as files are; AudioError when too little speech is left."""
        x = resample(np.asarray(signal, dtype=np.float32), sample_rate, SAMPLE_RATE)
        x = apply_trim(x, self.trim, SAMPLE_RATE)
        if x.size < self.min_audio_seconds * SAMPLE_RATE:
            raise AudioError(where, f"too short ({x.size / SAMPLE_RATE:.2f} s of audio after trim, "
                                    f"need {self.min_audio_seconds:g} s)")
        return fbank_features(x)

    def embed_signal(self, signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Embedding [512] of a mono signal (any rate; trimmed like files)."""
        return self.embed_features(self.features_of_signal(signal, sample_rate))

    def _read(self, path: str) -> np.ndarray | EmbedFailure:
        """Features of a file, or its failure (never raises for bad audio)."""
        try:
            signal = read_audio(path, trim=False)
            return self.features_of_signal(signal, SAMPLE_RATE, path)
        except AudioError as e:
            return EmbedFailure(str(path), e.reason)

    def _chunks(self, paths: list[str]) -> Iterator[tuple[list[str], list[np.ndarray | EmbedFailure]]]:
        """Chunks of paths with their features, the next chunk read in threads while the caller embeds this one."""
        chunks = [paths[i:i + FILES_PER_CHUNK] for i in range(0, len(paths), FILES_PER_CHUNK)]
        with ThreadPoolExecutor(self.workers) as pool:
            pending = pool.map(self._read, chunks[0]) if chunks else iter(())
            for k, chunk in enumerate(chunks):
                results = list(pending)
                if k + 1 < len(chunks):
                    pending = pool.map(self._read, chunks[k + 1])
                yield chunk, results

    def embed_files_with_failures(self, paths: Iterable[str | os.PathLike]) -> EmbedResult:
        """Embed every readable file; missing, corrupt, silent or too-short ones are returned as failures."""
        paths = [str(p) for p in paths]
        rows, done, failures = [], [], []
        for chunk, results in self._chunks(paths):
            good = [(p, r) for p, r in zip(chunk, results) if not isinstance(r, EmbedFailure)]
            failures += [r for r in results if isinstance(r, EmbedFailure)]
            if good:
                rows.append(self.embed_features_batch([r for _, r in good]))
                done += [p for p, _ in good]
        embeddings = np.concatenate(rows) if rows else np.zeros((0, self.output_size), np.float32)
        return EmbedResult(embeddings, done, failures)

    def embed_files(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """Embeddings [n, 512] of the files, in order; DeepSpeakerError naming every file that failed."""
        result = self.embed_files_with_failures(paths)
        if result.failures:
            listed = "; ".join(map(str, result.failures[:5]))
            more = f" (and {len(result.failures) - 5} more)" if len(result.failures) > 5 else ""
            raise DeepSpeakerError(f"{len(result.failures)} file(s) could not be embedded: {listed}{more}")
        return result.embeddings


EXPORT_SUFFIXES = (".npz", ".npy", ".csv")


def save_embeddings(path: str | os.PathLike, embeddings: np.ndarray, sources: Sequence[str], model_id: str,
                    speakers: Sequence[str] | None = None) -> Path:
    """Write embeddings by suffix: .npz (embeddings, paths, model_identity[, speakers]), .npy (the array), .csv."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise DeepSpeakerError(f"{path}: unknown output format; use one of {', '.join(EXPORT_SUFFIXES)}")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    with atomic_write(path) as out:
        if suffix == ".npy":
            np.save(out, embeddings, allow_pickle=False)
        elif suffix == ".npz":
            # Unicode arrays (dtype <U), never object arrays: the file loads with allow_pickle=False.
            extra = {} if speakers is None else {"speakers": np.asarray(list(speakers), dtype=str)}
            np.savez(out, embeddings=embeddings, paths=np.asarray(list(sources), dtype=str),
                     model_identity=np.asarray(model_id), **extra)
        else:
            f = io.TextIOWrapper(out, encoding="utf8", newline="", write_through=True)
            writer = csv.writer(f)
            label = [] if speakers is None else ["speaker"]
            writer.writerow(["path", *label, *(f"e{i}" for i in range(embeddings.shape[1]))])
            for i, row in enumerate(embeddings):
                writer.writerow([sources[i], *([] if speakers is None else [speakers[i]]),
                                 *(f"{v:.8g}" for v in row)])
            f.detach()  # the bytes are written through; atomic_write closes and renames the file
    return path


class SpeakerClassifier(Embedder):
    """p(y|x) of files from a model with a softmax head: the mean of its windows' softmax outputs.

    The input of the classifier scores (IS, mIS, AM); reads, windows and batches exactly as the Embedder does.
    """

    def _prepare(self, model: keras.Model) -> keras.Model:
        if num_speakers_of(model) is None:
            raise DeepSpeakerError(f"{model.name}: no softmax head; classifier scores need a softmax-phase "
                                   "checkpoint (e.g. OUT/softmax/best.keras)")
        return model

    def _reduce(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return sums / counts
