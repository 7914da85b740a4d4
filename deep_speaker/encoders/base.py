"""The Encoder interface: audio files or signals in, one embedding row per utterance out, failures per file.

In the spirit of fadtk's ``ModelLoader``: an encoder says what it is (``name``, ``identity``, ``embedding_size``,
``sample_rate``, ``settings``) and how one signal becomes its model input (``prepare_signal``) and how a batch
of inputs becomes embeddings (``embed_prepared``). Reading files (in threads, one chunk ahead of the model),
turning unusable files into :class:`~deep_speaker.errors.Failure` records and batching are done here once, so
every encoder reports bad inputs the same way and every workflow (verification, generated-speech statistics,
the main job) depends on this interface only. An encoder declares its options and capabilities
(:attr:`Encoder.declaration`) and says which weights it loaded (:attr:`Encoder.weights`); an
:class:`EncoderWrapper` (the embedding cache, a Dask cluster) changes how files are embedded and nothing else.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import numpy as np

from ..data.audio import AudioError, read_audio, resample
from ..errors import DeepSpeakerError, Failure, failures_message
from .options import NO_DECLARATION, EncoderDeclaration

FILES_PER_CHUNK = 256  # files read ahead (in threads) while the model embeds the previous chunk
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)  # reading threads: decoding is mostly in C, four keep a CPU model fed


@dataclass
class EmbedResult:
    """Embeddings of the files that worked, in input order, and the failures of the others."""

    embeddings: np.ndarray  # float32 [n_ok, embedding_size]
    paths: list[str]  # the files of the rows of ``embeddings``
    failures: list[Failure]


def update_with_file(digest: Any, path: str | os.PathLike) -> None:
    """Feed a file's bytes to a hashlib digest, in 1 MiB blocks (weight files run to gigabytes)."""
    with open(path, "rb") as f:  # (hashlib.file_digest is Python 3.11+; the package supports 3.10)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def waveform(signal: np.ndarray, sample_rate: int, *, rate: int, min_samples: int, where: str,
             name: str) -> np.ndarray:
    """A waveform encoder's input: ``signal`` as float32 resampled to ``rate``; an AudioError when shorter than
    ``min_samples`` (what the encoder ``name`` needs to pool)."""
    x = resample(np.asarray(signal, dtype=np.float32), sample_rate, rate)
    if x.size < min_samples:
        raise AudioError(where, f"too short ({x.size / rate:.3f} s of audio, need {min_samples / rate:.3f} s for "
                                f"{name})")
    return x


@dataclass(frozen=True)
class Weights:
    """The weights an encoder loaded: a file or folder (``path``), or a package's own (``package``, with its
    version), or neither (built from a model object or no weights at all); ``identity`` is the encoder's."""

    identity: str
    path: str | None = None
    package: str | None = None

    def __str__(self) -> str:
        return f"{self.path or self.package or 'weights in memory'}, identity {self.identity}"

    def to_dict(self) -> dict[str, str | None]:
        return {"identity": self.identity, "path": self.path, "package": self.package}


class Encoder(ABC):
    """A speaker encoder: ``name``, ``identity``, ``embedding_size``, ``sample_rate``, ``settings`` and batched
    embedding of files (:meth:`embed_files_with_failures`) and signals (:meth:`embed_signals`)."""

    workers: int = DEFAULT_WORKERS
    # Its options and capabilities; the registry keeps the same object, readable without importing the class.
    declaration: ClassVar[EncoderDeclaration] = NO_DECLARATION

    @property
    @abstractmethod
    def name(self) -> str:
        """The registry name, recorded in statistics files and reports ("deep-speaker")."""

    @property
    @abstractmethod
    def identity(self) -> str:
        """A content hash of the weights and settings: equal identities give equal embeddings."""

    @property
    @abstractmethod
    def embedding_size(self) -> int:
        """The width d of an embedding row."""

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """The rate (Hz) files are decoded at before :meth:`prepare_signal`."""

    @property
    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything besides the weights that changes an embedding (JSON-ready); statistics files record it."""

    @abstractmethod
    def prepare_signal(self, signal: np.ndarray, sample_rate: int, where: str) -> Any:
        """The model input of one mono signal; an :class:`AudioError` naming ``where`` when it is unusable."""

    @abstractmethod
    def embed_prepared(self, inputs: Sequence[Any]) -> np.ndarray:
        """Embeddings float32 ``[n, embedding_size]`` of prepared inputs, one row each, in order."""

    @property
    def weights(self) -> Weights:
        """The weights this encoder loaded (calibration files sit beside that path; reports and Dask workers name
        it); an encoder that loads a file or folder says which."""
        return Weights(self.identity)

    def embed_features_batch(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings ``[n, d]`` of Deep Speaker's cached filterbank features ``[T_i, 64]``: the capability an
        encoder declares as ``embeds_cached_features`` (callers check the declaration, not this method)."""
        raise NotImplementedError(f"encoder {self.name!r} does not declare embeds_cached_features")

    def read(self, path: str) -> Any:
        """The model input of a file: decoded at :attr:`sample_rate` (untrimmed), then :meth:`prepare_signal`."""
        return self.prepare_signal(read_audio(path, sample_rate=self.sample_rate, trim=False), self.sample_rate, path)

    def read_or_failure(self, path: str) -> Any:
        """:meth:`read`, or the file's Failure (never raises for bad audio)."""
        try:
            return self.read(path)
        except AudioError as e:
            return e.failure

    def _chunks(self, paths: list[str], read: Callable[[str], Any]) -> Iterator[tuple[list[str], list[Any]]]:
        """Chunks of paths with ``read`` of each, the next chunk read in threads while the caller embeds this one."""
        chunks = [paths[i:i + FILES_PER_CHUNK] for i in range(0, len(paths), FILES_PER_CHUNK)]
        with ThreadPoolExecutor(self.workers) as pool:
            pending = pool.map(read, chunks[0]) if chunks else iter(())
            for k, chunk in enumerate(chunks):
                results = list(pending)
                if k + 1 < len(chunks):
                    pending = pool.map(read, chunks[k + 1])
                yield chunk, results

    def embed_files_with_failures(self, paths: Iterable[str | os.PathLike]) -> EmbedResult:
        """Embed every readable file; missing, corrupt, silent or too-short ones are returned as failures."""
        return self.embed_reads(paths, self.read_or_failure, self.embed_prepared)

    def embed_reads(self, paths: Iterable[str | os.PathLike], read: Callable[[str], Any],
                    embed: Callable[[list[Any]], np.ndarray]) -> EmbedResult:
        """The file loop of :meth:`embed_files_with_failures` with its two steps given: ``read`` of a path (in
        threads, a chunk ahead: an input or a Failure) and ``embed`` of a chunk's inputs (rows in order); a
        wrapper such as the embedding cache passes its own."""
        paths = [str(p) for p in paths]
        rows, done, failures = [], [], []
        for chunk, results in self._chunks(paths, read):
            good = [(p, r) for p, r in zip(chunk, results) if not isinstance(r, Failure)]
            failures += [r for r in results if isinstance(r, Failure)]
            if good:
                rows.append(embed([r for _, r in good]))
                done += [p for p, _ in good]
        embeddings = np.concatenate(rows) if rows else np.zeros((0, self.embedding_size), np.float32)
        return EmbedResult(embeddings, done, failures)

    def embed_files(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """Embeddings ``[n, d]`` of the files, in order; DeepSpeakerError naming every file that failed."""
        result = self.embed_files_with_failures(paths)
        if result.failures:
            raise DeepSpeakerError(failures_message(result.failures, "file(s) could not be embedded"))
        return result.embeddings

    def embed_signals(self, signals: Sequence[np.ndarray], sample_rate: int | None = None) -> np.ndarray:
        """Embeddings ``[n, d]`` of mono signals at ``sample_rate`` (default :attr:`sample_rate`), one batch."""
        rate = self.sample_rate if sample_rate is None else sample_rate
        return self.embed_prepared([self.prepare_signal(np.asarray(s), rate, f"signal {i}")
                                    for i, s in enumerate(signals)])

    def embed_signal(self, signal: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """Embedding ``[d]`` of one mono signal (any rate the encoder accepts)."""
        return self.embed_signals([signal], sample_rate)[0]


class EncoderWrapper(Encoder):
    """An encoder that is ``inner`` in everything (name, identity, settings, weights, declaration, signals,
    features) but may embed files its own way (:meth:`embed_files_with_failures`)."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner

    name = property(lambda self: self.inner.name)
    identity = property(lambda self: self.inner.identity)
    embedding_size = property(lambda self: self.inner.embedding_size)
    sample_rate = property(lambda self: self.inner.sample_rate)
    settings = property(lambda self: self.inner.settings)
    weights = property(lambda self: self.inner.weights)
    declaration = property(lambda self: self.inner.declaration)  # type: ignore[assignment]

    def prepare_signal(self, signal: np.ndarray, sample_rate: int, where: str) -> Any:
        return self.inner.prepare_signal(signal, sample_rate, where)

    def embed_prepared(self, inputs: Sequence[Any]) -> np.ndarray:
        return self.inner.embed_prepared(inputs)

    def embed_features_batch(self, features: Sequence[np.ndarray]) -> np.ndarray:
        return self.inner.embed_features_batch(features)

    def embed_files_with_failures(self, paths: Iterable[str | os.PathLike]) -> EmbedResult:
        return self.inner.embed_files_with_failures(paths)
