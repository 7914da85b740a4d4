"""The Embedder: audio files, signals or features -> L2-normalised 512-d speaker embeddings, in large batches.

Two poolings (``pooling``) turn an utterance's features into network inputs, whose embeddings are averaged and
L2-normalised:

- ``windows``: overlapping windows of ``window_seconds`` (the last window is aligned to the end so no frame is left
  out). Default window 1.6 s, hop 0.8 s: 160 frames is the crop length the original trains on (and embeds with,
  one random crop per file), so every window looks like the model's training inputs; averaging all of them at 50 %
  overlap uses the whole utterance deterministically, and every frame away from the ends lies in two windows, so
  none is seen only at a window edge. With every window the same length, all windows of all files share one shape
  and form full predict batches.
- ``utterance``: the whole utterance in one pass (the network averages its output frames over time), zero-padded at
  the end to a multiple of the network's stride (16 frames: the padding adds no output frame, and the embedding
  depends on the utterance alone, not on the others in its batch); utterances of equal padded length share
  batches. Each frame goes through the network once instead of twice, and every frame sees its context (the
  receptive field spans 4.2 s), which on the dev protocol (issue #33) scored as well as or better than windows.
  Utterances longer than ``MAX_PIECE_SECONDS`` are cut into that many near-equal pieces, to bound memory.

Either way an utterance shorter than ``min_seconds`` is zero-padded at the end to that length, as the original
pads its 1.6 s crops. A model's default pooling is the one its card (``model_card.json`` beside the file, naming
it) declares, else ``windows``: the packaged model was chosen with ``utterance``.
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np

from ..data.audio import MIN_SPEECH_SECONDS, SAMPLE_RATE, AudioError, apply_trim, check_trim, resample
from ..data.features import FEATURE_SETTINGS, HOP_LENGTH, NUM_FILTERS, fbank_features
from ..errors import DeepSpeakerError
from ..metrics import normalize_rows
from ..model.checkpoints import latest_checkpoint
from ..model.rescnn import STRIDE, load_model, model_identity, num_speakers_of, to_embedding_model, with_precision
from ..settings import check_choice
from . import DEFAULT_ENCODER
from .base import DEFAULT_WORKERS, Encoder, Weights
from .constants import DEFAULT_BATCH_SIZE, DEFAULT_HOP_SECONDS, DEFAULT_WINDOW_SECONDS, MAX_PIECE_SECONDS, POOLINGS
from .options import DEEP_SPEAKER

FRAMES_PER_SECOND = SAMPLE_RATE / HOP_LENGTH  # 100 feature frames per second
DEFAULT_PAD_SECONDS = 1.6
FORWARD_THREADS = 2  # forward passes in flight (TensorFlow): see Embedder.embed_features_batch
# Where 'deep-speaker train' writes its runs when it has no data folder; the newest triplet checkpoint is the
# default model (the original queries also look in CACHE/checkpoints, where training on a cache writes them).
DEFAULT_CHECKPOINT_ROOT = Path("checkpoints")
PACKAGED_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"

logger = logging.getLogger(__name__)
_announced: set[str] = set()
_FORWARD: "weakref.WeakKeyDictionary[keras.Model, Callable[[np.ndarray], np.ndarray]]" = weakref.WeakKeyDictionary()


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


def split_windows(features: np.ndarray, *, window: int, hop: int, min_frames: int) -> list[np.ndarray]:
    """The model inputs ``[t, 64]`` of one utterance: its windows, itself, or itself zero-padded to ``min_frames``."""
    n = features.shape[0]
    if n < min_frames:
        padded = np.zeros((min_frames, features.shape[1]), dtype=np.float32)
        padded[:n] = features
        return [padded]
    return [features[s:s + window] for s in window_starts(n, window, hop)]


def split_pieces(features: np.ndarray, *, max_frames: int, min_frames: int, multiple: int) -> list[np.ndarray]:
    """The model inputs ``[t, 64]`` of one utterance for ``pooling="utterance"``: ceil(T / max_frames) near-equal
    consecutive pieces (one for most utterances), each zero-padded at the end to at least ``min_frames`` and to a
    multiple of ``multiple`` frames."""
    n = features.shape[0]
    count = -(-n // max_frames)
    size = -(-n // count)
    pieces = []
    for start in range(0, n, size):
        piece = features[start:start + size]
        length = -(-max(piece.shape[0], min_frames) // multiple) * multiple
        padded = np.zeros((length, features.shape[1]), dtype=np.float32)
        padded[:piece.shape[0]] = piece
        pieces.append(padded)
    return pieces


def model_card(path: str | os.PathLike | None = None) -> dict:
    """The card of a model file: ``model_card.json`` beside it when the card names that file ({} otherwise, when
    missing or unreadable); without a path, the packaged model's card."""
    folder = PACKAGED_MODEL_DIR if path is None else Path(path).parent
    try:
        card = json.loads((folder / "model_card.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(card, dict) or (path is not None and card.get("model") != Path(path).name):
        return {}
    return card


def _card_summary(card: dict) -> str:
    """'trained on X; held-out EER Y' from a model card, as far as the card says."""
    eer = card.get("eer")
    eer_text = f"{100 * eer:.1f} %" if isinstance(eer, (int, float)) else "unknown"
    return f"trained on {card.get('training_data', 'unknown data')}; held-out EER {eer_text}"


def packaged_model() -> Path | None:
    """The packaged demo model: the file its card names, else the one .keras file there (temporaries skipped)."""
    named = model_card().get("model")
    if named and (PACKAGED_MODEL_DIR / named).is_file():
        return PACKAGED_MODEL_DIR / named
    found = sorted(p for p in PACKAGED_MODEL_DIR.glob("*.keras") if not p.name.startswith("."))
    return found[0] if found else None


def _announce(message: str, level: int = logging.INFO) -> None:
    """Log once per process which default model is used."""
    if message not in _announced:
        _announced.add(message)
        logger.log(level, message)


def default_model_path(checkpoint_roots: Sequence[str | os.PathLike] = (DEFAULT_CHECKPOINT_ROOT,)) -> Path:
    """The newest triplet checkpoint under the roots, else the packaged demo model, else a clear error."""
    found = [p for p in (latest_checkpoint(root, "triplet") for root in checkpoint_roots) if p is not None]
    if found:
        newest = max(found, key=lambda p: p.stat().st_mtime)
        _announce(f"deep-speaker: using the newest triplet checkpoint {newest}")
        return newest
    packaged = packaged_model()
    if packaged is not None:
        # A warning, so that Python users without logging set up see it too: results of a demo model mislead.
        _announce(f"deep-speaker: using the packaged default model {packaged}, a small demo model "
                  f"({_card_summary(model_card())}); pass --model for real use", logging.WARNING)
        return packaged
    searched = ", ".join(str(Path(root) / "triplet") for root in checkpoint_roots)
    raise DeepSpeakerError(f"no model given, no triplet checkpoint in {searched} and no packaged default model in "
                           f"{PACKAGED_MODEL_DIR}: pass --model PATH")


def model_path_of(model: keras.Model | str | os.PathLike | None) -> str | None:
    """The path a model is loaded from (None: the default model's, :func:`default_model_path`); None for a model
    object."""
    if isinstance(model, keras.Model):
        return None
    return str(default_model_path() if model is None else model)


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


class Embedder(Encoder):
    """The Deep Speaker encoder: speaker embeddings of files, signals or features with one ResCNN, batched
    across files (windows of equal length share forward passes)."""

    name = DEFAULT_ENCODER
    sample_rate = SAMPLE_RATE
    declaration = DEEP_SPEAKER

    def __init__(self, model: keras.Model | str | os.PathLike | None = None,
                 window_seconds: float | None = None, hop_seconds: float | None = None,
                 min_seconds: float = DEFAULT_PAD_SECONDS, batch_size: int = DEFAULT_BATCH_SIZE,
                 precision: str = "float32", trim: str = "percentile",
                 min_audio_seconds: float = MIN_SPEECH_SECONDS, workers: int | None = None,
                 pooling: str | None = None):
        """``window_seconds`` and ``hop_seconds`` (default 1.6 and 0.8) are the windows of ``pooling="windows"``;
        ``pooling`` None is the model card's, else windows (see the module docstring)."""
        if pooling is not None:
            check_choice(pooling, POOLINGS, "pooling")
        if min_seconds <= 0 or any(v is not None and v <= 0 for v in (window_seconds, hop_seconds)):
            raise DeepSpeakerError("window, hop and minimum length must be positive")
        windowed = window_seconds is not None or hop_seconds is not None
        window_seconds = DEFAULT_WINDOW_SECONDS if window_seconds is None else window_seconds
        hop_seconds = DEFAULT_HOP_SECONDS if hop_seconds is None else hop_seconds
        if hop_seconds > window_seconds:
            raise DeepSpeakerError(f"hop ({hop_seconds:g} s) longer than the window ({window_seconds:g} s) would skip audio")
        check_trim(trim)
        if batch_size < 1:
            raise DeepSpeakerError(f"batch size must be at least 1, got {batch_size}")
        self.model_path = model_path_of(model)
        card = model_card(self.model_path) if self.model_path else {}
        self.pooling = pooling or check_choice(card.get("pooling", POOLINGS[0]), POOLINGS, "pooling in the model card")
        if windowed and self.pooling != "windows":  # refused before the model loads
            raise DeepSpeakerError(f"--window and --hop apply to --pooling windows, not {self.pooling}"
                                   + ("" if pooling else " (the model card's): add --pooling windows"))
        network = model if self.model_path is None else load_model(self.model_path)
        self.model = with_precision(self._prepare(network), precision)
        self.window = _frames(window_seconds)
        self.hop = _frames(hop_seconds)
        self.max_frames = _frames(MAX_PIECE_SECONDS)
        self.min_frames = min(_frames(min_seconds), self.window)
        self.batch_size = batch_size
        self.trim = trim
        self.min_audio_seconds = min_audio_seconds
        self.workers = workers or DEFAULT_WORKERS
        self._identity: str | None = None
        self._forward = forward_function(self.model)

    def _prepare(self, model: keras.Model) -> keras.Model:
        """The network whose outputs are averaged over windows: here the embedding model."""
        return to_embedding_model(model)

    def _reduce(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """One row per utterance from the sums of its windows' outputs: the L2-normalised mean embedding."""
        return normalize_rows(sums)

    @property
    def embedding_size(self) -> int:
        """The width of the network's output (512 for the ResCNN, the number of speakers for a classifier)."""
        return int(self.model.output_shape[-1])

    @property
    def identity(self) -> str:
        """Hash of the embedding weights and feature settings (``model.rescnn.model_identity``)."""
        if self._identity is None:
            self._identity = model_identity(self.model)
        return self._identity

    @property
    def weights(self) -> Weights:
        """The checkpoint loaded (the default one resolved), or none for a model object."""
        return Weights(self.identity, self.model_path)

    @property
    def settings(self) -> dict[str, Any]:
        """Everything besides the weights that changes an embedding: the features, the windowing and the trim."""
        # Windows record no pooling key: the settings that statistics and caches written before it recorded.
        inputs = ({"window_frames": self.window, "hop_frames": self.hop} if self.pooling == "windows" else
                  {"pooling": self.pooling, "max_frames": self.max_frames, "multiple_frames": STRIDE})
        return {**FEATURE_SETTINGS, "trim": self.trim, **inputs, "min_frames": self.min_frames,
                "min_audio_seconds": self.min_audio_seconds}

    def model_inputs(self, features: np.ndarray) -> list[np.ndarray]:
        """The network inputs ``[t, 64]`` of one utterance's features, by the pooling: windows or pieces."""
        if self.pooling == "windows":
            return split_windows(features, window=self.window, hop=self.hop, min_frames=self.min_frames)
        return split_pieces(features, max_frames=self.max_frames, min_frames=self.min_frames, multiple=STRIDE)

    def _batches(self, owners: list[int], inputs: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(owners, batch [b, t, 64, 1]) of equal-length inputs, ``batch_size`` windows' worth of frames each."""
        rows = max(1, self.batch_size * self.window // max(inputs[0].shape[0], self.window))
        for i in range(0, len(inputs), rows):
            yield np.asarray(owners[i:i + rows]), np.stack(inputs[i:i + rows]).astype(np.float32, copy=False)[..., None]

    def embed_features_batch(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings [n, 512] of several utterances' features [T_i, 64]; inputs of equal length share batches."""
        sums = np.zeros((len(features), self.embedding_size), dtype=np.float64)
        counts = np.zeros((len(features), 1), dtype=np.float64)
        buckets: dict[int, tuple[list[int], list[np.ndarray]]] = defaultdict(lambda: ([], []))
        for i, feats in enumerate(features):
            feats = np.asarray(feats, dtype=np.float32)
            if feats.ndim != 2 or feats.shape[1] != NUM_FILTERS or feats.shape[0] == 0:
                raise DeepSpeakerError(f"features must be [T > 0, {NUM_FILTERS}], got shape {feats.shape}")
            for w in self.model_inputs(feats):
                owners, windows = buckets[w.shape[0]]
                owners.append(i)
                windows.append(w)
        batches = [batch for owners, inputs in buckets.values() for batch in self._batches(owners, inputs)]
        # Each batch's rows depend on that batch alone, so passes may overlap: on TensorFlow two in flight hide the
        # per-operation overhead of small batches (utterance pooling's many lengths: 1.7x faster on 2 cores).
        threads = FORWARD_THREADS if keras.backend.backend() == "tensorflow" else 1
        with ThreadPoolExecutor(threads) as pool:
            for (owners, _), out in zip(batches, pool.map(lambda batch: self._forward(batch[1]), batches)):
                np.add.at(sums, owners, np.asarray(out))
                np.add.at(counts, owners, 1.0)
        return self._reduce(sums, counts).astype(np.float32)

    def embed_features(self, features: np.ndarray) -> np.ndarray:
        """Embedding [512] of one utterance's features [T, 64]."""
        return self.embed_features_batch([features])[0]

    def embed_prepared(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """The Encoder's batch entry point: :meth:`embed_features_batch`."""
        return self.embed_features_batch(inputs)

    def prepare_signal(self, signal: np.ndarray, sample_rate: int = SAMPLE_RATE, where: str = "signal") -> np.ndarray:
        """Features of a mono signal, resampled and trimmed as files are; AudioError when too little speech is left."""
        x = resample(np.asarray(signal, dtype=np.float32), sample_rate, SAMPLE_RATE)
        x = apply_trim(x, self.trim, SAMPLE_RATE)
        if x.size < self.min_audio_seconds * SAMPLE_RATE:
            raise AudioError(where, f"too short ({x.size / SAMPLE_RATE:.2f} s of audio after trim, "
                                    f"need {self.min_audio_seconds:g} s)")
        return fbank_features(x)


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
