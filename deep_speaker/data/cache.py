"""The feature cache: ``CACHE/manifest.json`` plus one ``CACHE/features/<speaker>/<utterance>.npy`` per utterance.

Every file is written to a temporary name in its own folder and renamed, so a killed build leaves
no half file. The manifest is rewritten as work completes; an update after a crash picks up the
complete arrays the manifest missed (an array renamed into place is complete by construction).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import soundfile as sf
from threadpoolctl import threadpool_limits

from ..atomic import read_json_parts, write_json
from ..errors import DeepSpeakerError, Failure
from ..settings import settings_difference
from .audio import AUDIO_EXTENSIONS, MIN_SPEECH_SECONDS, read_audio
from .build import (INPUTS_NAME, MANIFEST, BuildSummary, QuietBar, build_lock, cache_settings, check_not_overlapping,
                    compute_features, delete_planned, in_shard, init_worker, is_lock, is_training_inputs,
                    manifest_name, pool_context, recordable, refuse_links, save_array_atomic, stat_utterances)
from .constants import DEFAULT_TRIM
from .corpus import Utterance, is_plain_id, scan_corpus
from .features import NUM_FILTERS

FORMAT = "deep-speaker-feature-cache"
FORMAT_VERSION = 1
FEATURES_DIR = "features"
SAVE_INTERVAL_S = 10.0  # how often the manifest is rewritten during a build (crashes lose no array anyway)


def is_cache(path: Path) -> bool:
    """Whether a folder holds a per-file cache: a ``manifest*.json`` (one that is not ours is refused in one line when
    the folder is opened or wiped, never taken for something else)."""
    return any(path.glob("manifest*.json"))


def _check_manifest(manifest: object, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or manifest.get("format_version") != FORMAT_VERSION:
        raise DeepSpeakerError(f"{path}: not a version-{FORMAT_VERSION} deep-speaker feature cache; rebuild it")
    check_entries(manifest, path)


def read_manifests(cache_dir: Path) -> Optional[dict]:
    """The cache's manifest merged with any shard manifests; None when there is none."""
    merged: Optional[dict] = None
    for path, manifest in read_json_parts(cache_dir, MANIFEST, "manifest.shard-*.json", what="cache manifest",
                                          check=_check_manifest):
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


def write_manifest(path: Path, base: dict, entries: Iterable[dict], *, failures: Iterable[Failure]) -> None:
    """Write a manifest atomically, entries sorted by ids and failures by path."""
    manifest = {**base,
                "entries": sorted(entries, key=lambda e: (e["speaker"], e["utterance"])),
                "failures": [f.to_dict() for f in sorted(failures)]}
    write_json(path, manifest, indent=1)


class FeatureCache:
    """Read access to a built per-file cache: ids, settings, failures and memory-mapped feature arrays (a
    :class:`~.feature_source.FeatureSource`; :func:`~.sources.open_features` opens either format)."""

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


def array_relpath(speaker: str, utterance: str) -> str:
    """Where an utterance's array lives, relative to the cache folder."""
    return f"{FEATURES_DIR}/{speaker}/{utterance}.npy"


def compute_entry(utt: Utterance, array_path: str, *, trim: str, min_seconds: float) -> dict | Failure:
    """Worker: compute and atomically save one utterance's features; the manifest entry or why it failed."""
    result = compute_features(utt, trim, min_seconds)
    if isinstance(result, Failure):
        return result
    features, entry = result
    # An error writing into the cache (a full disk, a folder made read-only) is no fault of this input and would
    # strike every other one: it stops the build (exit 2, naming the array and the cause), not fails this file.
    save_array_atomic(Path(array_path), features)
    return {**entry, "array": array_relpath(utt.speaker, utt.utterance)}


def is_current(entry: Optional[dict], utt: Utterance, st: os.stat_result, *, cache_dir: Path) -> bool:
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


def cache_wipe_plan(cache_dir: Path) -> list[Path]:
    """What a rebuild of a per-file cache deletes: the arrays our manifests list, the manifests, our training inputs;
    [] for no cache.

    Raises DeepSpeakerError for a non-empty folder that holds no cache of ours (or a manifest*.json that is
    another tool's), so that nothing else is ever deleted.
    """
    if not cache_dir.is_dir():
        return []
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
    inputs = cache_dir / INPUTS_NAME
    if inputs.is_file() and is_training_inputs(inputs):
        plan.append(inputs)
    refuse_links(cache_dir, [*own_folders(cache_dir), *plan, *manifests])
    return plan + manifests


def own_folders(cache_dir: Path) -> list[Path]:
    """The folders a per-file cache writes and deletes in (``features/`` and its speaker folders), for
    :func:`refuse_links`."""
    features = cache_dir / FEATURES_DIR
    if features.is_symlink() or not features.is_dir():
        return [features]
    return [features, *features.iterdir()]


def wipe_cache(cache_dir: Path) -> list[Path]:
    """Delete what :func:`cache_wipe_plan` lists, then the speaker folders it emptied (a folder of either format:
    :func:`~.sources.wipe_features`)."""
    plan = cache_wipe_plan(cache_dir)
    delete_planned(plan)
    features = cache_dir / FEATURES_DIR
    if features.is_dir() and not features.is_symlink():  # speaker folders the wipe emptied; anything else stays
        for folder in sorted(features.iterdir(), reverse=True):
            if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                folder.rmdir()
        if not any(features.iterdir()):
            features.rmdir()
    return plan


def remove_temporaries(features_dir: Path) -> None:
    """Delete temporary files a killed build left behind (only when no other shard may be writing): the names
    atomic_write gives an array's temporary (``.<utterance>.npy.XXXX.tmp``), in the speaker folders."""
    if features_dir.is_dir():
        for tmp in features_dir.glob("*/.*.npy.*.tmp"):
            tmp.unlink(missing_ok=True)


def run_jobs(todo: list[Utterance], cache_dir: Path, *, trim: str, min_seconds: float, workers: int,
             progress: bool) -> Iterator[dict | Failure]:
    """Compute the utterances with ``workers`` processes (in this one for 1), yielding results as they finish."""
    jobs = [(utt, str(cache_dir / array_relpath(utt.speaker, utt.utterance))) for utt in todo]
    if workers <= 1 or len(jobs) <= 1:
        with threadpool_limits(limits=1, user_api="blas"), \
                QuietBar(total=len(jobs), unit="file", desc="features", disable=not progress or not jobs) as bar:
            for job in jobs:
                yield compute_entry(*job, trim=trim, min_seconds=min_seconds)
                bar.update()
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(), initializer=init_worker,
                             initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(compute_entry, *job, trim=trim, min_seconds=min_seconds) for job in jobs]
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


def build_cache(audio_dir: str | os.PathLike, cache_dir: str | os.PathLike, *, layout: str = "auto",
                workers: int = 1, update: bool = False, trim: str = DEFAULT_TRIM,
                min_seconds: float = MIN_SPEECH_SECONDS, shard: Optional[tuple[int, int]] = None,
                progress: bool = True, mic: str = "mic1",
                wipe: Callable[[Path], object] = wipe_cache) -> BuildSummary:
    """Compute the features of every utterance of ``audio_dir`` into ``cache_dir``.

    ``update=False`` wipes the cache first; ``update=True`` keeps what is there and computes only new or
    changed files (refusing a cache built with other settings). Bad files are reported in the summary
    and the manifest's failure list and skipped. ``shard=(i, n)`` computes one n-th of the files into
    its own shard manifest (never wiping), for builds spread over machines sharing the folder. ``wipe`` clears the
    folder for a full build (:func:`~.sources.build_features` passes the wipe of either format).
    """
    started = time.perf_counter()
    audio_dir, cache_dir = Path(audio_dir).resolve(), Path(cache_dir)
    settings = cache_settings(trim)
    check_not_overlapping(audio_dir, cache_dir)
    utterances, rejected, layout = scan_corpus(audio_dir, layout=layout, mic=mic)
    if not utterances and not rejected:
        raise DeepSpeakerError(f"{audio_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder")
    utterances, rejected = recordable(audio_dir, utterances, rejected)
    utterances = [u for u in utterances if in_shard(u, shard)]
    with build_lock(cache_dir, shard):  # two builds of one manifest would interleave their writes
        refuse_links(cache_dir, own_folders(cache_dir))  # before the wipe, and before an update writes there
        if shard is None and not update:
            wipe(cache_dir)
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
            if is_current(old.get(key), utt, st, cache_dir=cache_dir):
                entries[key] = old[key]
                summary.skipped += 1
            elif existing is not None and key not in old and (found := recover_entry(utt, st, cache_dir)) is not None:
                # an array no manifest lists can only come from an interrupted run of this cache's settings
                entries[key] = found
                summary.recovered += 1
            else:
                entries.pop(key, None)
                todo.append(utt)
        write_manifest(manifest_path, base, entries.values(), failures=failures)
        last_save = time.perf_counter()
        try:
            for result in run_jobs(todo, cache_dir, trim=trim, min_seconds=min_seconds, workers=workers,
                                   progress=progress):
                if isinstance(result, Failure):
                    failures.append(result)
                else:
                    entries[(result["speaker"], result["utterance"])] = result
                    summary.cached += 1
                    summary.hours += result["seconds"] / 3600
                if time.perf_counter() - last_save > SAVE_INTERVAL_S:
                    write_manifest(manifest_path, base, entries.values(), failures=failures)
                    last_save = time.perf_counter()
        finally:
            write_manifest(manifest_path, base, entries.values(), failures=failures)
        if shard is None:  # a full build or update consolidates the shards' work into manifest.json
            for path in cache_dir.glob("manifest.shard-*.json"):
                path.unlink()
        summary.failed = sorted(failures)
        summary.total_utterances = len(entries)
        summary.total_hours = sum(e["seconds"] for e in entries.values()) / 3600
        summary.wall_seconds = time.perf_counter() - started
        return summary


def augment_cache(cache_dir: str | os.PathLike, kinds: str | tuple[str, ...], copies: int, *, seed: int = 0,
                  progress: bool = True, babble_speakers: int = 3) -> int:
    """Add `copies` augmented copies of every original utterance of a built per-file cache as extra entries; their
    number.

    Copy k of speaker/utt is ``speaker/utt-aug<k>``, or ``speaker-speed<90|110>/utt-aug<k>`` when speed-perturbed
    (a new pseudo-speaker); its entry names its source under ``augment`` with what was done (see
    deep_speaker.data.augment.augment_signal). Each copy draws from a generator seeded by (seed, crc32 of the
    ids, k), so the copies do not depend on order or on the other utterances' copies. Copies of an earlier run
    are replaced. The babble comes from `babble_speakers` other speakers' original utterances of the cache.
    A sharded store gets the same copies as new shards (:func:`~.store.augment_store`; either format:
    :func:`~.sources.augment_features`).
    """
    # Here, not at the top: the signal effects load scipy.signal (seconds, cold), which only an augmentation needs.
    from .augment import check_recipe, copy_draws, make_copy, speaker_blocks

    kinds, cache_dir = check_recipe(kinds, copies), Path(cache_dir)
    with build_lock(cache_dir, None):
        cache = FeatureCache(cache_dir)
        refuse_links(cache_dir, own_folders(cache_dir))  # the old copies' arrays go, the new ones are written there
        entries = {key: e for key, e in cache._entries.items() if "augment" not in e}
        base = {k: v for k, v in cache.manifest.items() if k not in ("entries", "failures", "augment")}
        # The manifest drops the old copies before their arrays go: a kill in between leaves no entry without
        # its array, and the new copies are listed only once they are all written.
        write_manifest(cache_dir / MANIFEST, base, entries.values(), failures=cache.failures)
        for old in set(cache._entries) - set(entries):
            (cache_dir / cache._entries[old]["array"]).unlink(missing_ok=True)
        originals = sorted(entries)
        blocks = speaker_blocks(originals)
        trim = cache.settings["trim"]
        for speaker, utt in QuietBar(originals, unit="file", desc="augmented copies", disable=not progress):
            source = entries[(speaker, utt)]
            signal = read_audio(source["source"], trim=trim)
            for k in range(copies):
                rng, babble = copy_draws(originals, blocks, speaker=speaker, utt=utt, k=k, seed=seed,
                                         babble_speakers=babble_speakers)
                others = [read_audio(entries[key]["source"], trim=trim) for key in babble]
                features, entry = make_copy(signal, source, k=k, seed=seed, kinds=kinds, others=others, rng=rng)
                key = (entry["speaker"], entry["utterance"])
                save_array_atomic(cache_dir / array_relpath(*key), features)
                entries[key] = {**entry, "array": array_relpath(*key)}
        recipe = {"kinds": list(kinds), "copies": copies, "seed": seed}
        write_manifest(cache_dir / MANIFEST, {**base, "augment": recipe},
                       entries.values(), failures=cache.failures)
    return len(originals) * copies
