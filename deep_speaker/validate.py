"""What is read back from disk is checked against what wrote it, the one home of those checks.

Statistics, cohort and trial-score ``.npz`` files, calibration files and training states are written by this
package in one known shape; a file that does not have it (damaged, edited by hand, crafted) is refused with one
line naming the file (a :class:`~deep_speaker.errors.DeepSpeakerError`: exit 2), before any of it is used or
anything is written from it. Never a crash (exit 3) far from the file, and never a number silently wrong.

Lives beside ``errors`` and ``atomic`` so that every layer's readers (``metrics``, ``model``, ``eval``) use it.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import DeepSpeakerError

# The dtype kinds an array read back may have, by what it holds: our writers save floats as float32/float64,
# texts as numpy unicode ('<U', never object arrays: they would need pickle), counts as int64 and labels as
# integers or bools.
KINDS = {"float": "f", "text": "U", "int": "iu", "label": "biu"}
KIND_NAMES = {"float": "float", "text": "text", "int": "integer", "label": "0/1 label"}
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # how an .npz (a zip archive, possibly empty) begins


def load_npz(path: str | os.PathLike, required: Sequence[str], *, optional: Sequence[str] = (),
             what: str = "file") -> dict[str, np.ndarray]:
    """The arrays ``required`` (and those of ``optional`` present) of an ``.npz``, loaded without pickle.

    A one-line error naming ``path`` when it cannot be read, is no ``.npz`` archive (a ``.npy``, a truncated or
    foreign file), holds an object array in a wanted entry, or lacks a required entry; ``what`` names the kind of
    file in the messages ("statistics file", "cohort", ...).
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(len(ZIP_MAGIC[0]))
        if magic not in ZIP_MAGIC:  # a .npy, a pickle or a foreign file: never handed to np.load's other readers
            raise DeepSpeakerError(f"{path}: not a deep-speaker {what} (not an .npz archive)")
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in required if k not in data.files]
            if missing:
                raise DeepSpeakerError(f"{path}: not a deep-speaker {what} (missing {', '.join(missing)})")
            return {k: data[k] for k in (*required, *optional) if k in data.files}
    except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile, zlib.error) as exc:
        # ValueError: a pickled (object) array or a bad header; MemoryError: a header claiming a huge array; the
        # others: a damaged or truncated archive.
        raise DeepSpeakerError(f"{path}: cannot read {what} ({one_line(exc)})") from None


def one_line(exc: BaseException) -> str:
    """An exception's message as one line for a refusal (an OSError's strerror, else the first line, else its type)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return next((line for line in text.splitlines() if line.strip()), type(exc).__name__)


def _describe(shape: Sequence[int | None], kind: str) -> str:
    """``a 2-D float array [n, 64]``: free lengths named n, d, k in order."""
    free = iter("ndk")
    dims = ", ".join(next(free, "m") if d is None else str(d) for d in shape)
    name = KIND_NAMES[kind]
    return f"a {len(shape)}-D {name} array [{dims}]" if shape else f"a single {name} value"


def checked_array(array: Any, where: str | os.PathLike, name: str, *, shape: Sequence[int | None],
                  kind: str = "float") -> np.ndarray:
    """``array`` when it has ``shape`` (None: any length) and holds ``kind`` values ("float": finite floating
    point; "text": unicode; "int"; "label": bool or int); else one line naming ``where`` and the entry ``name``."""
    arr = np.asarray(array)
    if arr.ndim != len(shape) or any(want is not None and got != want for got, want in zip(arr.shape, shape)) \
            or arr.dtype.kind not in KINDS[kind]:
        raise DeepSpeakerError(f"{where}: {name} must be {_describe(shape, kind)}, got a {arr.ndim}-D {arr.dtype} "
                               f"array of shape {arr.shape}")
    if kind == "float" and not np.all(np.isfinite(arr)):
        raise DeepSpeakerError(f"{where}: {name} holds NaN or infinite values")
    return arr


def checked_text(array: Any, where: str | os.PathLike, name: str) -> str:
    """The string of a single unicode value (how ``np.savez`` stores one), else one line naming the file."""
    return str(checked_array(array, where, name, shape=(), kind="text"))


def loads_json(text: str | bytes, where: str | os.PathLike, what: str) -> Any:
    """Strict JSON, as ``atomic.json_text`` writes it: the non-standard ``NaN``/``Infinity`` tokens that
    Python's parser accepts by default are refused, so no non-finite number can come from one of our files."""
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not a JSON number")

    try:
        return json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:  # ValueError: also UnicodeDecodeError and JSONDecodeError
        raise DeepSpeakerError(f"{where}: not a valid {what} ({one_line(exc)})") from None


def _type_names(types: tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _shown(value: Any, limit: int = 40) -> str:
    """A value as a short piece of one line (JSON where it is JSON, so newlines stay escaped)."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "..."


def checked_field(record: Mapping[str, Any], key: str, types: type | tuple[type, ...], *, where: str | os.PathLike,
                  required: bool = True, low: float = -math.inf, high: float = math.inf) -> Any:
    """``record[key]`` when it is of ``types`` (a JSON bool is never taken for a number; an int is a float);
    numbers also finite and within ``[low, high]``. A missing optional key gives None. One line naming ``where``
    and the field otherwise."""
    if key not in record:
        if required:
            raise DeepSpeakerError(f"{where}: field {key!r} is missing")
        return None
    value = record[key]
    allowed = (types,) if isinstance(types, type) else tuple(types)
    accepts = allowed + ((int,) if float in allowed else ())
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, accepts):
        raise DeepSpeakerError(f"{where}: field {key!r} must be {_type_names(allowed)}, got {_shown(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A JSON integer is a Python int of any size: compared, never converted (it could overflow a float).
        if isinstance(value, float) and not math.isfinite(value) or not low <= value <= high:
            bounds = (f" in [{low:g}, {high:g}]" if math.isfinite(low) and math.isfinite(high) else
                      f" >= {low:g}" if math.isfinite(low) else f" <= {high:g}" if math.isfinite(high) else "")
            raise DeepSpeakerError(f"{where}: field {key!r} must be a finite number{bounds}, got {_shown(value)}")
    return value
