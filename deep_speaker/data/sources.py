"""The one entry to the feature data: a per-file cache (``cache.py``) or a sharded store (``store.py``, docs/STORE.md),
two sibling formats told apart here only, by what a folder holds. Everything outside ``data/`` opens, builds,
updates, converts, augments and wipes either through this module, and reads it through :class:`FeatureSource`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import DeepSpeakerError
from .build import MANIFEST, BuildSummary
from .cache import FeatureCache, augment_cache, build_cache, cache_wipe_plan, is_cache, read_manifests, wipe_cache
from .feature_source import FeatureSource
from .store import (FeatureStore, augment_store, build_store, convert_to_store, is_store, store_wipe_plan,
                    wipe_store)


def folder_format(path: str | os.PathLike) -> Optional[str]:
    """``"sharded"`` for a folder holding a store, ``"files"`` for a per-file cache, None for neither."""
    path = Path(path)
    if is_store(path):
        return "sharded"
    return "files" if is_cache(path) else None


def is_feature_folder(path: str | os.PathLike) -> bool:
    """Whether a folder holds features of either format (rather than, say, audio)."""
    return folder_format(path) is not None


def open_features(path: str | os.PathLike) -> FeatureSource:
    """The features of a folder, a :class:`~.store.FeatureStore` or a :class:`~.cache.FeatureCache` by what it holds
    (a folder of neither: the cache's one-line refusal)."""
    return FeatureStore(path) if is_store(Path(path)) else FeatureCache(path)


def wipe_plan(folder: Path) -> list[Path]:
    """What a rebuild in ``folder`` deletes, whichever format it holds; [] for an empty or new folder. A folder
    holding anything not ours is refused in one line (see :func:`~.cache.cache_wipe_plan`)."""
    return store_wipe_plan(folder) if is_store(folder) else cache_wipe_plan(folder)


def wipe_features(folder: Path) -> list[Path]:
    """Delete what :func:`wipe_plan` lists (a build of one format may replace the other's features)."""
    return wipe_store(folder) if is_store(folder) else wipe_cache(folder)


def build_features(audio_dir: str | os.PathLike, folder: str | os.PathLike, sharded: bool, *, update: bool = False,
                   shard: Optional[tuple[int, int]] = None, **options: object) -> BuildSummary:
    """Build (wiping whichever format the folder held) or ``update`` a per-file cache, or a sharded store when
    ``sharded``; ``options`` are :func:`~.cache.build_cache`'s or :func:`~.store.build_store`'s."""
    if not sharded:
        return build_cache(audio_dir, folder, update=update, shard=shard, wipe=wipe_features, **options)
    folder = Path(folder)
    # An update or a part adds shards beside what is there: beside a per-file cache they would hide it.
    if (update or shard is not None) and ((folder / MANIFEST).is_file() or read_manifests(folder) is not None):
        raise DeepSpeakerError(f"{folder} holds a per-file feature cache; convert it with 'deep-speaker cache "
                               f"convert {folder} NEW_STORE' or choose another folder")
    return build_store(audio_dir, folder, update=update, shard=shard, wipe=wipe_features, **options)


def convert_features(cache_dir: str | os.PathLike, store_dir: str | os.PathLike, dtype: str = "float32",
                     **options: object) -> BuildSummary:
    """Copy the features of ``cache_dir`` (either format) into a new sharded store (:func:`~.store.convert_to_store`;
    whatever ``store_dir`` held of ours is wiped first)."""
    return convert_to_store(open_features(cache_dir), store_dir, dtype=dtype, wipe=wipe_features, **options)


def augment_features(folder: str | os.PathLike, kinds: str | tuple[str, ...], copies: int, *, seed: int = 0,
                     progress: bool = True, babble_speakers: int = 3, workers: int = 1,
                     scheduler: Optional[str] = None, shard_size: Optional[int] = None) -> int:
    """Add ``copies`` augmented copies of every original utterance (:func:`~.cache.augment_cache`); a sharded store
    gets the same copies as new shards (:func:`~.store.augment_store`, with ``workers`` local processes or the Dask
    cluster at ``scheduler``, ``shard_size`` copies a shard). The number of copies made."""
    if is_store(Path(folder)):
        return augment_store(folder, kinds, copies, seed=seed, progress=progress, babble_speakers=babble_speakers,
                             workers=workers, scheduler=scheduler,
                             **({} if shard_size is None else {"shard_size": shard_size}))
    return augment_cache(folder, kinds, copies, seed=seed, progress=progress, babble_speakers=babble_speakers)
