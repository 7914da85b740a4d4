"""The build toolbox both feature formats share (the per-file cache, ``cache.py``, and the sharded store,
``store.py``): the settings a build records, one utterance's features and the bad-input policy, the stat pass, which
paths can be recorded, ``--shard I/N``, the build lock, the link and overlap checks run before anything is deleted
or written, the worker processes' start policy, the progress bar and the build summary.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import zlib
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import soundfile as sf
from filelock import FileLock, Timeout
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ..atomic import atomic_write
from ..errors import DeepSpeakerError, Failure, InputError, printable
from .audio import check_trim
from .constants import DEFAULT_TRIM
from .corpus import Utterance
from .features import FEATURE_SETTINGS, extract_features

# The per-file cache's manifest; its name also names the build lock of both formats (build_lock), so that a build
# of either format into a folder excludes a build of the other there.
MANIFEST = "manifest.json"
INPUTS_NAME = "full_inputs.npz"  # the training inputs (data.inputs) a cache's folder may hold, and a wipe deletes
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def cache_settings(trim: str = DEFAULT_TRIM) -> dict:
    """The feature settings a cache records: ``FEATURE_SETTINGS`` plus the trim mode."""
    return {**FEATURE_SETTINGS, "trim": check_trim(trim)}



def save_array_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file beside ``path``, then rename it into place.

    The same bytes as ``np.save``, but the data goes through the file's ``write``: numpy's ``tofile`` reports a full
    disk as an OSError with no errno ("N requested and M written"), which could name neither the file nor the cause.
    """
    array = np.ascontiguousarray(array)
    with atomic_write(path) as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
        f.write(array.data)



def manifest_name(shard: Optional[tuple[int, int]]) -> str:
    """``manifest.json``, or ``manifest.shard-I-of-N.json`` for one shard of a distributed build."""
    return MANIFEST if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.json"



def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> (i, n)."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise DeepSpeakerError(f"--shard takes i/n, e.g. 0/4 (got {text!r})") from None
    if not 0 <= index < count:
        raise DeepSpeakerError(f"--shard {text}: need 0 <= i < n")
    return index, count



def in_shard(utt: Utterance, shard: Optional[tuple[int, int]]) -> bool:
    """Whether an utterance belongs to a shard; by a hash of its ids, so adding files never moves others."""
    return shard is None or zlib.crc32(f"{utt.speaker}/{utt.utterance}".encode()) % shard[1] == shard[0]



@dataclass
class BuildSummary:
    """What a build or update did."""

    cache_dir: str
    layout: str
    cached: int = 0          # computed in this run
    skipped: int = 0         # already in the cache and unchanged (size + mtime)
    recovered: int = 0       # complete arrays an interrupted run left without a manifest entry
    failed: list[Failure] = field(default_factory=list)
    hours: float = 0.0       # hours of audio computed in this run
    total_utterances: int = 0
    total_hours: float = 0.0
    wall_seconds: float = 0.0

    def lines(self) -> list[str]:
        """Human-readable report: one line per failure (``path: reason``), then the totals."""
        out = [str(f) for f in self.failed]  # Failure's line: escaped, one line per failure
        out.append(f"cache {printable(self.cache_dir)} ({self.layout} layout): {self.cached} files cached "
                   f"({self.hours:.2f} h of audio), {self.skipped} skipped (unchanged), "
                   f"{self.recovered} recovered, {len(self.failed)} failed; "
                   f"{self.total_utterances} utterances, {self.total_hours:.2f} h in total; "
                   f"wall time {self.wall_seconds:.1f} s")
        return out



NOT_UTF8 = "its path is not valid UTF-8, which a cache cannot record; rename it"


def _is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: a file name that does not decode is held as lone surrogates, which no
    JSON manifest or Arrow index can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True



def recordable(audio_dir: Path, utterances: list[Utterance],
               rejected: list[Failure]) -> tuple[list[Utterance], list[Failure]]:
    """The utterances whose path a manifest or a store index can record, and the scan's failures plus one for each
    other utterance: a file name that is not valid UTF-8 is that file's failure (exit 1), not a crash. Failures'
    paths are escaped alike (errors.printable), so that they can be recorded too. Both cache formats' builds."""
    if not _is_utf8(str(audio_dir)):
        raise DeepSpeakerError(f"{printable(str(audio_dir))}: the audio folder's path is not valid UTF-8, which a "
                               f"cache cannot record; rename it")
    # ASCII paths, the common case, are checked without a Python call per file (a no-op update reads 10^5 of them).
    if all(map(str.isascii, map(itemgetter(2), utterances))) \
            and all(f.path.isascii() and f.reason.isascii() for f in rejected):
        return utterances, rejected
    kept = [u for u in utterances if u.path.isascii() or _is_utf8(u.path)]
    failures = [f if _is_utf8(f.path) and _is_utf8(f.reason) else Failure(printable(f.path), printable(f.reason))
                for f in rejected]
    if len(kept) < len(utterances):
        failures += [Failure(printable(u.path), NOT_UTF8) for u in utterances if not _is_utf8(u.path)]
    return kept, failures



def compute_features(utt: Utterance, trim: str, min_seconds: float) -> tuple[np.ndarray, dict] | Failure:
    """One utterance's features and its entry (ids, source, size, mtime_ns, frames, seconds), or why it failed.

    The one home of the bad-input policy of every cache format (the per-file cache and the sharded store).
    """
    try:
        st = os.stat(utt.path)  # before reading: a file changed meanwhile is redone by the next update
        features = extract_features(utt.path, trim=trim, min_seconds=min_seconds)
        seconds = sf.info(utt.path).duration
    except InputError as exc:
        return exc.failure
    except Exception as exc:  # one bad file must never stop a build: report it and go on
        return Failure(utt.path, f"{type(exc).__name__}: {exc}")
    return features, {"speaker": utt.speaker, "utterance": utt.utterance, "source": utt.path, "size": st.st_size,
                      "mtime_ns": st.st_mtime_ns, "frames": int(features.shape[0]), "seconds": seconds}



def stat_utterances(utterances: Sequence[Utterance]) -> tuple[list[Utterance], list[os.stat_result], list[Failure]]:
    """The utterances whose file can be stat-ed, their os.stat results, and a "cannot open: ..." failure for each
    other one. Through map(os.stat), without a Python frame per file unless one fails: the stat of every file is
    half of a no-op store update at 10^5 files."""
    paths = [u.path for u in utterances]
    try:
        return list(utterances), list(map(os.stat, paths)), []
    except OSError:
        pass
    found, stats, failures = [], [], []
    for utt in utterances:
        try:
            stats.append(os.stat(utt.path))
            found.append(utt)
        except OSError as exc:
            failures.append(Failure(utt.path, f"cannot open: {exc.strerror or exc}"))
    return found, stats, failures



def lock_path(cache_dir: Path, manifest: str) -> Path:
    """The lock a build holds while it writes ``manifest`` (hidden, beside it; filelock removes it on release)."""
    return cache_dir / f".{manifest}.lock"



def _busy(path: Path) -> bool:
    """Whether another process holds the lock at ``path`` (probed without waiting)."""
    try:
        with FileLock(path, timeout=0):
            return False
    except Timeout:
        return True



@contextlib.contextmanager
def build_lock(cache_dir: Path, shard: Optional[tuple[int, int]]) -> Iterator[None]:
    """Hold this build's manifest lock; refuse, in one line, a build that would race another on the same folder.

    Shards of one build run side by side (each its own manifest and lock); a full build or update also
    consolidates the shards and deletes temporaries, so it runs alone.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    own = FileLock(lock_path(cache_dir, manifest_name(shard)), timeout=0)
    try:
        own.acquire()
    except Timeout:
        raise DeepSpeakerError(f"{cache_dir}: another build writing {manifest_name(shard)} is running; wait for it "
                               f"to finish") from None
    try:
        others = [lock_path(cache_dir, MANIFEST)] if shard else sorted(cache_dir.glob(".manifest.shard-*.json.lock"))
        if any(_busy(path) for path in others):
            kind = "a full build or update" if shard else "a shard build (--shard)"
            raise DeepSpeakerError(f"{cache_dir}: {kind} of this cache is running; wait for it to finish")
        yield
    finally:
        own.release()



def is_lock(path: Path) -> bool:
    """Whether a file of the cache folder is one of our build locks."""
    return path.name.startswith(".manifest") and path.name.endswith(".json.lock")



def refuse_links(folder: Path, paths: Iterable[Path]) -> None:
    """Refuse, in one line, a path below ``folder`` that is a symbolic link or lies below one (``features/`` or
    ``shards/`` linked to another cache's): what a link points to is another folder's, and a wipe, an update or an
    augmentation of this cache must never delete or write there. Called before anything is deleted or written."""
    checked: set[Path] = set()
    for path in paths:
        current = folder
        for name in path.relative_to(folder).parts:
            current = current / name
            if current in checked:
                continue
            checked.add(current)
            if current.is_symlink():
                raise DeepSpeakerError(f"{current} is a symbolic link; refusing to delete or write through it (a "
                                       f"cache holds its own files): replace the link by a folder, or use another "
                                       f"cache folder")



def is_training_inputs(path: Path) -> bool:
    """Whether a file is a training-inputs .npz of ours (by its format marker, read without pickle)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "format_version" in data.files and "x_train" in data.files
    except (OSError, ValueError):
        return False



def delete_planned(plan: Sequence[Path]) -> None:
    """Delete a wipe's plan (in its order: manifests or listings last, so a kill midway leaves a folder an update can
    finish), after checking every folder it deletes in: one we could not delete in would stop the wipe halfway."""
    for folder in sorted({path.parent for path in plan}):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DeepSpeakerError(f"{folder}: not writable, so the cache cannot be rebuilt; nothing was deleted")
    for path in plan:
        path.unlink(missing_ok=True)


def check_not_overlapping(audio_dir: Path, cache_dir: Path) -> None:
    """Refuse an audio folder inside the cache folder (a wipe could reach it) or a cache inside the audio folder."""
    audio, cache = audio_dir.resolve(), cache_dir.resolve()
    if audio == cache or cache in audio.parents or audio in cache.parents:
        raise DeepSpeakerError(f"the audio folder {audio_dir} and the cache folder {cache_dir} overlap; put the cache "
                               f"in a folder of its own, outside the audio")



class QuietBar(tqdm):
    """A tqdm bar without tqdm's monitor thread, so that the worker processes can still be forked safely."""

    monitor_interval = 0



def pool_context() -> multiprocessing.context.BaseContext:
    """fork is fastest, but only safe while this process runs a single thread; else spawn."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")



def init_worker(parent: int) -> None:
    """A build worker: one BLAS thread (the build is parallel by processes) and death with its parent.

    Without the parent-death signal, workers of a parent killed with SIGKILL would go on computing.
    """
    threadpool_limits(limits=1, user_api="blas")
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


