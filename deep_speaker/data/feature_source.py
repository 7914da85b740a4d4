"""What readers of features rely on, whichever format holds them: the per-file cache (``data.cache``) and the sharded
store (``data.store``) both offer it; ``data.sources`` opens either."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from ..errors import Failure


class FeatureSource(Protocol):
    """What both formats offer readers: ids, settings, failures, the entry and features of each utterance."""

    path: Path
    manifest: dict  # the settings and build record (audio_dir, layout, min_seconds, augment), without the entries

    @property
    def settings(self) -> dict:
        """The feature settings (``FEATURE_SETTINGS`` + trim) the features were computed with."""

    @property
    def failures(self) -> list[Failure]:
        """Files that could not be cached, and why."""

    @property
    def speakers(self) -> list[str]:
        """Speaker ids, sorted."""

    @property
    def hours(self) -> float:
        """Hours of source audio."""

    def utterances(self, speaker: Optional[str] = None) -> list[tuple[str, str]]:
        """(speaker, utterance) pairs, sorted; only those of ``speaker`` when given."""

    def entry(self, speaker: str, utterance: str) -> dict:
        """An utterance's record (source, size, mtime_ns, frames, seconds, array; augment for a copy)."""

    def load(self, speaker: str, utterance: str) -> np.ndarray:
        """The features ``[T, 64]`` of an utterance, read-only (float32, or a float16 store's float16)."""

    def __len__(self) -> int:
        """The number of utterances."""
