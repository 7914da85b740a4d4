"""The Encoder interface: audio files or signals in, one embedding row per utterance out, failures per file.

In the spirit of fadtk's ``ModelLoader``: an encoder says what it is (``name``, ``identity``, ``embedding_size``,
``sample_rate``, ``settings``) and how one signal becomes its model input (``prepare_signal``) and how a batch
of inputs becomes embeddings (``embed_prepared``). Reading files (in threads, one chunk ahead of the model),
turning unusable files into :class:`~deep_speaker.errors.Failure` records and batching are done here once, so
every encoder reports bad inputs the same way and every workflow (verification, generated-speech statistics,
the main job) depends on this interface only.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..data.audio import AudioError, read_audio
from ..errors import DeepSpeakerError, Failure, failures_message
from .embedding_cache import EmbeddingCache

FILES_PER_CHUNK = 256  # files read ahead (in threads) while the model embeds the previous chunk
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)  # reading threads: decoding is mostly in C, four keep a CPU model fed


@dataclass
class EmbedResult:
    """Embeddings of the files that worked, in input order, and the failures of the others."""

    embeddings: np.ndarray  # float32 [n_ok, embedding_size]
    paths: list[str]  # the files of the rows of ``embeddings``
    failures: list[Failure]


class Encoder(ABC):
    """A speaker encoder: ``name``, ``identity``, ``embedding_size``, ``sample_rate``, ``settings`` and batched
    embedding of files (:meth:`embed_files_with_failures`) and signals (:meth:`embed_signals`)."""

    workers: int = DEFAULT_WORKERS
    # A folder: embeddings of files are kept there per (file content, encoder) and not computed again
    # (:mod:`.embedding_cache`); None: off. The CLI sets it from --embedding-cache.
    embedding_cache: str | os.PathLike | None = None

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

    def read(self, path: str) -> Any:
        """The model input of a file: decoded at :attr:`sample_rate` (untrimmed), then :meth:`prepare_signal`."""
        return self.prepare_signal(read_audio(path, self.sample_rate, trim=False), self.sample_rate, path)

    def _read_or_failure(self, path: str) -> Any:
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
        """Embed every readable file; missing, corrupt, silent or too-short ones are returned as failures.

        With :attr:`embedding_cache` set, a file whose bytes this encoder embedded before is not decoded again:
        its stored row is returned (equal to the row computed then), and new rows are stored.
        """
        paths = [str(p) for p in paths]
        rows, done, failures = [], [], []
        with contextlib.ExitStack() as stack:
            cache = None if self.embedding_cache is None else stack.enter_context(
                EmbeddingCache(self.embedding_cache, self))
            read = self._read_or_failure if cache is None else lambda p: cache.lookup(p, self._read_or_failure)
            for chunk, results in self._chunks(paths, read):
                good = [(p, r) for p, r in zip(chunk, results) if not isinstance(r, Failure)]
                failures += [r for r in results if isinstance(r, Failure)]
                if good:
                    inputs = [r for _, r in good]
                    rows.append(self.embed_prepared(inputs) if cache is None else
                                cache.complete(inputs, self.embed_prepared))
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
