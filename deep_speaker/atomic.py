"""Atomic file output, the one home of it: a killed process never leaves half a file under the final name.

Every file deep-speaker writes goes through here: arrays and manifests of the cache, training inputs, models
and training state, statistics, embeddings, reports. JSON reports are strict (no NaN or infinity, which JSON
does not have and other tools refuse). Reading our own JSON documents back (a cache's manifests, a store's
listings: :func:`read_json_document`, :func:`read_json_parts`) sits beside writing them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

from .errors import DeepSpeakerError


def _process_umask() -> int:
    """The umask, read once: mkstemp creates files 0600 whatever it is, which would lock other users of a shared cache out."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_process_umask()  # what open() would have given the file


def _writable_target(path: str | os.PathLike) -> Path:
    """``path`` as a Path with its folder created; an OSError naming it when it is a folder."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _temporary_beside(path: str | os.PathLike, suffix: str) -> Iterator[tuple[Path, int]]:
    """A temporary file beside ``path`` (its path and open descriptor), renamed onto ``path`` with the umask's
    mode when the block succeeds and deleted when it fails; errors name ``path``, not the temporary."""
    path = _writable_target(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        yield Path(tmp), fd
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # Name the file the user asked for, not our temporary; and name it where a write failed without a name
        # (a full disk is an OSError of the file object with no filename: the message must say where).
        if isinstance(exc, OSError) and (exc.filename == tmp or (exc.filename is None and exc.errno is not None)):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """A binary file beside ``path`` (``.<name>.XXXX<suffix>``), renamed onto ``path`` only when the block succeeds."""
    with _temporary_beside(path, suffix) as (_, fd), os.fdopen(fd, "wb") as f:
        yield f


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    with atomic_write(path) as f:
        f.write(data)


def json_text(value: Any, indent: int | None = 2) -> str:
    """Strict JSON (``allow_nan=False``: a NaN or infinity is a ValueError, never written), UTF-8, final newline."""
    return json.dumps(value, indent=indent, allow_nan=False, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
    """Write ``value`` as strict JSON (:func:`json_text`) to ``path`` atomically; returns the path."""
    write_atomic(path, json_text(value, indent).encode("utf8"))
    return Path(path)


def read_json_document(path: Path, what: str, check: Callable[[object, Path], None]) -> dict:
    """One JSON file of ours (a manifest, a listing), parsed and then checked by ``check(document, path)``."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeepSpeakerError(f"{path}: unreadable {what} ({exc})") from None
    check(document, path)
    return document


def read_json_parts(folder: Path, main: str, parts: str, *, what: str,
                    check: Callable[[object, Path], None]) -> list[tuple[Path, dict]]:
    """The folder's main JSON file (first, when there) and its part files (glob ``parts``, sorted), each read
    by read_json_document: the shape of a cache's manifests and of a store's listings."""
    paths = sorted(folder.glob(parts))
    if (folder / main).is_file():
        paths.insert(0, folder / main)
    return [(path, read_json_document(path, what, check)) for path in paths]


def save_model(model: Any, path: str | os.PathLike, extra: Mapping[str, bytes] | None = None) -> Path:
    """``model.save`` (a Keras model, ``.keras``) to a temporary name beside ``path``, then renamed onto it.

    ``extra`` entries are added to the ``.keras`` zip before the rename, so they and the model are one file
    (Keras ignores entries it does not know).
    """
    # Keras picks the format by suffix and insists on .keras, so the temporary name keeps it.
    with _temporary_beside(path, ".tmp.keras") as (tmp, fd):
        os.close(fd)
        model.save(tmp)
        if extra:
            with zipfile.ZipFile(tmp, "a") as archive:
                for name, data in extra.items():
                    archive.writestr(name, data)
    return Path(path)
