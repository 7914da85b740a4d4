"""The embedded set every evaluation works on: :class:`Embedded` (embeddings with their files, speakers, the files that
gave none, and the encoder that made them), shared by speaker verification (``eval.verification``) and the evaluation
of generated speech, whose :class:`Stats` add the Gaussian statistics and settings a statistics file records."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

from .. import metrics
from ..encoders import DEFAULT_ENCODER, Encoder
from ..errors import DeepSpeakerError, Failure
from ..metrics.moments import Moments, moments


@dataclass
class Embedded:
    """Embeddings of a set of items with their speaker and file, the inputs that failed, and what embedded them."""

    embeddings: np.ndarray  # float32 [n, d], L2-normalised
    speakers: list[str]  # the speaker of each row ("" where the layout gives none)
    paths: list[str]  # the file of each row (a cache id ``speaker/utterance``, or ``path#k`` for a segment)
    failures: list[Failure] = field(default_factory=list)  # inputs that gave no embedding
    encoder: str = DEFAULT_ENCODER  # the registry name of the encoder
    identity: str = ""  # the encoder's identity (equal identities give equal embeddings)

    @classmethod
    def empty(cls, encoder: Encoder, failures: list[Failure] | None = None) -> "Embedded":
        """No rows, of ``encoder``'s width."""
        return cls(np.zeros((0, encoder.embedding_size), np.float32), [], [], list(failures or []), encoder.name,
                   encoder.identity)


@dataclass
class Stats:
    """An embedded set with its Gaussian statistics and the settings of the encoder that made it: what a statistics
    file holds (``eval.formats``) and what ``eval.generated.compare`` compares."""

    embedded: Embedded
    feature_settings: dict  # the encoder's settings
    mu: np.ndarray  # [d] float64
    sigma: np.ndarray  # [d, d] float64, unbiased
    source: str = ""  # the folder or file it came from, for messages
    # The encoder that made (or can make) these embeddings, called only when noise references must be embedded
    # (CompareConfig.anchor_noise); never saved, and None for statistics made without one.
    embedder: Callable[[], Encoder] | None = field(default=None, repr=False, compare=False)

    @property
    def embeddings(self) -> np.ndarray:
        return self.embedded.embeddings

    @cached_property
    def labels(self) -> np.ndarray:
        """The speaker of each row as a unicode array ("" when the layout gives none)."""
        return np.asarray(self.embedded.speakers, dtype=str)

    @cached_property
    def paths(self) -> np.ndarray:
        return np.asarray(self.embedded.paths, dtype=str)

    @property
    def model_identity(self) -> str:
        return self.embedded.identity

    @property
    def encoder(self) -> str:
        return self.embedded.encoder

    @property
    def failures(self) -> list[Failure]:
        return self.embedded.failures

    @property
    def speakers(self) -> list[str]:
        """The distinct speakers, sorted."""
        return sorted(set(self.embedded.speakers) - {""})

    @property
    def moments(self) -> Moments:
        """Count, sum and sum of outer products of the embeddings (float64), mergeable across files."""
        return moments(self.embeddings)


def make_stats(embedded: Embedded, feature_settings: dict, source: str = "") -> Stats:
    """Stats of an embedded set (mean and unbiased covariance by ``metrics.gaussian_stats``)."""
    emb = np.asarray(embedded.embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise DeepSpeakerError(f"{source or 'the set'}: need at least 2 embedded utterances, got "
                               f"{emb.shape[0] if emb.ndim == 2 else 0}")
    mu, sigma = metrics.gaussian_stats(emb)
    rows = Embedded(emb, [str(s) for s in embedded.speakers], [str(p) for p in embedded.paths],
                    list(embedded.failures), embedded.encoder, embedded.identity)
    return Stats(rows, dict(feature_settings), mu, sigma, source)
