"""The feature cache: ``CACHE/manifest.json`` plus one ``CACHE/features/<speaker>/<utterance>.npy`` per utterance.

Every file is written to a temporary name in its own folder and renamed, so a killed build leaves
no half file. The manifest is rewritten as work completes; an update after a crash picks up the
complete arrays the manifest missed (an array renamed into place is complete by construction).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import soundfile as sf
from filelock import FileLock, Timeout
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ..atomic import atomic_write, write_json
from ..errors import DeepSpeakerError, Failure, InputError, printable
from ..settings import settings_difference
from .audio import AUDIO_EXTENSIONS, MIN_SPEECH_SECONDS, check_trim
from .corpus import Utterance, is_plain_id, scan_corpus
from .features import FEATURE_SETTINGS, NUM_FILTERS, extract_features

FORMAT = "deep-speaker-feature-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FEATURES_DIR = "features"
DEFAULT_TRIM = "percentile"
SAVE_INTERVAL_S = 10.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h  # how often the manifest is rewritten during a build (crashes lose no array anyway)


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


def read_json_document(path: Path, what: str, check: Callable[[object, Path], None]) -> dict:
    """One JSON file of ours (a manifest, a listing), parsed and then checked by ``check(document, path)``."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeepSpeakerError(f"{path}: unreadable {what} ({exc})") from None
    check(document, path)
    return document


def read_json_parts(folder: Path, main: str, parts: str, what: str,
                    check: Callable[[object, Path], None]) -> list[tuple[Path, dict]]:
    """The folder's main JSON file (first, when there) and its part files (glob ``parts``, sorted), each read
    by read_json_document: the shape of a cache's manifests and of a store's listings."""
    paths = sorted(folder.glob(parts))
    if (folder / main).is_file():
        paths.insert(0, folder / main)
    return [(path, read_json_document(path, what, check)) for path in paths]


def _check_manifest(manifest: object, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or manifest.get("format_version") != FORMAT_VERSION:
        raise DeepSpeakerError(f"{path}: not a version-{FORMAT_VERSION} deep-speaker feature cache; rebuild it")
    check_entries(manifest, path)


def read_manifests(cache_dir: Path) -> Optional[dict]:
    """The cache's manifest merged with any shard manifests; None when there is none."""
    merged: Optional[dict] = None
    for path, manifest in read_json_parts(cache_dir, MANIFEST, "manifest.shard-*.json", "cache manifest",
                                          _check_manifest):
        if merged is None:
            merged = manifest
            continue
        if manifest["settings"] != merged["settings"]:
            raise DeepSpeakerError(f"{path}: shard built with other feature settings "
                                   f"({settings_difference(manifest['settings'], merged['settings'])})")
        entries = {(e["speaker"], e["utterance"]): e for e in merged["entries"] + manifest["entries"]}
        merged["entries"] = list(entries.values())
        merged["failures"] = merged["failures"] + manifest["failures"]
    if merged is not None:
        cached = {e["source"] for e in merged["entries"]}
        merged["failures"] = [f for f in {f["path"]: f for f in merged["failures"]}.values() if f["path"] not in cached]
    return merged


def check_entries(manifest: dict, path: Path) -> None:
    """Refuse a manifest whose entries are malformed or name arrays outside ``features/`` (``../x.npy``, ``/etc``)."""
    entries, failures = manifest.get("entries"), manifest.get("failures")
    if not isinstance(entries, list) or not isinstance(failures, list) or not isinstance(manifest.get("settings"), dict):
        raise DeepSpeakerError(f"{path}: corrupt cache manifest (entries, failures or settings missing)")
    for number, entry in enumerate(entries):
        try:
            speaker, utterance, array = entry["speaker"], entry["utterance"], entry["array"]
            int(entry["frames"]), float(entry["seconds"])
        except (TypeError, KeyError, ValueError):
            raise DeepSpeakerError(f"{path}: corrupt cache manifest (entry {number} lacks speaker, utterance, "
                                   f"array, frames or seconds)") from None
        # Arrays live exactly where the build writes them: ids are plain names, so nothing escapes the folder.
        if not (is_plain_id(speaker) and is_plain_id(utterance)) or array != array_relpath(speaker, utterance):
            raise DeepSpeakerError(f"{path}: entry {number} ({speaker!r}/{utterance!r} -> {array!r}) points outside "
                                   f"{FEATURES_DIR}/<speaker>/<utterance>.npy; refusing a tampered manifest")
    if not all(isinstance(f, dict) and {"path", "reason"} <= set(f) for f in failures):
        raise DeepSpeakerError(f"{path}: corrupt cache manifest (a failure lacks path or reason)")


def write_manifest(path: Path, base: dict, entries: Iterable[dict], failures: Iterable[Failure]) -> None:
    """Write a manifest atomically, entries sorted by ids and failures by path."""
    manifest = {**base,
                "entries": sorted(entries, key=lambda e: (e["speaker"], e["utterance"])),
                "failures": [f.to_dict() for f in sorted(failures)]}
    write_json(path, manifest, indent=1)


class FeatureCache:
    """Read access to a built cache: ids, settings, failures and memory-mapped feature arrays."""

    def __new__(cls, cache_dir: str | os.PathLike):
        # One entry point for both formats: FeatureCache(path) of a sharded store opens it as a FeatureStore
        # (a subclass with this interface), so every caller reads either format unchanged.
        if cls is FeatureCache:
            from .store import FeatureStore, is_store

            if is_store(Path(cache_dir)):
                return super().__new__(FeatureStore)
        return super().__new__(cls)

    def __init__(self, cache_dir: str | os.PathLike):
        self.path = Path(cache_dir)
        manifest = read_manifests(self.path)
        if manifest is None:
            raise DeepSpeakerError(f"{self.path}: no feature cache here (manifest.json missing); build one with "
                                   f"'deep-speaker cache build AUDIO_DIR {self.path}'")
        self.manifest = manifest
        self._entries = {(e["speaker"], e["utterance"]): e for e in manifest["entries"]}
        self._by_speaker: dict[str, list[tuple[str, str]]] = {}  # per-speaker lists: big corpora have 1000s
        for key in sorted(self._entries):
            self._by_speaker.setdefault(key[0], []).append(key)

    @property
    def settings(self) -> dict:
        """The feature settings (``FEATURE_SETTINGS`` + trim) the arrays were computed with."""
        return self.manifest["settings"]

    @property
    def failures(self) -> list[Failure]:
        """Files that could not be cached, and why."""
        return [Failure.from_dict(f) for f in self.manifest["failures"]]

    @property
    def speakers(self) -> list[str]:
        """Speaker ids, sorted."""
        return sorted(self._by_speaker)

    @property
    def hours(self) -> float:
        """Hours of source audio in the cache."""
        return sum(e["seconds"] for e in self._entries.values()) / 3600

    def utterances(self, speaker: Optional[str] = None) -> list[tuple[str, str]]:
        """(speaker, utterance) pairs, sorted; only those of ``speaker`` when given."""
        if speaker is None:
            return [key for spk in sorted(self._by_speaker) for key in self._by_speaker[spk]]
        return list(self._by_speaker.get(speaker, []))

    def entry(self, speaker: str, utterance: str) -> dict:
        """The manifest entry of an utterance (source, size, mtime_ns, frames, seconds, array)."""
        try:
            return self._entries[(speaker, utterance)]
        except KeyError:
            raise DeepSpeakerError(f"{self.path}: no utterance {speaker}/{utterance} in the cache") from None

    def load(self, speaker: str, utterance: str) -> np.ndarray:
        """The features ``[T, 64]`` float32 of an utterance, memory-mapped read-only."""
        path = self.path / self.entry(speaker, utterance)["array"]
        try:
            features = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DeepSpeakerError(f"{path}: unreadable feature array ({str(exc).splitlines()[0]}); "
                                   f"run 'deep-speaker cache update' to recompute it") from None
        if features.dtype != np.float32 or features.ndim != 2 or features.shape[1] != NUM_FILTERS:
            raise DeepSpeakerError(f"{path}: not a [T, {NUM_FILTERS}] float32 feature array "
                                   f"({features.dtype}, shape {features.shape})")
        return features

    def __len__(self) -> int:
        return len(self._entries)


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


def array_relpath(speaker: str, utterance: str) -> str:
    """Where an utterance's array lives, relative to the cache folder."""
    return f"{FEATURES_DIR}/{speaker}/{utterance}.npy"


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


def compute_entry(utt: Utterance, array_path: str, trim: str, min_seconds: float) -> dict | Failure:
    """Worker: compute and atomically save one utterance's features; the manifest entry or why it failed."""
    result = compute_features(utt, trim, min_seconds)
    if isinstance(result, Failure):
        return result
    features, entry = result
    # An error writing into the cache (a full disk, a folder made read-only) is no fault of this input and would
    # strike every other one: it stops the build (exit 2, naming the array and the cause), not fails this file.
    save_array_atomic(Path(array_path), features)
    return {**entry, "array": array_relpath(utt.speaker, utt.utterance)}


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


def is_current(entry: Optional[dict], utt: Utterance, st: os.stat_result, cache_dir: Path) -> bool:
    """Whether a manifest entry still describes this source file (same path, size, mtime) and its array exists."""
    return (entry is not None and entry["source"] == utt.path and entry["size"] == st.st_size
            and entry["mtime_ns"] == st.st_mtime_ns and (cache_dir / entry["array"]).is_file())


def recover_entry(utt: Utterance, st: os.stat_result, cache_dir: Path) -> Optional[dict]:
    """The entry of a complete array left by an interrupted run for this source, or None if it must be redone."""
    rel = array_relpath(utt.speaker, utt.utterance)
    path = cache_dir / rel
    try:
        if path.stat().st_mtime_ns < st.st_mtime_ns:  # computed from an older version of the file
            return None
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        seconds = sf.info(utt.path).duration
    except Exception:  # missing, unreadable or foreign: compute it again
        return None
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[1] != NUM_FILTERS:
        return None
    return {"speaker": utt.speaker, "utterance": utt.utterance, "source": utt.path, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "frames": int(array.shape[0]), "seconds": seconds, "array": rel}


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


def wipe_plan(cache_dir: Path) -> list[Path]:
    """What a rebuild deletes: the arrays our manifests list, the manifests, our training inputs; [] for no cache.

    Raises DeepSpeakerError for a non-empty folder that holds no cache of ours (or a manifest*.json that is
    another tool's), so that nothing else is ever deleted.
    """
    if not cache_dir.is_dir():
        return []
    from .store import is_store, store_wipe_plan

    if is_store(cache_dir):
        return store_wipe_plan(cache_dir)
    manifests = sorted(cache_dir.glob("manifest*.json"))
    if not manifests:
        if any(not is_lock(p) for p in cache_dir.iterdir()):
            raise DeepSpeakerError(f"{cache_dir} is not empty and holds no feature cache (no manifest.json); refusing "
                                   f"to wipe it (choose an empty or new folder)")
        return []
    try:
        manifest = read_manifests(cache_dir)
    except DeepSpeakerError as exc:
        raise DeepSpeakerError(f"refusing to wipe {cache_dir}: {exc}") from None
    strays = [p.name for p in manifests if p.name != MANIFEST and not p.name.startswith("manifest.shard-")]
    if strays:
        raise DeepSpeakerError(f"{cache_dir} holds {', '.join(strays)}, not written by deep-speaker; refusing to wipe it")
    plan = [cache_dir / e["array"] for e in manifest["entries"] if (cache_dir / e["array"]).is_file()]
    inputs = cache_dir / "full_inputs.npz"
    if inputs.is_file() and is_training_inputs(inputs):
        plan.append(inputs)
    refuse_links(cache_dir, [*own_folders(cache_dir), *plan, *manifests])
    return plan + manifests


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


def own_folders(cache_dir: Path) -> list[Path]:
    """The folders a per-file cache writes and deletes in (``features/`` and its speaker folders), for
    :func:`refuse_links`."""
    features = cache_dir / FEATURES_DIR
    if features.is_symlink() or not features.is_dir():
        return [features]
    return [features, *features.iterdir()]


def is_training_inputs(path: Path) -> bool:
    """Whether a file is a training-inputs .npz of ours (by its format marker, read without pickle)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "format_version" in data.files and "x_train" in data.files
    except (OSError, ValueError):
        return False


def wipe_cache(cache_dir: Path) -> list[Path]:
    """Delete what :func:`wipe_plan` lists (manifests or listings last, so a kill midway leaves a cache update can
    finish), for either format."""
    plan = wipe_plan(cache_dir)
    # A folder we could not delete in would stop the wipe halfway: found out before the first file goes.
    for folder in sorted({path.parent for path in plan}):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DeepSpeakerError(f"{folder}: not writable, so the cache cannot be rebuilt; nothing was deleted")
    for path in plan:
        path.unlink(missing_ok=True)
    features = cache_dir / FEATURES_DIR
    if features.is_dir() and not features.is_symlink():  # speaker folders the wipe emptied; anything else stays
        for folder in sorted(features.iterdir(), reverse=True):
            if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                folder.rmdir()
        if not any(features.iterdir()):
            features.rmdir()
    from .store import SHARDS_DIR

    shards = cache_dir / SHARDS_DIR  # a sharded store's folder, once the wipe emptied it
    if shards.is_dir() and not any(shards.iterdir()):
        shards.rmdir()
    return plan


def check_not_overlapping(audio_dir: Path, cache_dir: Path) -> None:
    """Refuse an audio folder inside the cache folder (a wipe could reach it) or a cache inside the audio folder."""
    audio, cache = audio_dir.resolve(), cache_dir.resolve()
    if audio == cache or cache in audio.parents or audio in cache.parents:
        raise DeepSpeakerError(f"the audio folder {audio_dir} and the cache folder {cache_dir} overlap; put the cache "
                               f"in a folder of its own, outside the audio")


def remove_temporaries(features_dir: Path) -> None:
    """Delete temporary files a killed build left behind (only when no other shard may be writing): the names
    atomic_write gives an array's temporary (``.<utterance>.npy.XXXX.tmp``), in the speaker folders."""
    if features_dir.is_dir():
        for tmp in features_dir.glob("*/.*.npy.*.tmp"):
            tmp.unlink(missing_ok=True)


class QuietBar(tqdm):
    """A tqdm bar without tqdm's monitor thread, so that the worker processes can still be forked safely."""

    monitor_interval = 0


def _pool_context() -> multiprocessing.context.BaseContext:
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


def run_jobs(todo: list[Utterance], cache_dir: Path, trim: str, min_seconds: float, workers: int,
             progress: bool) -> Iterator[dict | Failure]:
    """Compute the utterances with ``workers`` processes (in this one for 1), yielding results as they finish."""
    jobs = [(utt, str(cache_dir / array_relpath(utt.speaker, utt.utterance)), trim, min_seconds) for utt in todo]
    if workers <= 1 or len(jobs) <= 1:
        with threadpool_limits(limits=1, user_api="blas"), \
                QuietBar(total=len(jobs), unit="file", desc="features", disable=not progress or not jobs) as bar:
            for job in jobs:
                yield compute_entry(*job)
                bar.update()
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(), initializer=init_worker,
                             initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(compute_entry, *job) for job in jobs]
        try:
            with QuietBar(total=len(jobs), unit="file", desc=f"features ({workers} workers)",
                          disable=not progress) as bar:
                for future in as_completed(futures):
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        raise DeepSpeakerError("a worker process of the cache build died (killed, or out of memory?); "
                                               "the files done so far are kept: run 'deep-speaker cache update' to "
                                               "finish") from None
                    yield result
                    bar.update()
        finally:  # interrupted: do not start the files still queued
            for future in futures:
                future.cancel()


def build_cache(audio_dir: str | os.PathLike, cache_dir: str | os.PathLike, layout: str = "auto",
                workers: int = 1, update: bool = False, trim: str = DEFAULT_TRIM,
                min_seconds: float = MIN_SPEECH_SECONDS, shard: Optional[tuple[int, int]] = None,
                progress: bool = True, mic: str = "mic1") -> BuildSummary:
    """Compute the features of every utterance of ``audio_dir`` into ``cache_dir``.

    ``update=False`` wipes the cache first; ``update=True`` keeps what is there and computes only new or
    changed files (refusing a cache built with other settings). Bad files are reported in the summary
    and the manifest's failure list and skipped. ``shard=(i, n)`` computes one n-th of the files into
    its own shard manifest (never wiping), for builds spread over machines sharing the folder.
    """
    started = time.perf_counter()
    audio_dir, cache_dir = Path(audio_dir).resolve(), Path(cache_dir)
    settings = cache_settings(trim)
    check_not_overlapping(audio_dir, cache_dir)
    utterances, rejected, layout = scan_corpus(audio_dir, layout, mic)
    if not utterances and not rejected:
        raise DeepSpeakerError(f"{audio_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder")
    utterances, rejected = recordable(audio_dir, utterances, rejected)
    utterances = [u for u in utterances if in_shard(u, shard)]
    with build_lock(cache_dir, shard):  # two builds of one manifest would interleave their writes
        refuse_links(cache_dir, own_folders(cache_dir))  # before the wipe, and before an update writes there
        if shard is None and not update:
            wipe_cache(cache_dir)
        existing = read_manifests(cache_dir) if cache_dir.exists() else None
        if existing is not None and existing["settings"] != settings:
            raise DeepSpeakerError(f"{cache_dir} was built with other feature settings "
                                   f"({settings_difference(existing['settings'], settings)}); rebuild it with "
                                   f"'deep-speaker cache build' or use another folder")
        (cache_dir / FEATURES_DIR).mkdir(parents=True, exist_ok=True)
        if shard is None:
            remove_temporaries(cache_dir / FEATURES_DIR)
        manifest_path = cache_dir / manifest_name(shard)
        base = {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings,
                "audio_dir": str(audio_dir), "layout": layout, "min_seconds": min_seconds}
        old = {(e["speaker"], e["utterance"]): e for e in existing["entries"]} if existing else {}
        # A sharded build records only its own files; a full one keeps entries whose source has gone.
        entries = {} if shard else dict(old)
        if not shard and existing is not None and "augment" in existing:
            base["augment"] = existing["augment"]  # the copies kept above stay listed with their recipe
        summary = BuildSummary(cache_dir=str(cache_dir), layout=layout)
        failures: list[Failure] = list(rejected)
        todo: list[Utterance] = []
        found, stats, unopened = stat_utterances(utterances)
        failures += unopened
        for utt, st in zip(found, stats):
            key = (utt.speaker, utt.utterance)
            if is_current(old.get(key), utt, st, cache_dir):
                entries[key] = old[key]
                summary.skipped += 1
            elif existing is not None and key not in old and (found := recover_entry(utt, st, cache_dir)) is not None:
                # an array no manifest lists can only come from an interrupted run of this cache's settings
                entries[key] = found
                summary.recovered += 1
            else:
                entries.pop(key, None)
                todo.append(utt)
        write_manifest(manifest_path, base, entries.values(), failures)
        last_save = time.perf_counter()
        try:
            for result in run_jobs(todo, cache_dir, trim, min_seconds, workers, progress):
                if isinstance(result, Failure):
                    failures.append(result)
                else:
                    entries[(result["speaker"], result["utterance"])] = result
                    summary.cached += 1
                    summary.hours += result["seconds"] / 3600
                if time.perf_counter() - last_save > SAVE_INTERVAL_S:
                    write_manifest(manifest_path, base, entries.values(), failures)
                    last_save = time.perf_counter()
        finally:
            write_manifest(manifest_path, base, entries.values(), failures)
        if shard is None:  # a full build or update consolidates the shards' work into manifest.json
            for path in cache_dir.glob("manifest.shard-*.json"):
                path.unlink()
        summary.failed = sorted(failures)
        summary.total_utterances = len(entries)
        summary.total_hours = sum(e["seconds"] for e in entries.values()) / 3600
        summary.wall_seconds = time.perf_counter() - started
        return summary


def copy_generator(speaker: str, utt: str, k: int, seed: int, others: int,
                   babble_speakers: int) -> tuple[np.random.Generator, list[int]]:
    """Copy k of speaker/utt: its generator, seeded by (seed, crc32 of the ids, k), and the positions among the
    ``others`` original utterances of other speakers of those its babble mixes, drawn from it first."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{speaker}/{utt}".encode()), k])
    picks = rng.choice(others, size=min(babble_speakers, others), replace=False).tolist() if others else []
    return rng, picks


def copy_draws(originals: Sequence[tuple[str, str]], blocks: dict[str, tuple[int, int]], speaker: str, utt: str,
               k: int, seed: int, babble_speakers: int) -> tuple[np.random.Generator, list[tuple[str, str]]]:
    """:func:`copy_generator` with the babble's utterance ids (``originals`` sorted, ``blocks[speaker]`` its rows;
    the pool is every original but the speaker's own, in order)."""
    a, b = blocks[speaker]
    rng, picks = copy_generator(speaker, utt, k, seed, len(originals) - (b - a), babble_speakers)
    return rng, [originals[i if i < a else i + b - a] for i in picks]


def speaker_blocks(originals: Sequence[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """Each speaker's rows [first, last + 1) in sorted (speaker, utterance) ids."""
    blocks: dict[str, tuple[int, int]] = {}
    for i, (speaker, _) in enumerate(originals):
        blocks[speaker] = (blocks.get(speaker, (i, i))[0], i + 1)
    return blocks


def make_copy(signal: np.ndarray, source: dict, k: int, seed: int, kinds: tuple[str, ...],
              others: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Augmented copy k of a source utterance's signal: its features and entry (ids ``utt-aug<k>``, under a
    ``speaker-speed<90|110>`` pseudo-speaker when speed-perturbed; ``augment`` names the source and what was done)."""
    from .augment import augment_signal
    from .features import fbank_features

    augmented, done = augment_signal(signal, kinds, others, rng)
    speaker, utt = source["speaker"], source["utterance"]
    new_speaker = f"{speaker}-speed{round(100 * done['speed'])}" if "speed" in done else speaker
    features = fbank_features(augmented)
    return features, {**source, "speaker": new_speaker, "utterance": f"{utt}-aug{k}",
                      "frames": int(features.shape[0]), "seconds": source["seconds"] / done.get("speed", 1.0),
                      "augment": {"speaker": speaker, "utterance": utt, "copy": k, "seed": seed, **done}}


def augment_cache(cache_dir: str | os.PathLike, kinds: str | tuple[str, ...], copies: int, seed: int = 0,
                  progress: bool = True, babble_speakers: int = 3, workers: int = 1,
                  scheduler: Optional[str] = None, shard_size: Optional[int] = None) -> int:
    """Add `copies` augmented copies of every original utterance of a built cache as extra entries; their number.

    Copy k of speaker/utt is ``speaker/utt-aug<k>``, or ``speaker-speed<90|110>/utt-aug<k>`` when speed-perturbed
    (a new pseudo-speaker); its entry names its source under ``augment`` with what was done (see
    deep_speaker.data.augment.augment_signal). Each copy draws from a generator seeded by (seed, crc32 of the
    ids, k), so the copies do not depend on order or on the other utterances' copies. Copies of an earlier run
    are replaced. The babble comes from `babble_speakers` other speakers' original utterances of the cache.
    A sharded store gets its copies as new shards (:func:`~.store.augment_store`, with ``workers`` local
    processes or the Dask cluster at ``scheduler``, ``shard_size`` copies a shard); the same copies either way.
    """
    from .audio import read_audio
    from .augment import check_augmentations
    from .store import augment_store, is_store

    kinds, cache_dir = check_augmentations(kinds), Path(cache_dir)
    if copies < 1:
        raise DeepSpeakerError(f"--copies must be at least 1, got {copies}")
    if is_store(cache_dir):
        return augment_store(cache_dir, kinds, copies, seed, progress, babble_speakers, workers, scheduler,
                             **({} if shard_size is None else {"shard_size": shard_size}))
    with build_lock(cache_dir, None):
        cache = FeatureCache(cache_dir)
        refuse_links(cache_dir, own_folders(cache_dir))  # the old copies' arrays go, the new ones are written there
        entries = {key: e for key, e in cache._entries.items() if "augment" not in e}
        base = {k: v for k, v in cache.manifest.items() if k not in ("entries", "failures", "augment")}
        # The manifest drops the old copies before their arrays go: a kill in between leaves no entry without
        # its array, and the new copies are listed only once they are all written.
        write_manifest(cache_dir / MANIFEST, base, entries.values(), cache.failures)
        for old in set(cache._entries) - set(entries):
            (cache_dir / cache._entries[old]["array"]).unlink(missing_ok=True)
        originals = sorted(entries)
        blocks = speaker_blocks(originals)
        trim = cache.settings["trim"]
        for speaker, utt in QuietBar(originals, unit="file", desc="augmented copies", disable=not progress):
            source = entries[(speaker, utt)]
            signal = read_audio(source["source"], trim=trim)
            for k in range(copies):
                rng, babble = copy_draws(originals, blocks, speaker, utt, k, seed, babble_speakers)
                others = [read_audio(entries[key]["source"], trim=trim) for key in babble]
                features, entry = make_copy(signal, source, k, seed, kinds, others, rng)
                key = (entry["speaker"], entry["utterance"])
                save_array_atomic(cache_dir / array_relpath(*key), features)
                entries[key] = {**entry, "array": array_relpath(*key)}
        recipe = {"kinds": list(kinds), "copies": copies, "seed": seed}
        write_manifest(cache_dir / MANIFEST, {**base, "augment": recipe},
                       entries.values(), cache.failures)
    return len(originals) * copies
