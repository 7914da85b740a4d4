"""Batch embedding on a Dask cluster: chunks of files go to the workers, each of which loads the encoder once.

An encoder travels as its description (:class:`EncoderSpec`: registry name, options, embedding cache), never
as a model object: every worker builds it from that on its first chunk and keeps it for the next ones, and
each chunk's result names the identity of the encoder that made it, so a worker that found other weights under
the same path is refused instead of mixed in. Failures per file come back as records, as in one process; the
rows come back in input order. The distribution, retries and transport are Dask's (``distributed.Client``);
the cluster is the user's (``dask scheduler`` / ``dask worker``, dask-jobqueue on SLURM, dask-kubernetes, ...).
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from ..data.cluster import check_scheduler, connect
from ..errors import DeepSpeakerError, Failure
from . import DEFAULT_ENCODER, encoder_declaration, get_encoder
from .base import FILES_PER_CHUNK, EmbedResult, Encoder, EncoderWrapper, Weights
from .embedding_cache import with_embedding_cache


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is built from: ``get_encoder(name, **options)``, through the embedding cache in
    ``embedding_cache`` when one is named."""

    name: str = DEFAULT_ENCODER
    options: dict[str, Any] = field(default_factory=dict)
    embedding_cache: str | None = None

    def build(self) -> Encoder:
        return with_embedding_cache(get_encoder(self.name, **self.options), self.embedding_cache)

    def key(self) -> str:
        """A text naming the spec exactly (the worker's cache key and the form sent over the wire)."""
        return json.dumps([self.name, self.options, self.embedding_cache], sort_keys=True)

    @classmethod
    def from_key(cls, key: str) -> "EncoderSpec":
        name, options, cache = json.loads(key)
        return cls(name, options, cache)

    def portable(self, weights: Weights) -> "EncoderSpec":
        """The same spec with paths made absolute and, where no weights were named, the ``weights`` the encoder
        loaded here (a default resolved in this process), so that a worker started elsewhere (another folder, no
        checkpoints/) loads the very model this process did."""
        options = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in self.options.items()}
        if options.get("model") is None and weights.path is not None and encoder_declaration(self.name).takes("model"):
            options["model"] = weights.path
        if isinstance(options.get("model"), str) and os.path.exists(options["model"]):
            options["model"] = os.path.abspath(options["model"])
        cache = None if self.embedding_cache is None else os.path.abspath(self.embedding_cache)
        return EncoderSpec(self.name, options, cache)


_WORKER_ENCODERS: dict[str, Encoder] = {}
_WORKER_LOCK = threading.Lock()  # a worker with several threads builds each encoder once


def worker_encoder(key: str) -> Encoder:
    """The encoder of ``key`` in this (worker) process, built on first use and kept."""
    with _WORKER_LOCK:
        if key not in _WORKER_ENCODERS:
            _WORKER_ENCODERS[key] = EncoderSpec.from_key(key).build()
        return _WORKER_ENCODERS[key]


def embed_chunk(paths: Sequence[str], spec_key: str) -> tuple[str, np.ndarray, list[str], list[tuple[str, str]]]:
    """The Dask task: (encoder identity, embeddings, embedded paths, (path, reason) failures) of one chunk."""
    encoder = worker_encoder(spec_key)
    result = encoder.embed_files_with_failures(paths)
    return encoder.identity, result.embeddings, result.paths, [(f.path, f.reason) for f in result.failures]


def chunk_size(num_files: int, num_workers: int, largest: int = FILES_PER_CHUNK) -> int:
    """Files per task: about four tasks per worker (so a slow one does not hold up the end), at most ``largest``."""
    return max(1, min(largest, math.ceil(num_files / (4 * max(1, num_workers)))))


def embed_files_on_cluster(spec: EncoderSpec, paths: Iterable[str | os.PathLike], scheduler: str,
                           *, weights: Weights | None = None, files_per_task: int | None = None) -> EmbedResult:
    """Embed files on the Dask cluster at ``scheduler``, as ``spec.build().embed_files_with_failures`` would.

    The workers must see the files and the model under the same paths (relative ones are made absolute here);
    rows and failures name the paths as given. ``weights``: what the encoder loaded here (default: build it
    here); every worker loads that path and every chunk must have its identity.
    """
    from distributed import KilledWorker

    given = [str(p) for p in paths]
    absolute = [os.path.abspath(p) for p in given]
    as_given = dict(zip(absolute, given))
    weights = weights or spec.build().weights
    spec_key = spec.portable(weights).key()
    with connect(scheduler) as client:
        size = files_per_task or chunk_size(len(given), len(client.scheduler_info().get("workers", {})))
        chunks = [absolute[i:i + size] for i in range(0, len(absolute), size)]
        # pure=False: a re-run must embed again (the files may have changed), not reuse a result Dask remembers.
        futures = client.map(embed_chunk, chunks, spec_key=spec_key, pure=False)
        try:
            results = client.gather(futures)
        except KilledWorker as exc:
            raise DeepSpeakerError(f"Dask workers died embedding a chunk of files ({exc})") from None
    rows, done, failures = [], [], []
    for worker_identity, embeddings, chunk_paths, chunk_failures in results:
        if worker_identity != weights.identity:
            raise DeepSpeakerError(f"a Dask worker loaded a different model (identity {worker_identity}, here "
                                   f"{weights}): give every worker the same model file")
        rows.append(np.asarray(embeddings, np.float32))
        done += [as_given[p] for p in chunk_paths]
        failures += [Failure(as_given.get(p, p), reason) for p, reason in chunk_failures]
    width = rows[0].shape[1] if rows else 0
    return EmbedResult(np.concatenate(rows) if rows else np.zeros((0, width), np.float32), done, failures)


class DaskEncoder(EncoderWrapper):
    """An encoder whose file embedding runs on a Dask cluster; everything else (name, identity, settings, signals)
    is that of the same encoder built here."""

    def __init__(self, spec: EncoderSpec, scheduler: str, files_per_task: int | None = None):
        # A malformed address is refused now, before the encoder is built, not after the files are read.
        self.spec, self.scheduler, self.files_per_task = spec, check_scheduler(scheduler), files_per_task
        super().__init__(spec.build())

    def embed_files_with_failures(self, paths: Iterable[str | os.PathLike]) -> EmbedResult:
        result = embed_files_on_cluster(self.spec, paths, self.scheduler, weights=self.weights,
                                        files_per_task=self.files_per_task)
        if not result.paths:  # a width for the empty result, as one process gives
            result.embeddings = np.zeros((0, self.embedding_size), np.float32)
        return result
