"""The sharded feature store: the features of about 1,000 utterances per shard, for corpora of millions of files.

A store folder holds (format in docs/STORE.md):

- ``shards/<name>.npy``: the frames of the shard's utterances one after the other, ``[sum of T, 64]`` float32
  (or float16), a plain ``.npy`` that ``np.load(mmap_mode="r")`` maps, so any utterance is one O(1) slice;
- ``shards/<name>.arrow``: its index, an Arrow IPC file (Feather v2): one row per utterance with speaker,
  utterance, offset and frames into the ``.npy``, seconds, source, size and mtime_ns (what an update compares)
  and augment (JSON, null for an original); the schema metadata repeats the store's settings and dtype;
- ``store.json``: the store's settings, dtype and failures and the list of its shards (one record per shard,
  small), or ``store.shard-I-of-N.json`` for a part of a distributed build (``--shard I/N``), merged on read.

A shard's ``.npy`` and then its ``.arrow`` are renamed into place whole, and a shard is read only once the
listing names it, so a killed build loses no finished shard and nothing half-written is read; an update adopts
the complete shards a killed build left unlisted. Files go into shards by blocks of the sorted list of the files
to compute, so an update writes new shards only, for new or changed files; finished shards are never rewritten,
and an utterance in several shards is read from the newest (the highest generation: one per build or update).

Shard builds run in this process, in a local process pool (``workers``) or as one task per shard on a Dask
cluster (``scheduler="tcp://host:port"``; the workers must see the store folder): a task that dies with its
worker is run again by Dask on another, and rewrites the same shard under the same name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits

from ..atomic import atomic_write, read_json_document, read_json_parts, write_json
from ..errors import DeepSpeakerError, Failure, InputError
from ..settings import check_choice, settings_difference
from .audio import AUDIO_EXTENSIONS, MIN_SPEECH_SECONDS, read_audio
from .build import (INPUTS_NAME, BuildSummary, QuietBar, build_lock, cache_settings, check_not_overlapping,
                    compute_features, delete_planned, in_shard, init_worker, is_training_inputs, pool_context,
                    recordable, refuse_links, save_array_atomic, stat_utterances)
from .cluster import check_scheduler, connect
from .constants import DEFAULT_SHARD_SIZE, DEFAULT_TRIM, check_shard_size
from .corpus import Utterance, gc_paused, id_failure, is_plain_id, plain_ids, scan_corpus
from .features import NUM_FILTERS

if TYPE_CHECKING:
    from .feature_source import FeatureSource

log = logging.getLogger(__name__)

STORE_FORMAT = "deep-speaker-feature-store"
STORE_VERSION = 1
LISTING = "store.json"
SCAN_RECORD = "corpus-scan.arrow"  # the last update's corpus scan (corpus.scan_corpus), reused while no folder changed
SHARDS_DIR = "shards"
DTYPES = ("float32", "float16")
OPEN_SHARDS = 128  # memory maps kept open: each holds a file descriptor
_SHARD_NAME = re.compile(r"g[0-9]{6}-[0-9a-f]{16}")
_SHARD_TEMPORARY = re.compile(r"\.g[0-9]{6}-[0-9a-f]{16}\.(npy|arrow)\..+\.tmp")  # atomic_write's, of a shard file
# The shards an augmentation is writing, named in the listing before the first is written and not listed as shards
# until all are (with their recipe): a killed run leaves no copy listed without its recipe, and the next
# augmentation or rebuild deletes these by name (never files the listing does not name).
PENDING = "pending_copies"
INDEX_SCHEMA = pa.schema([("speaker", pa.string()), ("utterance", pa.string()), ("offset", pa.int64()),
                          ("frames", pa.int64()), ("seconds", pa.float64()), ("source", pa.string()),
                          ("size", pa.int64()), ("mtime_ns", pa.int64()), ("augment", pa.string())])
Item = tuple[np.ndarray, dict]  # an utterance's features and its entry (compute_features)
SHARD_FILES = ("npy", "arrow")  # the keys of a listing record's "files" (shard_files' order)
_FILE_FIELDS = {"size": int, "blake2b": str, "mtime_ns": int, "ctime_ns": int}  # what a record keeps of each


def listing_name(shard: Optional[tuple[int, int]]) -> str:
    """``store.json``, or ``store.shard-I-of-N.json`` for one part of a distributed build."""
    return LISTING if shard is None else f"store.shard-{shard[0]}-of-{shard[1]}.json"


def is_store(path: Path) -> bool:
    """Whether a folder holds a sharded store (a listing of ours)."""
    return (path / LISTING).is_file() or any(path.glob("store.shard-*-of-*.json"))


def shard_files(store_dir: Path, name: str) -> tuple[Path, Path]:
    """The frames (.npy) and the index (.arrow) of a shard."""
    return store_dir / SHARDS_DIR / f"{name}.npy", store_dir / SHARDS_DIR / f"{name}.arrow"


def read_listings(store_dir: Path) -> Optional[dict]:
    """The store's listing merged with any part listings (shards by name, ordered by generation); None if none."""
    merged: Optional[dict] = None
    first = None
    for path, listing in read_json_parts(store_dir, LISTING, "store.shard-*-of-*.json", what="store listing",
                                         check=_check_listing):
        if merged is None:
            merged, first = listing, path
            continue
        for key in ("settings", "dtype"):
            if listing[key] != merged[key]:
                raise DeepSpeakerError(f"{path}: part built with another {key} than {first.name} "
                                       f"({settings_difference({key: listing[key]}, {key: merged[key]})})")
        merged["shards"] = list({s["name"]: s for s in merged["shards"] + listing["shards"]}.values())
        merged["failures"] = list({f["path"]: f for f in merged["failures"] + listing["failures"]}.values())
        merged["generation"] = max(merged["generation"], listing["generation"])
    if merged is not None:
        merged["shards"].sort(key=lambda s: (s["generation"], s["name"]))
    return merged


def read_listings_file(path: Path) -> list[dict]:
    """The shard records of one listing file ([] when it does not exist)."""
    return read_json_document(path, "store listing", _check_listing)["shards"] if path.is_file() else []


def _check_listing(listing: object, path: Path) -> None:
    """Refuse a listing that is not ours, or whose shard names could point outside ``shards/``."""
    if not isinstance(listing, dict) or listing.get("format") != STORE_FORMAT \
            or listing.get("format_version") != STORE_VERSION:
        raise DeepSpeakerError(f"{path}: not a version-{STORE_VERSION} deep-speaker feature store; rebuild it")
    try:
        shards, failures = listing["shards"], listing["failures"]
        ok = (isinstance(listing["settings"], dict) and listing["dtype"] in DTYPES
              and isinstance(listing["generation"], int) and isinstance(shards, list) and isinstance(failures, list)
              and all(isinstance(s, dict) and isinstance(s.get("name"), str) and _SHARD_NAME.fullmatch(s["name"])
                      and isinstance(s.get("generation"), int) and _record_fields_ok(s) for s in shards)
              and all(isinstance(f, dict) and {"path", "reason"} <= set(f) for f in failures))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise DeepSpeakerError(f"{path}: corrupt or tampered store listing (settings, dtype, generation, shards or "
                               f"failures malformed)")


def _record_fields_ok(record: dict) -> bool:
    """Whether a shard record's counts and file records (optional: listings written before them lack them) are
    what write_shard writes. Plain loops: every update reads the listing of 10^3 shards three times."""
    for key in ("utterances", "frames"):
        value = record.get(key, 0)
        if type(value) is not int or not 0 <= value < 2**63:
            return False
    files = record.get("files", {})
    if type(files) is not dict:
        return False
    for kind, fields in files.items():
        if kind not in SHARD_FILES or type(fields) is not dict:
            return False
        for key, kind_of in _FILE_FIELDS.items():
            if type(fields.get(key)) is not kind_of:
                return False
    return True


def _read_index(store_dir: Path, name: str) -> pa.Table:
    """A shard's index table (memory-mapped), checked against the schema and the shard's name (so the index of
    another shard, swapped in, is refused)."""
    path = shard_files(store_dir, name)[1]
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowException) as exc:
        raise DeepSpeakerError(f"{path}: unreadable shard index ({str(exc).splitlines()[0]}); run "
                               f"'deep-speaker cache update' to rebuild it") from None
    if not table.schema.remove_metadata().equals(INDEX_SCHEMA):
        raise DeepSpeakerError(f"{path}: not a deep-speaker shard index (columns {table.schema.names})")
    try:
        written_as = _index_meta(table).get("name", name)
    except (ValueError, AttributeError):
        written_as = None
    if written_as != name:
        raise DeepSpeakerError(f"{path}: the index of another shard ({written_as!r}); run 'deep-speaker cache "
                               f"update' to rebuild it")
    return table


def _index_meta(table: pa.Table) -> dict:
    return json.loads((table.schema.metadata or {}).get(b"deep_speaker", b"{}"))


def load_index(store_dir: Path, shards: Sequence[dict], damaged: Optional[dict[str, str]] = None) -> pa.Table:
    """The entries of the listed shards, the newest of each (speaker, utterance), sorted by ids; plus a ``shard``
    column (position in ``shards``). Every row is checked (plain ids, a non-negative offset, frames within the
    frame count its listing records): a shard with a row that is not is refused in one line naming it, or, given
    ``damaged``, left out and named there with why (an update computes its utterances again)."""
    tables = []
    for number, record in enumerate(shards):
        try:
            table = _read_index(store_dir, record["name"]).replace_schema_metadata(None)
        except DeepSpeakerError as exc:
            if damaged is None:
                raise
            damaged[record["name"]] = str(exc)
            continue
        tables.append(table.append_column("shard", pa.array(np.full(len(table), number, np.int32))))
    table = pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table().append_column(
        "shard", pa.array([], pa.int32()))
    table = _valid_rows(store_dir, shards, table, damaged)
    # Newest first within equal ids (shards are listed by generation), then keep the first row of each id.
    order = pc.sort_indices(table, sort_keys=[("speaker", "ascending"), ("utterance", "ascending"),
                                              ("shard", "descending")])
    table = table.take(order)
    if len(table) > 1:
        spk, utt = table["speaker"], table["utterance"]
        same = pc.and_(pc.equal(spk.slice(1), spk.slice(0, len(table) - 1)),
                       pc.equal(utt.slice(1), utt.slice(0, len(table) - 1)))
        table = table.filter(pa.concat_arrays([pa.array([True]), pc.invert(same).combine_chunks()]))
    return table.combine_chunks()


def _valid_rows(store_dir: Path, shards: Sequence[dict], table: pa.Table,
                damaged: Optional[dict[str, str]]) -> pa.Table:
    """``table`` (load_index's rows, before sorting), refusing a shard with a row that is not as write_shard writes
    it: ids are plain names (they name files wherever features are exported), the offset is not negative and the
    frames end within the frame count the listing records (which the reader compares with the array), so a row
    never reads another utterance's frames or past the array. Column-wise: the index of 10^6 entries is read so."""
    if not len(table):
        return table
    shard, offset, frames = (table[c].to_numpy() for c in ("shard", "offset", "frames"))
    # Records written before the listing kept frame counts bound rows by nothing but the reader's map (load()).
    total = np.array([s.get("frames", np.iinfo(np.int64).max) for s in shards], np.int64)[shard]
    checks = {"holds a speaker id that is not a plain name": plain_ids(table["speaker"], repeated=True),
              "holds an utterance id that is not a plain name": plain_ids(table["utterance"]),
              "holds a negative offset or frame count": (offset >= 0) & (frames >= 0),
              "holds frames past the end of its array": frames <= total - np.maximum(offset, 0)}
    bad = np.zeros(len(table), bool)
    for what, ok in checks.items():
        if ok.all():
            continue
        for number in np.unique(shard[~ok & ~bad]).tolist():
            row = int(np.flatnonzero(~ok & (shard == number))[0])
            path = shard_files(store_dir, shards[number]["name"])[1]
            problem = (f"{path}: row {table['speaker'][row].as_py()!r}/{table['utterance'][row].as_py()!r} {what}; "
                       f"refusing a damaged or tampered shard index; run 'deep-speaker cache update' to rebuild it")
            if damaged is None:
                raise DeepSpeakerError(problem)
            damaged[shards[number]["name"]] = problem
            bad |= shard == number
    return table.filter(pa.array(~bad)) if bad.any() else table


class FeatureStore:
    """Read access to a sharded store (a :class:`~.feature_source.FeatureSource`, as the per-file cache); the index is
    held as columns (numpy and Arrow arrays, no object per entry), and ``load`` is a slice of the shard's memory map."""

    def __init__(self, store_dir: str | os.PathLike):
        self.path = Path(store_dir)
        listing = read_listings(self.path)
        if listing is None:
            raise DeepSpeakerError(f"{self.path}: no feature store here ({LISTING} missing); build one with "
                                   f"'deep-speaker cache build AUDIO_DIR {self.path} --format sharded'")
        table = load_index(self.path, listing["shards"])
        self.manifest = {k: v for k, v in listing.items() if k not in ("shards", "failures")}
        self._listing = listing
        self._shard_names = [s["name"] for s in listing["shards"]]
        # Rows are sorted by ids, so the dictionary is in sorted order and each speaker's rows are one range.
        speakers = table["speaker"].combine_chunks().dictionary_encode()
        codes = speakers.indices.to_numpy()
        starts = np.flatnonzero(np.diff(codes, prepend=-1))
        ends = np.append(starts[1:], len(codes)).astype(np.int64)
        self._speakers = speakers.dictionary.to_pylist()
        self._ranges = {s: (int(a), int(b)) for s, a, b in zip(self._speakers, starts, ends)}
        # The sorted utterance ids (plain ASCII names, as load_index checked: bytes hold them) as one fixed-width
        # bytes array, so a binary search finds a row (numpy's StringDType searchsorted is wrong in numpy 2.4):
        # Arrow pads them with spaces, which sort below every character an id may hold, and numpy views that buffer
        # without a Python object per id.
        utterances = table["utterance"].combine_chunks()
        self._width = max(1, pc.max(pc.utf8_length(utterances)).as_py() or 1)
        padded = pc.utf8_rpad(utterances, width=self._width, padding=" ")
        self._utterance = np.frombuffer(padded.buffers()[2], dtype=f"S{self._width}",
                                        count=len(padded), offset=padded.offset * self._width) \
            if len(padded) else np.zeros(0, dtype=f"S{self._width}")
        self._columns = {name: table[name].to_numpy() for name in ("offset", "frames", "seconds", "size",
                                                                   "mtime_ns", "shard")}
        self._source, self._augment = table["source"].combine_chunks(), table["augment"].combine_chunks()
        failures = listing["failures"]
        if failures:  # a file that failed once and is in a shard now is no failure
            cached = pc.is_in(pa.array([f["path"] for f in failures]), value_set=self._source).to_numpy(
                zero_copy_only=False)
            failures = [f for f, done in zip(failures, cached) if not done]
        self._failures = failures
        del table, speakers, utterances, padded
        pa.default_memory_pool().release_unused()  # what sorting the index needed goes back to the system
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # load() is called from several threads by the input pipelines

    @property
    def settings(self) -> dict:
        """The feature settings (``FEATURE_SETTINGS`` + trim) the frames were computed with."""
        return self._listing["settings"]

    @property
    def dtype(self) -> str:
        """``float32`` or ``float16``: what :meth:`load` returns (the models' inputs cast it to float32)."""
        return self._listing["dtype"]

    @property
    def shards(self) -> list[str]:
        """Names of the listed shards, oldest generation first."""
        return list(self._shard_names)

    @property
    def failures(self) -> list[Failure]:
        """Files that could not be stored, and why."""
        return [Failure.from_dict(f) for f in self._failures]

    @property
    def speakers(self) -> list[str]:
        """Speaker ids, sorted."""
        return list(self._speakers)

    @property
    def hours(self) -> float:
        """Hours of source audio in the store."""
        return float(self._columns["seconds"].sum()) / 3600

    def __len__(self) -> int:
        return len(self._utterance)

    def utterances(self, speaker: Optional[str] = None) -> list[tuple[str, str]]:
        """(speaker, utterance) pairs, sorted; only those of ``speaker`` when given."""
        if speaker is None:
            return [(s, u.decode().rstrip(" ")) for s in self._speakers
                    for u in self._utterance[slice(*self._ranges[s])]]
        lo, hi = self._ranges.get(speaker, (0, 0))
        return [(speaker, u.decode().rstrip(" ")) for u in self._utterance[lo:hi]]

    def _row(self, speaker: str, utterance: str) -> int:
        lo, hi = self._ranges.get(speaker, (0, 0))
        key = utterance.encode("utf8").ljust(self._width, b" ")
        i = lo + int(np.searchsorted(self._utterance[lo:hi], key))
        if i >= hi or self._utterance[i] != key:
            raise DeepSpeakerError(f"{self.path}: no utterance {speaker}/{utterance} in the store")
        return i

    def entry(self, speaker: str, utterance: str) -> dict:
        """The index row of an utterance (source, size, mtime_ns, frames, seconds, array = its shard, offset,
        augment when it is an augmented copy)."""
        i = self._row(speaker, utterance)
        c = self._columns
        entry = {"speaker": speaker, "utterance": utterance, "source": self._source[i].as_py(),
                 "size": int(c["size"][i]), "mtime_ns": int(c["mtime_ns"][i]), "frames": int(c["frames"][i]),
                 "seconds": float(c["seconds"][i]), "array": f"{SHARDS_DIR}/{self._shard_names[c['shard'][i]]}.npy",
                 "offset": int(c["offset"][i])}
        augment = self._augment[i].as_py()
        if augment is not None:
            entry["augment"] = json.loads(augment)
        return entry

    def _shard(self, number: int) -> np.ndarray:
        with self._lock:
            array = self._maps.get(number)
            if array is not None:
                self._maps.move_to_end(number)
                return array
        path = shard_files(self.path, self._shard_names[number])[0]
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DeepSpeakerError(f"{path}: unreadable shard ({str(exc).splitlines()[0]}); run 'deep-speaker "
                                   f"cache update' to recompute it") from None
        if array.dtype != np.dtype(self.dtype) or array.ndim != 2 or array.shape[1] != NUM_FILTERS:
            raise DeepSpeakerError(f"{path}: not a [T, {NUM_FILTERS}] {self.dtype} shard ({array.dtype}, shape "
                                   f"{array.shape})")
        # The listing's frame count (what load_index bounded every row by) against the array: another shard's array
        # swapped in, or a cut one, is refused here rather than read as this shard's utterances.
        expected = self._listing["shards"][number].get("frames", array.shape[0])
        if array.shape[0] != expected:
            raise DeepSpeakerError(f"{path}: {array.shape[0]} frames where its listing records {expected} (another "
                                   f"shard's array, or damaged); run 'deep-speaker cache update' to recompute it")
        with self._lock:
            self._maps[number] = array
            while len(self._maps) > OPEN_SHARDS:  # slices handed out keep their map alive
                self._maps.popitem(last=False)
        return array

    def load(self, speaker: str, utterance: str) -> np.ndarray:
        """The features ``[T, 64]`` of an utterance (the store's dtype), a read-only slice of its shard's map."""
        i = self._row(speaker, utterance)
        array = self._shard(int(self._columns["shard"][i]))
        offset, frames = int(self._columns["offset"][i]), int(self._columns["frames"][i])
        if offset + frames > array.shape[0]:
            raise DeepSpeakerError(f"{self.path}: shard {self._shard_names[self._columns['shard'][i]]} is shorter "
                                   f"than its index says; run 'deep-speaker cache update'")
        features = array[offset:offset + frames]
        # Checked per utterance, not per shard when mapped: a random-crop batch reads a few utterances of each of
        # many shards (a whole-shard pass would read all of every shard, again each time its map is reopened), and
        # this reads only the pages the caller reads next (2 us for 300 frames, beside the caller's own pass).
        if not _finite(features):
            raise DeepSpeakerError(f"{shard_files(self.path, self._shard_names[self._columns['shard'][i]])[0]}: "
                                   f"utterance {speaker}/{utterance} holds frames that are NaN or infinite (damaged); "
                                   f"run 'deep-speaker cache update' to recompute it")
        return features


def _finite(features: np.ndarray) -> bool:
    """Whether no frame is NaN or infinite."""
    if features.dtype == np.float16:  # numpy's isfinite is 10x slower on float16: its exponent bits (all set: not)
        return not ((features.view(np.uint16) & 0x7C00) == 0x7C00).any()
    return bool(np.isfinite(features).all())


# ----- writing -----

def shard_name(generation: int, entries: Sequence[dict], dtype: str, *, salt: str = "") -> str:
    """A shard's name: its generation and a digest of what it holds (ids, sources, sizes, times, dtype, and
    ``salt``: an augmentation's recipe), so the same work gives the same name wherever it runs, and a rerun of a
    task overwrites its own shard only."""
    digest = hashlib.sha256((dtype + salt).encode())
    for e in entries:
        digest.update(json.dumps([e["speaker"], e["utterance"], e["source"], e["size"], e["mtime_ns"]]).encode())
    return f"g{generation:06d}-{digest.hexdigest()[:16]}"


def as_dtype(item: Item | Failure, dtype: str) -> Item | Failure:
    """Features cast to the store's dtype, or a failure where a shard must not hold them: ids that are not plain
    names (as every reader requires), frames that are not finite, or that float16 cannot hold. Every item of a
    build, an augmentation or a conversion passes here on its way to write_shard."""
    if isinstance(item, Failure):
        return item
    features, entry = item
    if not (is_plain_id(entry["speaker"]) and is_plain_id(entry["utterance"])):
        return id_failure(entry["source"], entry["speaker"], entry["utterance"])
    if not _finite(features):
        return Failure(entry["source"], "features are NaN or infinite")
    cast = features.astype(dtype, copy=False)
    if cast is not features and not _finite(cast):
        return Failure(entry["source"], f"features exceed the {dtype} range; use a float32 store")
    return cast, entry


def write_shard(store_dir: Path, name: str, items: Sequence[Item], *, dtype: str, settings: dict,
                augment: bool = False) -> dict:
    """Write a shard (frames, then index, each renamed into place whole); its listing record. ``augment``: a shard
    of augmented copies (so marked in its index and record: the next augmentation replaces it)."""
    frames_path, index_path = shard_files(store_dir, name)
    arrays = [features for features, _ in items]
    frames = np.concatenate(arrays) if arrays else np.zeros((0, NUM_FILTERS), dtype)
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    entries = [e for _, e in items]
    columns = {"speaker": [e["speaker"] for e in entries], "utterance": [e["utterance"] for e in entries],
               "offset": np.cumsum(lengths) - lengths, "frames": lengths,
               "seconds": [float(e["seconds"]) for e in entries], "source": [e["source"] for e in entries],
               "size": [int(e["size"]) for e in entries], "mtime_ns": [int(e["mtime_ns"]) for e in entries],
               "augment": [json.dumps(e["augment"], sort_keys=True) if "augment" in e else None for e in entries]}
    meta = {"format": STORE_FORMAT, "format_version": STORE_VERSION, "settings": settings, "dtype": dtype,
            "name": name, **({"augment": True} if augment else {})}
    table = pa.table(columns, schema=INDEX_SCHEMA.with_metadata({"deep_speaker": json.dumps(meta)}))
    if not (plain_ids(table["speaker"]) & plain_ids(table["utterance"])).all():  # as_dtype keeps them out
        raise DeepSpeakerError(f"{index_path}: refusing to write ids that are not plain names into a shard")
    save_array_atomic(frames_path, frames.astype(dtype, copy=False))
    with atomic_write(index_path) as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)
    return _shard_record(store_dir, name, len(entries), int(lengths.sum()), float(sum(columns["seconds"])), augment)


def _shard_record(store_dir: Path, name: str, utterances: int, frames: int, seconds: float,
                 augment: bool = False) -> dict:
    """A shard's listing record: its counts and, per file, its size, checksum and the times it was checksummed at
    (an update checksums a file again only when these changed: see _damage)."""
    return {"name": name, "generation": int(name[1:7]), "utterances": utterances, "frames": frames,
            "seconds": seconds, "files": {kind: _file_record(path)
                                          for kind, path in zip(SHARD_FILES, shard_files(store_dir, name))},
            **({"augment": True} if augment else {})}


def _digest(path: Path) -> str:
    """blake2b of a file's bytes (1.3 GB/s here; a shard of 1,000 utterances of 3 s is about 80 MB)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _file_record(path: Path) -> dict:
    st = path.stat()  # before reading: a change while it is read shows in the next update's stat
    return {"size": st.st_size, "blake2b": _digest(path), "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a .npy header gives (no pickle, nothing but the header read)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)(f)
    return shape, dtype


def _damage(store_dir: Path, record: dict) -> Optional[str]:
    """Why a listed shard cannot be read as its record says ("missing", or what differs), or None.

    A file checksummed at the size and times it still has is not read again: a no-op update of 10^5 utterances
    would read gigabytes otherwise. Writing a file changes its mtime and ctime, renaming or replacing it its ctime
    (which no one can set back), so every change since is checksummed, and a file that matches is recorded at its
    new times (a copied store is read once). As with git's index, a change within the file system's clock tick of
    the write itself could keep both times; the size and the reader's frame count still see most of those. A
    record written before checksums (no "files") is checked by its frame count only."""
    files = record.get("files", {})
    for kind, path in zip(SHARD_FILES, shard_files(store_dir, record["name"])):
        try:
            st = path.stat()
        except FileNotFoundError:
            return "missing"
        known = files.get(kind)
        if known is None:
            continue
        if st.st_size != known["size"]:
            return f"{path.name} holds {st.st_size} bytes where its listing records {known['size']}"
        if (st.st_mtime_ns, st.st_ctime_ns) != (known["mtime_ns"], known["ctime_ns"]):
            if _digest(path) != known["blake2b"]:
                return f"{path.name} does not match its checksum"
            known.update(mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
    if set(files) != set(SHARD_FILES) and "frames" in record:  # a shard of an older listing: its header at least
        try:
            shape, _ = _npy_shape(shard_files(store_dir, record["name"])[0])
        except (OSError, ValueError) as exc:
            return f"unreadable frames ({str(exc).splitlines()[0]})"
        if shape[:1] != (record["frames"],):
            return f"its array has shape {shape} where its listing records {record['frames']} frames"
    return None


def _intact(store_dir: Path, record: dict) -> bool:
    """Whether a listed shard is as written; if not, logged, and a damaged shard's files deleted (they are named in
    our listing), so that its utterances are computed again. Deleted before the listing drops it: a run killed
    between the two leaves a listed shard missing (computed again), never an unlisted damaged one that the next
    update would adopt as a complete shard."""
    problem = _damage(store_dir, record)
    if problem == "missing":
        log.warning("%s: shard %s is missing; its utterances are computed again", store_dir, record["name"])
    elif problem is not None:
        _drop_damaged(store_dir, record["name"], problem)
    return problem is None


def _drop_damaged(store_dir: Path, name: str, problem: str) -> None:
    log.warning("%s: shard %s is damaged (%s); it is deleted and its utterances computed again", store_dir, name,
                problem)
    for path in shard_files(store_dir, name):
        path.unlink(missing_ok=True)


Compute = Callable[[object], "Item | Failure"]  # one work item (an Utterance, a copy) -> features or failure


def _computed(item: object, compute: Compute, dtype: str) -> Item | Failure:
    return as_dtype(compute(item), dtype)


def build_shard(store_dir: str, name: str, items: Sequence[object], *, compute: Compute, dtype: str, settings: dict,
                augment: bool = False) -> tuple[Optional[dict], list[dict]]:
    """One shard task (in this process or on a Dask worker): compute its items and write it; its listing record
    and the failures (as dicts)."""
    with threadpool_limits(limits=1, user_api="blas"):  # the build is parallel by shards
        results = [_computed(item, compute, dtype) for item in items]
    return _written(Path(store_dir), name, results, dtype, settings, augment)


def _written(store_dir: Path, name: str, results: list, dtype: str, settings: dict,
             augment: bool) -> tuple[Optional[dict], list[dict]]:
    items = [r for r in results if not isinstance(r, Failure)]
    record = write_shard(store_dir, name, items, dtype=dtype, settings=settings, augment=augment) if items else None
    return record, [r.to_dict() for r in results if isinstance(r, Failure)]


ShardTask = tuple[str, list]  # a shard's name and its work items


def run_shards(tasks: list[ShardTask], store_dir: Path, compute: Compute, *, dtype: str, settings: dict,
               workers: int = 1, client: Optional[object] = None,
               augment: bool = False) -> Iterator[tuple[Optional[dict], list[dict]]]:
    """The shard tasks on the Dask cluster of ``client`` (a ``distributed.Client`` from :func:`.cluster.connect`,
    opened by the caller before it deleted anything), else ``workers`` local processes, else here: each shard's
    listing record (None when all its items failed) and failures, as they finish."""
    if client is not None:
        return _run_dask(tasks, store_dir, compute, dtype, settings, client, augment)
    if workers > 1 and sum(len(items) for _, items in tasks) > 1:
        return _run_pool(tasks, store_dir, compute, dtype, settings, workers, augment)
    return (build_shard(str(store_dir), name, items, compute=compute, dtype=dtype, settings=settings,
                        augment=augment) for name, items in tasks)


def _run_pool(tasks: list[ShardTask], store_dir: Path, compute: Compute, dtype: str, settings: dict, workers: int,
              augment: bool) -> Iterator[tuple[Optional[dict], list[dict]]]:
    """The local process pool: the workers compute the items of a shard, this process writes it."""
    work = functools.partial(_computed, compute=compute, dtype=dtype)
    with ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(), initializer=init_worker,
                             initargs=(os.getpid(),)) as pool:
        for name, items in tasks:
            try:
                results = list(pool.map(work, items, chunksize=max(1, len(items) // (4 * workers))))
            except BrokenProcessPool:
                raise DeepSpeakerError("a worker process of the store build died (killed, or out of memory?); the "
                                       "shards done so far are kept: run the command again to finish") from None
            yield _written(store_dir, name, results, dtype, settings, augment)


def _run_dask(tasks: list[ShardTask], store_dir: Path, compute: Compute, dtype: str, settings: dict, client: object,
              augment: bool) -> Iterator[tuple[Optional[dict], list[dict]]]:
    """One Dask task per shard on the cluster of ``client``; a task whose worker died is rerun by Dask."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    futures = [client.submit(build_shard, str(store_dir.resolve()), name, items, compute=compute, dtype=dtype,
                             settings=settings, augment=augment, key=f"deep-speaker-shard-{name}", pure=False)
               for name, items in tasks]
    try:
        for future in as_completed(futures, loop=client.loop):
            try:
                yield future.result()
            except KilledWorker:
                raise DeepSpeakerError(f"Dask workers kept dying on shard task {future.key}; the shards done so "
                                       f"far are kept: run the command again to finish") from None
    finally:
        client.cancel(futures)


def plan_shards(todo: Sequence[Utterance], generation: int, *, shard_size: int, dtype: str,
                stats: dict[str, os.stat_result]) -> list[ShardTask]:
    """The files to compute cut into blocks of ``shard_size`` in sorted order, each named by :func:`shard_name`."""
    tasks = []
    ordered = sorted(todo, key=lambda u: (u.speaker, u.utterance))  # a key: the dataclass order is slow at 10^5
    for i in range(0, len(ordered), shard_size):
        block = ordered[i:i + shard_size]
        keys = [{"speaker": u.speaker, "utterance": u.utterance, "source": u.path, "size": stats[u.path].st_size,
                 "mtime_ns": stats[u.path].st_mtime_ns} for u in block]
        tasks.append((shard_name(generation, keys, dtype), block))
    return tasks


def _scan_record_temporaries(store_dir: Path) -> list[Path]:
    """The temporaries an interrupted write of the scan record left (atomic_write's names)."""
    return sorted(store_dir.glob(f".{SCAN_RECORD}.*.tmp"))


def store_wipe_plan(store_dir: Path) -> list[Path]:
    """What a rebuild of a store deletes: the files of the shards its listings name (and of the copies a killed
    augmentation named), our temporaries, our training inputs, then the listings; a listing that is not ours, or
    tampered, or a symbolic link in the way (``shards/`` linked to another store's) refuses the wipe."""
    try:
        listing = read_listings(store_dir)
        named = [s["name"] for s in listing["shards"]] + _pending(store_dir, listing) if listing else []
    except DeepSpeakerError as exc:
        raise DeepSpeakerError(f"refusing to wipe {store_dir}: {exc}") from None
    # Unlisted shard-named files stay: nothing proves they are this store's (a shard finished by a killed build is
    # adopted by an update, not deleted by a rebuild).
    files = [p for name in sorted(set(named)) for p in shard_files(store_dir, name) if p.is_file()]
    files += _shard_temporaries(store_dir)
    inputs = store_dir / INPUTS_NAME
    if inputs.is_file() and is_training_inputs(inputs):
        files.append(inputs)
    files += _scan_record_temporaries(store_dir)
    files += sorted(store_dir.glob("store.shard-*-of-*.json")) + [
        p for p in [store_dir / SCAN_RECORD, store_dir / LISTING] if p.is_file()]
    refuse_links(store_dir, [store_dir / SHARDS_DIR, *files])
    return files


def wipe_store(store_dir: Path) -> list[Path]:
    """Delete what :func:`store_wipe_plan` lists, then ``shards/`` once emptied (a folder of either format:
    :func:`~.sources.wipe_features`)."""
    plan = store_wipe_plan(store_dir)
    delete_planned(plan)
    shards = store_dir / SHARDS_DIR
    if shards.is_dir() and not shards.is_symlink() and not any(shards.iterdir()):
        shards.rmdir()
    return plan


def _shard_temporaries(store_dir: Path) -> list[Path]:
    """The temporaries a killed write of a shard file left in ``shards/`` (atomic_write's names for them)."""
    shards = store_dir / SHARDS_DIR
    return sorted(p for p in shards.glob(".g*.tmp") if _SHARD_TEMPORARY.fullmatch(p.name)) \
        if shards.is_dir() and not shards.is_symlink() else []


def _pending(store_dir: Path, listing: dict) -> list[str]:
    """The shard names a killed augmentation left in the listing (PENDING), checked like the listed ones: a name
    builds the paths deleted."""
    names = listing.get(PENDING, [])
    if not isinstance(names, list) or not all(isinstance(n, str) and _SHARD_NAME.fullmatch(n) for n in names):
        raise DeepSpeakerError(f"{store_dir / LISTING}: corrupt or tampered store listing ({PENDING} malformed)")
    return names


def _adoptable(store_dir: Path, listed: set[str], generation: int, settings: dict, dtype: str) -> list[dict]:
    """Complete shards a killed build left unlisted (index present, built with these settings, an array of the
    frames its index adds up to): their records, checksummed now (their rows are checked as the listed shards'
    are, by load_index)."""
    found = []
    for index in sorted((store_dir / SHARDS_DIR).glob("g*.arrow")):
        name = index.stem
        if name in listed or not _SHARD_NAME.fullmatch(name) or int(name[1:7]) > generation:
            continue
        with contextlib.suppress(DeepSpeakerError, OSError, ValueError):
            table = _read_index(store_dir, name)
            meta = _index_meta(table)
            frames = int(pc.sum(table["frames"]).as_py() or 0)
            # A shard of augmented copies is not adopted: the listing of its run would have to name it.
            if meta.get("settings") == settings and meta.get("dtype") == dtype and not meta.get("augment") \
                    and _npy_shape(shard_files(store_dir, name)[0]) == ((frames, NUM_FILTERS), np.dtype(dtype)):
                found.append(_shard_record(store_dir, name, len(table), frames,
                                          float(pc.sum(table["seconds"]).as_py() or 0.0)))
    return found


def unchanged(index: pa.Table, utterances: Sequence[Utterance], *, sizes: Sequence[int], mtimes_ns: Sequence[int],
              adopted: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per utterance (its file's ``sizes`` and ``mtimes_ns``), whether ``index`` holds its ids from the same file,
    size and modification time; and whether that entry is in one of the ``adopted`` shards (index ``shard``
    positions). A hash join of the corpus with the index in Arrow: a Python loop over the two would cost more than
    the rest of a no-op update at 10^5 files."""
    corpus = pa.table({"speaker": [u.speaker for u in utterances], "utterance": [u.utterance for u in utterances],
                       "source": [u.path for u in utterances],
                       "size": pa.array(sizes, pa.int64()), "mtime_ns": pa.array(mtimes_ns, pa.int64()),
                       "row": pa.array(np.arange(len(utterances), dtype=np.int64))},
                      schema=pa.schema([("speaker", pa.string()), ("utterance", pa.string()), ("source", pa.string()),
                                        ("size", pa.int64()), ("mtime_ns", pa.int64()), ("row", pa.int64())]))
    known = index.select(["speaker", "utterance", "source", "size", "mtime_ns", "shard"])
    joined = corpus.join(known, keys=["speaker", "utterance"], join_type="inner", right_suffix=" of index")
    same = pc.and_(pc.and_(pc.equal(joined["source"], joined["source of index"]),
                           pc.equal(joined["size"], joined["size of index"])),
                   pc.equal(joined["mtime_ns"], joined["mtime_ns of index"]))
    rows = joined["row"].to_numpy()
    kept = np.zeros(len(utterances), bool)
    kept[rows] = same.to_numpy(zero_copy_only=False)
    recovered = np.zeros(len(utterances), bool)
    recovered[rows] = np.isin(joined["shard"].to_numpy(), np.asarray(adopted, np.int32))
    return kept, kept & recovered


def build_store(audio_dir: str | os.PathLike, store_dir: str | os.PathLike, *, layout: str = "auto",
                workers: int = 1, update: bool = False, trim: str = DEFAULT_TRIM,
                min_seconds: float = MIN_SPEECH_SECONDS, shard: Optional[tuple[int, int]] = None,
                progress: bool = True, mic: str = "mic1", dtype: Optional[str] = None,
                shard_size: int = DEFAULT_SHARD_SIZE, scheduler: Optional[str] = None,
                wipe: Callable[[Path], object] = wipe_store) -> BuildSummary:
    """Compute the features of every utterance of ``audio_dir`` into the sharded store ``store_dir``.

    As :func:`~.cache.build_cache` (``update``, ``shard``, bad files reported and skipped), writing shards of
    ``shard_size`` utterances in ``dtype`` (default: the store's, else float32), with ``workers`` local processes
    or on the Dask cluster at ``scheduler``. ``update=False`` wipes the folder first with ``wipe``
    (:func:`~.sources.build_features` passes the wipe of either format, and refuses to update a per-file cache).
    """
    started = time.perf_counter()
    if dtype is not None:
        check_choice(dtype, DTYPES, "store dtype")
    check_shard_size(shard_size)
    if scheduler is not None:
        check_scheduler(scheduler)  # a malformed address is refused before the scan, not after it
    audio_dir, store_dir = Path(audio_dir).resolve(), Path(store_dir)
    settings = cache_settings(trim)
    check_not_overlapping(audio_dir, store_dir)
    record = None
    if update and is_store(store_dir):
        record = store_dir / SCAN_RECORD
        if layout == "auto":
            # An update keeps the layout the store was built with (and skips detecting it: a pass over every file).
            layout = (read_listings(store_dir) or {}).get("layout", "auto")
    utterances, rejected, layout = scan_corpus(audio_dir, layout=layout, mic=mic, record=record)
    if not utterances and not rejected:
        raise DeepSpeakerError(f"{audio_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder")
    utterances, rejected = recordable(audio_dir, utterances, rejected)
    if shard is not None:
        utterances = [u for u in utterances if in_shard(u, shard)]
    # Every check that can refuse runs before the wipe: the lock, no link in the way, and the scheduler reached
    # (a store wiped and then "cannot reach the scheduler" would be lost for nothing).
    with build_lock(store_dir, shard), (connect(scheduler) if scheduler else contextlib.nullcontext()) as client:
        refuse_links(store_dir, [store_dir / SHARDS_DIR])
        if dtype is None and is_store(store_dir):  # a rebuild keeps the store's dtype unless told otherwise
            dtype = (read_listings(store_dir) or {}).get("dtype")
        if shard is None and not update:
            wipe(store_dir)
        existing = read_listings(store_dir)
        dtype = dtype or (existing["dtype"] if existing else "float32")
        if existing is not None and (existing["settings"], existing["dtype"]) != (settings, dtype):
            difference = settings_difference({**existing["settings"], "dtype": existing["dtype"]},
                                             {**settings, "dtype": dtype})
            raise DeepSpeakerError(f"{store_dir} was built with other settings ({difference}); rebuild it with "
                                   f"'deep-speaker cache build' or use another folder")
        generation = (existing["generation"] if existing else 0) + 1
        listing_path = store_dir / listing_name(shard)
        listed = list(existing["shards"]) if existing else []
        present = [s for s in listed if _intact(store_dir, s)]  # a missing or damaged shard is computed again
        # A full build or update lists every shard in store.json (consolidating the parts); a part (--shard)
        # lists its own shards only, and reads the others' to skip what they hold.
        if shard is None:
            own = present
        else:
            mine = read_listings_file(listing_path)
            own = [s for s in present if s["name"] in {m["name"] for m in mine}]
        adopted = _adoptable(store_dir, {s["name"] for s in listed}, generation - 1, settings, dtype) \
            if existing is not None else []
        own += adopted
        (store_dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        if shard is None:
            for tmp in [*_shard_temporaries(store_dir), *_scan_record_temporaries(store_dir)]:
                tmp.unlink(missing_ok=True)
        readable = sorted({s["name"]: s for s in present + adopted}.values(),
                          key=lambda s: (s["generation"], s["name"]))
        summary = BuildSummary(cache_dir=str(store_dir), layout=layout)
        failures: list[Failure] = list(rejected)
        # The index is read (Arrow, outside the GIL) while the files are stat-ed: a third of a no-op update each.
        damaged: dict[str, str] = {}  # shards whose index rows are not as written: left out of the index
        with ThreadPoolExecutor(1) as reader, gc_paused():
            index_read = reader.submit(load_index, store_dir, readable, damaged)
            found, found_stats, unopened = stat_utterances(utterances)
            failures += unopened
            index = index_read.result()
            kept, recovered = unchanged(index, found, sizes=[st.st_size for st in found_stats],
                                        mtimes_ns=[st.st_mtime_ns for st in found_stats],
                                        adopted=[readable.index(s) for s in adopted])
        for name, problem in damaged.items():  # their rows are not in the index: their utterances are computed again
            _drop_damaged(store_dir, name, problem)
        own = [s for s in own if s["name"] not in damaged]
        summary.recovered = int(np.count_nonzero(recovered))
        summary.skipped = int(np.count_nonzero(kept)) - summary.recovered
        todo, stats = [], {}
        for utt, st, same in zip(found, found_stats, kept.tolist()):
            if not same:
                todo.append(utt)
                stats[utt.path] = st
        base = {"format": STORE_FORMAT, "format_version": STORE_VERSION, "settings": settings, "dtype": dtype,
                "audio_dir": str(audio_dir), "layout": layout, "min_seconds": min_seconds, "generation": generation}
        if existing is not None and "augment" in existing:
            base["augment"] = existing["augment"]
        if existing is not None and existing.get(PENDING):  # a killed augmentation's shards: still to be deleted
            base[PENDING] = _pending(store_dir, existing)

        def save() -> None:
            write_json(listing_path, {**base, "shards": own, "failures": [f.to_dict() for f in sorted(failures)]},
                       indent=1)

        save()  # the new generation is recorded before any of its shards exists
        tasks = plan_shards(todo, generation, shard_size=shard_size, dtype=dtype, stats=stats)
        compute = functools.partial(compute_features, trim=trim, min_seconds=min_seconds)
        results = run_shards(tasks, store_dir, compute, dtype=dtype, settings=settings, workers=workers, client=client)
        # closing: a failed run stops its tasks (cancels them on the cluster) before the client is closed.
        with contextlib.closing(results), \
                QuietBar(total=len(todo), unit="file", desc="features", disable=not progress or not todo) as bar:
            for record, failed in results:
                failures.extend(Failure.from_dict(f) for f in failed)
                if record is not None:
                    own.append(record)
                    summary.cached += record["utterances"]
                    summary.hours += record["seconds"] / 3600
                save()  # the listing names a shard only once both of its files are in place
                bar.update((record["utterances"] if record else 0) + len(failed))
        if shard is None:
            for path in store_dir.glob("store.shard-*-of-*.json"):
                path.unlink()
        if tasks or shard is not None:  # what the store holds now (a part: with the other parts' shards)
            final = FeatureStore(store_dir)
            summary.total_utterances, summary.total_hours = len(final), final.hours
        else:  # nothing computed: the index read above is the store's
            summary.total_utterances = len(index)
            summary.total_hours = (pc.sum(index["seconds"]).as_py() or 0.0) / 3600
        summary.failed = sorted(failures)
        summary.wall_seconds = time.perf_counter() - started
        return summary


CopyJob = tuple[dict, int, int, tuple, int, int, list]  # source entry, k, seed, kinds, others, babble n, babble paths


def make_store_copy(job: CopyJob, trim: str) -> Item | Failure:
    """One augmented copy (here or on a worker): the source's and the babble's audio read, the copy made from the
    generator copy_generator gives (the same copy as the per-file cache's); or why it failed."""
    # Here, not at the top (as in augment_store): the signal effects load scipy.signal, which only copies need.
    from .augment import copy_generator, make_copy

    source, k, seed, kinds, others, babble_speakers, babble = job
    path = source["source"]
    try:
        signal = read_audio(path, trim=trim)
        mixed = []
        for other in babble:
            try:
                mixed.append(read_audio(other, trim=trim))
            except InputError as exc:
                return Failure(path, f"copy {k}: its babble {exc.failure.path}: {exc.failure.reason}")
        rng, _ = copy_generator(source["speaker"], source["utterance"], k=k, seed=seed, others=others,
                                babble_speakers=babble_speakers)
        return make_copy(signal, source, k=k, seed=seed, kinds=kinds, others=mixed, rng=rng)
    except InputError as exc:
        return Failure(path, f"copy {k}: {exc.failure.reason}")
    except Exception as exc:  # one bad source must never stop the run: report it and go on
        return Failure(path, f"copy {k}: {type(exc).__name__}: {exc}")


def augment_store(store_dir: str | os.PathLike, kinds: tuple[str, ...], copies: int, *, seed: int = 0,
                  progress: bool = True, babble_speakers: int = 3, workers: int = 1,
                  scheduler: Optional[str] = None, shard_size: int = DEFAULT_SHARD_SIZE) -> int:
    """:func:`~.cache.augment_cache` on a sharded store (the same copies, :func:`~.augment.make_copy`): the copies
    are written as new shards of a new generation (marked as copies), with ``workers`` local processes or on the
    Dask cluster at ``scheduler``; the shards of an earlier run's copies are unlisted, then deleted, first. The new
    shards are named in the listing (PENDING) before the first is written and listed, with the recipe, once all are
    (with ``failures``: the copies whose source could not be read): a killed run leaves the originals, no copy and
    no recipe, and the next run (or a rebuild) deletes what it wrote. Returns the number of copies made."""
    # Here, not at the top: the signal effects load scipy.signal (seconds, cold), which only an augmentation needs.
    from .augment import check_recipe, copy_draws, speaker_blocks

    kinds, store_dir = check_recipe(kinds, copies), Path(store_dir)
    check_shard_size(shard_size)
    if scheduler is not None:
        check_scheduler(scheduler)
    # Every check that can refuse (the lock, a link, the scheduler) runs before the old copies are deleted.
    with build_lock(store_dir, None), (connect(scheduler) if scheduler else contextlib.nullcontext()) as client:
        refuse_links(store_dir, [store_dir / SHARDS_DIR])
        if any(store_dir.glob("store.shard-*-of-*.json")):
            raise DeepSpeakerError(f"{store_dir} has parts built with --shard; merge them with 'deep-speaker cache "
                                   f"update' before adding augmented copies")
        store = FeatureStore(store_dir)
        listing = store._listing
        is_copy = store._augment.is_valid().to_numpy(zero_copy_only=False)
        flagged = [n for n, s in enumerate(listing["shards"]) if s.get("augment")]
        if np.any(is_copy & ~np.isin(store._columns["shard"], flagged)):
            raise DeepSpeakerError(f"{store_dir} holds augmented copies converted from a per-file cache; convert "
                                   f"the cache without them, or rebuild the store, before adding new copies")
        base = {k: v for k, v in listing.items() if k not in ("shards", "failures", "augment", PENDING)}
        base["generation"] = generation = listing["generation"] + 1
        shards = [s for s in listing["shards"] if not s.get("augment")]
        failures = listing["failures"]
        # The earlier copies, and the shards a killed run named: unlisted but still named until their files are gone.
        old = sorted({s["name"] for s in listing["shards"] if s.get("augment")} | set(_pending(store_dir, listing)))
        refuse_links(store_dir, [path for name in old for path in shard_files(store_dir, name)])

        def save(pending: Sequence[str], **recipe: object) -> None:
            write_json(store_dir / LISTING, {**base, **recipe, **({PENDING: list(pending)} if pending else {}),
                                             "shards": shards, "failures": failures}, indent=1)

        save(old)
        for name in old:
            for path in shard_files(store_dir, name):
                path.unlink(missing_ok=True)
        originals = [key for key, copy in zip(store.utterances(), is_copy.tolist()) if not copy]
        blocks = speaker_blocks(originals)
        fields = ("speaker", "utterance", "source", "size", "mtime_ns", "frames", "seconds")
        salt = json.dumps({"kinds": list(kinds), "seed": seed, "babble_speakers": babble_speakers})
        tasks: list[ShardTask] = []
        jobs: list[CopyJob] = []
        for speaker, utt in originals:
            entry = store.entry(speaker, utt)
            source = {f: entry[f] for f in fields}
            a, b = blocks[speaker]
            for k in range(copies):
                _, babble = copy_draws(originals, blocks, speaker=speaker, utt=utt, k=k, seed=seed,
                                       babble_speakers=babble_speakers)
                jobs.append((source, k, seed, tuple(kinds), len(originals) - (b - a), babble_speakers,
                             [store.entry(*key)["source"] for key in babble]))
        for i in range(0, len(jobs), shard_size):
            block = jobs[i:i + shard_size]
            keys = [{**job[0], "utterance": f"{job[0]['utterance']}-aug{job[1]}"} for job in block]
            tasks.append((shard_name(generation, keys, store.dtype, salt=salt), block))
        save([name for name, _ in tasks])  # named before the first is written (on a cluster, any may be first)
        compute = functools.partial(make_store_copy, trim=store.settings["trim"])
        results = run_shards(tasks, store_dir, compute, dtype=store.dtype, settings=store.settings, workers=workers,
                             client=client, augment=True)
        made, failed_copies = 0, []
        with contextlib.closing(results), \
                QuietBar(total=len(jobs), unit="copy", desc="augmented copies", disable=not progress) as bar:
            for record, failed in results:
                failed_copies.extend(failed)
                if record is not None:
                    shards.append(record)
                    made += record["utterances"]
                bar.update((record["utterances"] if record else 0) + len(failed))
        shards.sort(key=lambda s: (s["generation"], s["name"]))
        # The copies that failed are the recipe's (not the build's failures: their sources are in the store).
        recipe = {"kinds": list(kinds), "copies": copies, "seed": seed}
        # One write lists the copies and their recipe together.
        save([], augment={**recipe, "failures": sorted(failed_copies, key=lambda f: f["path"])} if failed_copies
             else recipe)
    return made


def convert_to_store(cache: FeatureSource, store_dir: str | os.PathLike, *, dtype: str = "float32",
                     shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = True,
                     wipe: Callable[[Path], object] = wipe_store) -> BuildSummary:
    """Copy an opened cache (per-file, or another store) into a new sharded store in ``dtype``; ``store_dir`` is
    wiped first with ``wipe``. Ids, sources, sizes, times, augmented copies, settings and failures carry over, so
    the store updates from the same audio as the cache did. (A folder: :func:`~.sources.convert_features`.)"""
    started = time.perf_counter()
    check_choice(dtype, DTYPES, "store dtype")
    check_shard_size(shard_size)
    store_dir = Path(store_dir)
    if store_dir.resolve() == cache.path.resolve():
        raise DeepSpeakerError(f"{store_dir}: convert into another folder than the cache's")
    summary = BuildSummary(cache_dir=str(store_dir), layout=str(cache.manifest.get("layout")))
    with build_lock(store_dir, None):
        wipe(store_dir)
        base = {"format": STORE_FORMAT, "format_version": STORE_VERSION, "settings": cache.settings, "dtype": dtype,
                "generation": 1, **{k: cache.manifest[k] for k in ("audio_dir", "layout", "min_seconds", "augment")
                                    if k in cache.manifest}}
        failures = [f.to_dict() for f in cache.failures]
        shards: list[dict] = []
        keys = cache.utterances()
        with QuietBar(total=len(keys), unit="file", desc="convert", disable=not progress or not keys) as bar:
            for i in range(0, len(keys), shard_size):
                items = []
                for speaker, utt in keys[i:i + shard_size]:
                    entry = cache.entry(speaker, utt)
                    item = as_dtype((np.asarray(cache.load(speaker, utt)), entry), dtype)
                    if isinstance(item, Failure):
                        failures.append(item.to_dict())
                    else:
                        items.append(item)
                if items:
                    record = write_shard(store_dir, shard_name(1, [e for _, e in items], dtype), items, dtype=dtype,
                                         settings=cache.settings)
                    shards.append(record)
                    summary.cached += record["utterances"]
                    summary.hours += record["seconds"] / 3600
                bar.update(len(keys[i:i + shard_size]))
        write_json(store_dir / LISTING, {**base, "shards": shards, "failures": failures}, indent=1)
    summary.failed = sorted(Failure.from_dict(f) for f in failures)
    summary.total_utterances, summary.total_hours = summary.cached, summary.hours
    summary.wall_seconds = time.perf_counter() - started
    return summary
