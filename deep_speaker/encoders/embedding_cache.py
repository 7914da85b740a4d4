"""The embedding cache: a file's embedding is kept per (sha256 of its bytes, encoder), so it is computed once.

One SQLite database per encoder key (``DIR/<encoder>-<key>.sqlite``; stdlib ``sqlite3``, WAL, readable by any
SQLite tool), two tables:

- ``embeddings(content, dtype, dim, vector, digest)``: ``content`` is the hex sha256 of the file's bytes,
  ``vector`` the row as little-endian float32 bytes, ``digest`` = sha256(content, dtype, dim, vector)[:16]. A row
  whose dtype, length or digest does not check out is recomputed and replaced, never returned.
- ``files(path, device, inode, size, mtime_ns, ctime_ns, content)``: the index that lets a second run skip even
  hashing. It names the content a file had while its status (device, inode, size, mtime and ctime, as git's index
  does) was unchanged; any write changes ctime, which no program can set back, so a changed file misses.

The encoder key (:func:`cache_key`) is the encoder's name, class, identity, embedding size and settings, the
compute precision of a Keras model (its settings do not record it) and the versions of the code every
embedding goes through (decoders, numpy, the encoder's framework): a change in any of them opens another
database. A file is stored only when it was settled: its mtime and ctime at least :data:`SETTLED_SECONDS` before
it was hashed, and its status the same before hashing and after decoding; a file being written while it is read
is embedded but not kept (coarse file-system clocks could hide a second write in the same tick). Failures are
not kept: a file that failed (unreadable, silent, too short) is tried again next time, since the reason may be
the environment (a permission, a disk, a decoder version) rather than the bytes. SQLite's transactions make
two processes sharing a cache, and a process killed while writing, leave it valid. WAL needs a local file
system (SQLite's shared memory does not work over NFS). Nothing is ever evicted: delete the folder to start over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import soxr

from ..errors import DeepSpeakerError, Failure, InternalError
from .base import EmbedResult, Encoder, EncoderWrapper, update_with_file
from .constants import EMBEDDING_CACHE_ENV

FORMAT = 1  # the database layout; a database of another format is refused, not guessed at
DTYPE = "<f4"
SETTLED_SECONDS = 2.0  # a file changed this recently may change again within one timestamp tick (FAT: 2 s)
BUSY_SECONDS = 60.0  # how long a writer waits for another process's transaction
# Embedding rows are about 2 KB: a rowid table, as SQLite advises for large rows (index rows are small), in
# 32 KB pages: 4 KB pages hold one 512-d row each, half empty; 32 KB ones hold 15.
PAGE_SIZE = 32768
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS embeddings (content TEXT PRIMARY KEY, dtype TEXT NOT NULL, dim INTEGER NOT NULL,
    vector BLOB NOT NULL, digest BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, device INTEGER NOT NULL, inode INTEGER NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, content TEXT NOT NULL) WITHOUT ROWID;
"""
BY_CONTENT = "SELECT content, dtype, dim, vector, digest FROM embeddings WHERE content = ?"
BY_INDEX = ("SELECT e.content, e.dtype, e.dim, e.vector, e.digest FROM files f JOIN embeddings e "
            "ON e.content = f.content WHERE f.path = ? AND f.device = ? AND f.inode = ? AND f.size = ? "
            "AND f.mtime_ns = ? AND f.ctime_ns = ?")

logger = logging.getLogger(__name__)


def _runtime(encoder: Encoder) -> dict[str, str]:
    """Versions of the code an embedding goes through: libsndfile, soxr, numpy, and the packages (with a
    ``__version__``) that the encoder's class and its model's class come from, e.g. keras and tensorflow."""
    model = getattr(encoder, "model", None)
    roots = {c.__module__.split(".")[0] for obj in (encoder, model) if obj is not None for c in type(obj).__mro__}
    versions = {root: str(sys.modules[root].__version__) for root in sorted(roots - {"deep_speaker"})
                if hasattr(sys.modules.get(root), "__version__")}
    return {**versions, "libsndfile": sf.__libsndfile_version__, "soxr": soxr.__version__, "numpy": np.__version__}


def cache_key(encoder: Encoder) -> dict[str, Any]:
    """What must be equal for a cached row to stand for a new one (JSON-ready): name, class, identity, width,
    settings, compute precision and :func:`_runtime` versions."""
    # Keras computes in each layer's dtype policy; mixed_bfloat16 keeps the float32 weights, hence the identity.
    layers = getattr(getattr(encoder, "model", None), "layers", None) or []
    precision = sorted({str(getattr(layer.dtype_policy, "name", layer.dtype_policy)) for layer in layers
                        if getattr(layer, "dtype_policy", None) is not None}) or None
    return {"format": FORMAT, "encoder": encoder.name, "class": type(encoder).__qualname__,
            "identity": encoder.identity, "embedding_size": int(encoder.embedding_size),
            "settings": encoder.settings, "precision": precision, "runtime": _runtime(encoder)}


def file_digest(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in blocks; hashlib releases the GIL, so reading threads overlap)."""
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()


def row_digest(content: str, dim: int, vector: bytes) -> bytes:
    """sha256(content, dtype, dim, vector)[:16]: a row's check; it also fails for a vector under another key."""
    return hashlib.sha256(f"{content}/{DTYPE}/{dim}/".encode() + vector).digest()[:16]


def _status(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _uncached(result: Any, path: str) -> "Miss | Failure":
    """A read that the cache cannot key (the file could not be hashed): embedded, not kept."""
    return result if isinstance(result, Failure) else Miss(result, path, None, None)


@dataclass
class Hit:
    """A cached embedding found for a file (in place of its model input)."""

    row: np.ndarray


@dataclass
class Miss:
    """A file's model input, to be embedded; ``content`` is None when the file may not be kept (unsettled)."""

    input: Any
    path: str
    status: tuple[int, int, int, int, int] | None
    content: str | None


class EmbeddingCache:
    """The cache of one encoder in ``folder``: :meth:`lookup` (in reading threads) and :meth:`complete`."""

    def __init__(self, folder: str | os.PathLike, encoder: Encoder):
        self.key = cache_key(encoder)
        key_text = json.dumps(self.key, sort_keys=True)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", encoder.name)
        self.path = Path(folder) / f"{name}-{hashlib.sha256(key_text.encode()).hexdigest()[:16]}.sqlite"
        self.dim = self.key["embedding_size"]
        self.found = self.embedded = self.kept = 0
        self.corrupt: set[str] = set()  # contents whose stored row failed its check
        self._lock = threading.Lock()  # one connection, used by the reading threads and the embedding thread
        self._index: list[tuple] = []  # index rows of hits found by hashing, written with the next chunk
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None,
                                       check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise DeepSpeakerError(f"{self.path}: cannot open the embedding cache ({exc})") from exc
        try:
            if self._create(key_text) != key_text:  # a copied file, or two keys sharing 16 hex digits
                raise DeepSpeakerError(f"{self.path}: an embedding cache of another encoder or format; remove it")
        except BaseException:
            self.close()
            raise

    def _create(self, key_text: str) -> str:
        """Set the database up (if new); the encoder key it was made for."""
        with self._guard():
            self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only a new database takes it
            # WAL: readers never wait for a writer. Switching a new database to it needs an exclusive lock that
            # SQLite's busy timeout does not wait for (two processes creating one cache at once fail about one
            # time in ten): retried until the other process has switched it, for at most BUSY_SECONDS.
            deadline = time.monotonic() + BUSY_SECONDS
            while True:
                try:
                    self._db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
        with self._guard(), self._db:  # one transaction: committed, or rolled back on an error
            self._db.execute("BEGIN IMMEDIATE")  # two processes creating one cache: one after the other
            for statement in filter(str.strip, SCHEMA.split(";")):
                self._db.execute(statement)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('key', ?)", (key_text,))
            return self._db.execute("SELECT value FROM meta WHERE name = 'key'").fetchone()[0]

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self.close()
        if kind is None:
            (logger.warning if self.corrupt else logger.info)(self.summary())

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """The connection's lock; SQLite errors become one-line errors naming the database."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise DeepSpeakerError(f"{self.path}: embedding cache unusable ({exc}); remove it to start "
                                       f"afresh") from exc

    def _row(self, content: str, dtype: str, dim: int, vector: bytes, digest: bytes) -> np.ndarray | None:
        """The stored row if its dtype, width, length and digest check out; None (noted as corrupt) otherwise."""
        if dtype == DTYPE and dim == self.dim and len(vector) == 4 * dim and row_digest(content, dim, vector) == digest:
            return np.frombuffer(vector, DTYPE).astype(np.float32)
        self.corrupt.add(content)  # recomputed and replaced by complete()
        return None

    def _select(self, query: str, args: tuple) -> tuple | None:
        with self._guard():
            return self._db.execute(query, args).fetchone()

    def lookup(self, path: str, read: Callable[[str], Any]) -> Hit | Miss | Failure:
        """The cached row of ``path`` (by the index, else by its content hash), else ``read(path)`` (its model
        input as a Miss, or its Failure). Safe to call from several threads."""
        started = time.time_ns()  # before the stat: a write after it gets a later timestamp than a settled file's
        where = os.path.abspath(path)
        try:
            before = os.stat(path)
            if not stat.S_ISREG(before.st_mode):
                raise OSError("not a regular file")  # a pipe or a device: nothing to key it by
            status = _status(before)
            found = self._select(BY_INDEX, (where, *status))
            row = None if found is None else self._row(*found)
            if row is not None:
                return Hit(row)
            content = file_digest(path)
        except OSError:
            return _uncached(read(path), where)  # read names the failure, if any
        if found is None or found[0] != content:  # a corrupt row the index led to is not looked at twice
            found = self._select(BY_CONTENT, (content,))
            row = None if found is None else self._row(*found)
        old_enough = max(before.st_mtime_ns, before.st_ctime_ns) < started - int(SETTLED_SECONDS * 1e9)
        if row is not None:
            if old_enough and self._unchanged(path, status):
                with self._lock:
                    self._index.append((where, *status, content))
            return Hit(row)
        result = read(path)
        if isinstance(result, Failure):
            return result
        return Miss(result, where, status, content if old_enough and self._unchanged(path, status) else None)

    @staticmethod
    def _unchanged(path: str, status: tuple) -> bool:
        """Whether the file's status is still ``status`` (it was not written while it was hashed and read)."""
        try:
            return _status(os.stat(path)) == status
        except OSError:
            return False

    def complete(self, items: Sequence[Hit | Miss], embed: Callable[[list[Any]], np.ndarray]) -> np.ndarray:
        """Rows ``[n, d]`` of :meth:`lookup` results in order: hits as found, misses embedded in one ``embed``
        call and kept (with their index rows) in one transaction."""
        misses = [i for i, item in enumerate(items) if isinstance(item, Miss)]
        out = np.empty((len(items), self.dim), np.float32)
        for i, item in enumerate(items):
            if isinstance(item, Hit):
                out[i] = item.row
        self.found += len(items) - len(misses)
        if misses:
            rows = np.asarray(embed([items[i].input for i in misses]), np.float32)
            if rows.shape != (len(misses), self.dim):
                raise InternalError(f"{self.key['encoder']} gave embeddings of shape {rows.shape} for {len(misses)} "
                                    f"inputs, not ({len(misses)}, {self.dim})")
            out[misses] = rows
            self.embedded += len(misses)
        kept = [(items[i], row.astype(DTYPE).tobytes()) for i, row in zip(misses, out[misses])
                if items[i].content is not None]
        with self._lock:
            index, self._index = self._index + [(m.path, *m.status, m.content) for m, _ in kept], []
        if kept or index:
            with self._guard(), self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?)",
                                     [(m.content, DTYPE, self.dim, v, row_digest(m.content, self.dim, v))
                                      for m, v in kept])
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", index)
            self.kept += len(kept)
        return out

    def summary(self) -> str:
        """One line: how many files were found, embedded and kept, and how many corrupt rows were recomputed."""
        repaired = f", {len(self.corrupt)} corrupt entr(ies) recomputed" if self.corrupt else ""
        return (f"embedding cache {self.path}: {self.found} file(s) found, {self.embedded} embedded, "
                f"{self.kept} kept{repaired}")


class CachedEncoder(EncoderWrapper):
    """``inner`` whose files are embedded through the embedding cache in ``folder``: a file whose bytes it embedded
    before is not decoded again (its stored row, equal to the row computed then, is returned), new rows are kept."""

    def __init__(self, inner: Encoder, folder: str | os.PathLike) -> None:
        super().__init__(inner)
        self.folder = folder

    def embed_files_with_failures(self, paths: Iterable[str | os.PathLike]) -> EmbedResult:
        inner = self.inner
        with EmbeddingCache(self.folder, inner) as cache:
            return inner.embed_reads(paths, lambda p: cache.lookup(p, inner.read_or_failure),
                                     lambda items: cache.complete(items, inner.embed_prepared))


def with_embedding_cache(encoder: Encoder, folder: str | os.PathLike | None) -> Encoder:
    """``encoder`` embedding files through the cache in ``folder`` (:class:`CachedEncoder`); None or '': as is."""
    return CachedEncoder(encoder, folder) if folder else encoder
