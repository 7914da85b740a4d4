"""Corpus layouts: which audio files a directory holds and the speaker/utterance ids they carry.

Layouts: ``vctk`` (``wav48/p225/p225_001.wav``, ``wav48_silence_trimmed/p225/p225_001_mic1.flac``),
``librispeech`` (``speaker/chapter/speaker-chapter-utt.flac``) and ``folders``
(``speaker_id/anything.wav|flac|...``, any of AUDIO_EXTENSIONS). ``auto`` picks the first of vctk/librispeech that fits most
files, else folders. Files that do not fit the layout are rejected with a reason, never dropped
silently; two files giving the same ids are an error. A scan can be kept in a record file and reused while no
folder of the corpus has changed (:func:`scan_corpus`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..atomic import atomic_write
from ..errors import DeepSpeakerError, Failure
from ..settings import check_choice
from .audio import AUDIO_EXTENSIONS
from .constants import LAYOUTS, MIC_CHOICES

# Ids become cache directory and file names, so they must be plain, non-hidden path components.
_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
PLAIN_ID_PATTERN = f"^{_SAFE_ID.pattern}$"  # is_plain_id as a pattern Arrow matches column-wise (plain_ids)
DIRECTORY_MISFIT = "is a directory, not an audio file"
_VCTK_NAME = re.compile(r"(?P<spk>[A-Za-z0-9]+)_(?P<num>[0-9]+)(?:_(?P<mic>mic[0-9]))?")
_LIBRI_NAME = re.compile(r"(?P<spk>[0-9]+)-(?P<chapter>[0-9]+)-(?P<num>[0-9]+)")
VCTK_MISFIT = "does not fit the VCTK layout (wav48/<speaker>/<speaker>_<number>[_micN].wav|flac)"
LIBRI_MISFIT = "does not fit the LibriSpeech layout (<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac)"
SCAN_RECORD_FORMAT = "deep-speaker-corpus-scan/2"
# A scan record's rows: the ids, the folder of the file (its position in the record's folder list) and the rest of
# its name after the utterance id (the extension, VCTK's microphone): a path is made of its parts, never read whole,
# so a row can only name a file in a recorded folder, and checking that costs no string split (_rows_problem).
_SCAN_SCHEMA = pa.schema([("speaker", pa.string()), ("utterance", pa.string()), ("folder", pa.int32()),
                          ("tail", pa.dictionary(pa.int32(), pa.string()))])
# A folder's mtime has a resolution (2 s on FAT, a clock tick elsewhere): a file added in the same tick as the change
# a record saw could leave it unchanged, so folders changed this close before a scan are never trusted (as git's
# "racy" entries are not).
RACY_NS = 5 * 10**9

log = logging.getLogger(__name__)


class Utterance(NamedTuple):
    """One audio file of a corpus and the ids its layout gives it (ordered by speaker, utterance, path).

    A named tuple rather than a frozen dataclass: a corpus makes one per file, and a frozen dataclass costs several
    times a tuple to create at 10^5 files."""

    speaker: str
    utterance: str
    path: str


def is_plain_id(name: object) -> bool:
    """Whether a speaker or utterance id is a plain, non-hidden path component (ids name cache folders and files)."""
    return isinstance(name, str) and _SAFE_ID.fullmatch(name) is not None


def id_failure(path: str, speaker: object, utterance: object) -> Failure:
    """Why a file whose ids are not plain names (is_plain_id) is neither cached nor stored."""
    return Failure(path, f"speaker/utterance id {speaker!r}/{utterance!r} is not a plain name")


def plain_ids(column: pa.Array | pa.ChunkedArray, repeated: bool = False) -> np.ndarray:
    """is_plain_id of each string of an Arrow column (null: False), column-wise: ids of 10^5..10^6 rows are
    checked wherever they are read from or written to disk. ``repeated``: the column holds runs of one id (a
    speaker's rows), each matched once (a row equal to the one before has its answer), so 10^5 rows of 10^3
    speakers cost as much as 10^3."""
    if repeated and len(column) > 1:
        first = np.append(True, pc.fill_null(pc.not_equal(column[1:], column[:-1]), True).to_numpy(
            zero_copy_only=False))
        return plain_ids(column.filter(pa.array(first)))[np.cumsum(first) - 1]
    return pc.fill_null(pc.match_substring_regex(column, PLAIN_ID_PATTERN), False).to_numpy(zero_copy_only=False)


def _stem(name: str) -> str:
    """os.path.splitext(name)[0] (leading dots are not an extension's), without its overhead at 10^5 files."""
    dot = name.rfind(".")
    return name[:dot] if dot > 0 and name[:dot].strip(".") else name


def _parse_vctk(parts: tuple[str, ...]) -> tuple[str, str, Optional[str]] | str:
    """``.../<spk>/<spk>_<num>[_micN].ext`` -> (spk, spk_num, micN)."""
    # The name starting with its folder's name and "_" is necessary (spk is what precedes the first "_"): a cheap
    # refusal first, since layout detection tries every file of a large corpus of another layout.
    if len(parts) < 2 or not parts[-1].startswith(parts[-2] + "_"):
        return VCTK_MISFIT
    match = _VCTK_NAME.fullmatch(_stem(parts[-1]))
    if not match or match["spk"] != parts[-2]:
        return VCTK_MISFIT
    return match["spk"], f"{match['spk']}_{match['num']}", match["mic"]


def _parse_librispeech(parts: tuple[str, ...]) -> tuple[str, str, Optional[str]] | str:
    """``<spk>/<chapter>/<spk>-<chapter>-<num>.ext`` -> (spk, spk-chapter-num)."""
    if len(parts) < 3 or not parts[-1].startswith(f"{parts[-3]}-{parts[-2]}-"):  # necessary, as for VCTK
        return LIBRI_MISFIT
    stem = _stem(parts[-1])
    match = _LIBRI_NAME.fullmatch(stem)
    if not match or (match["spk"], match["chapter"]) != (parts[-3], parts[-2]):
        return LIBRI_MISFIT
    return match["spk"], stem, None


def _parse_folders(parts: tuple[str, ...]) -> tuple[str, str, Optional[str]] | str:
    """``<speaker>/<name>.ext`` (the parent folder is the speaker) -> (speaker, name)."""
    if len(parts) < 2:
        return "not inside a speaker folder (expected <speaker_id>/<audio file>)"
    return parts[-2], _stem(parts[-1]), None


# A parser maps a file's parts below the audio directory to (speaker, utterance, mic or None) or a reason.
PARSERS: dict[str, Callable[[tuple[str, ...]], object]] = {
    "vctk": _parse_vctk, "librispeech": _parse_librispeech, "folders": _parse_folders}


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off meanwhile (as Mercurial does around large builds): a scan of 10^5 files makes
    about 10^6 objects that all stay alive, so its passes find nothing and cost a tenth of a no-op update."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def find_audio_files(audio_dir: str | os.PathLike) -> tuple[list[str], list[Failure]]:
    """All audio files (AUDIO_EXTENSIONS) under ``audio_dir`` (sorted); directories named like audio files are rejected."""
    files, rejected, _ = _walk_audio(audio_dir)
    return files, rejected


def _walk_audio(audio_dir: str | os.PathLike) -> tuple[list[str], list[Failure], list[tuple[str, os.stat_result]]]:
    """find_audio_files, with each folder walked and its stat (what a scan record checks)."""
    files: list[str] = []
    rejected: list[Failure] = []
    folders: list[tuple[str, os.stat_result]] = []
    seen_dirs: set[tuple[int, int]] = set()
    for root, dirnames, filenames in os.walk(audio_dir, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop: do not walk the same folder twice
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        folders.append((root, st))
        for name in list(dirnames):
            if name.lower().endswith(AUDIO_EXTENSIONS):
                rejected.append(Failure(os.path.join(root, name), DIRECTORY_MISFIT))
                dirnames.remove(name)
        dirnames.sort()
        prefix = os.path.join(root, "")  # then a concatenation per file: os.path.join costs more at 10^5 files
        files += [prefix + f for f in sorted(filenames) if f.lower().endswith(AUDIO_EXTENSIONS)]
    return files, rejected, folders


def relative_parts(audio_dir: str | os.PathLike, paths: list[str]) -> list[tuple[str, ...]]:
    """The parts of each path below ``audio_dir`` (files find_audio_files found there), by string operations:
    pathlib's parsing would cost more than the rest of a no-op update of a large corpus."""
    prefix = os.path.join(os.fspath(audio_dir), "")
    cut = len(prefix)
    return [tuple((p[cut:] if p.startswith(prefix) else os.path.relpath(p, audio_dir)).split(os.sep))
            for p in paths]


def detect_layout(rel: list[tuple[str, ...]]) -> tuple[str, list | None]:
    """The layout most files fit (given their relative_parts): vctk, then librispeech, else folders; with the
    files parsed in it when it is vctk or librispeech (the scan uses them rather than parsing again).

    A layout is given up once half of the files do not fit it, so a large corpus is not parsed in full twice.
    """
    for layout in ("vctk", "librispeech"):
        parse, parsed, misses = PARSERS[layout], [], 0
        for parts in rel:
            result = parse(parts)
            parsed.append(result)
            if isinstance(result, str):
                misses += 1
                if misses * 2 >= len(rel):
                    break
        else:
            if rel:
                return layout, parsed
    return "folders", None


def _speaker_folder(path: str, speaker: str) -> str:
    """The nearest folder above ``path`` named ``speaker`` (by string operations: pathlib's parents cost a tenth of
    a large corpus's scan)."""
    folder = path
    while os.sep in folder:
        folder = folder[:folder.rfind(os.sep)]
        if folder == speaker or folder.endswith(os.sep + speaker):
            return folder
    raise ValueError(f"{path} has no folder named {speaker!r}")  # the parsers take the speaker from a folder name


def _vctk_root(audio_dir: Path) -> Path:
    """Refuse a VCTK folder holding both the old ``wav48`` and the new ``wav48_silence_trimmed`` trees."""
    trees = [d for d in ("wav48", "wav48_silence_trimmed") if (audio_dir / d).is_dir()]
    if len(trees) > 1:
        raise DeepSpeakerError(f"{audio_dir} holds both wav48/ and wav48_silence_trimmed/ (the same utterances "
                               f"twice); point the audio directory at one of them")
    return audio_dir


def scan_corpus(audio_dir: str | os.PathLike, *, layout: str = "auto", mic: str = "mic1",
                record: Optional[Path] = None) -> tuple[list[Utterance], list[Failure], str]:
    """The utterances of ``audio_dir`` (sorted by ids), the rejected paths and the layout used.

    VCTK recordings with several microphones keep ``mic`` (mic2 is used only where mic1 is missing,
    or the other way round). Raises :class:`DeepSpeakerError` when two files give the same ids or two
    folders the same speaker.

    With ``record`` (a file the caller owns), the result is kept there with each folder's inode, mtime and ctime,
    and returned from it without listing or parsing a file while every folder is as recorded: adding, removing or
    renaming an entry changes its folder's mtime and ctime. A file changed in place does not (the caller stats
    each file). A record that is unreadable or describes another scan is ignored and rewritten.
    """
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise DeepSpeakerError(f"{audio_dir}: audio directory not found")
    check_choice(layout, LAYOUTS, "layout")
    check_choice(mic, MIC_CHOICES, "microphone")
    # What the result depends on besides the folders (relative paths: on the working directory as well).
    key = {"format": SCAN_RECORD_FORMAT, "audio_dir": str(audio_dir), "layout": layout, "mic": mic,
           "cwd": None if audio_dir.is_absolute() else os.getcwd()}
    with gc_paused():
        if record is not None and (kept := _read_scan_record(record, key)) is not None:
            return kept
        started_ns = time.time_ns()
        utterances, rejected, found, folders = _scan(audio_dir, layout, mic)
        if record is not None:
            try:
                _write_scan_record(record, key, started_ns, utterances, rejected, found, folders)
            except (OSError, UnicodeError, ValueError, pa.ArrowException) as exc:  # e.g. a path that is not UTF-8
                log.debug("%s: scan not recorded (%s)", record, exc)
        return utterances, rejected, found


def _folder_state(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _write_scan_record(record: Path, key: dict, started_ns: int, utterances: list[Utterance],
                       rejected: list[Failure], layout: str, folders: list[tuple[str, os.stat_result]]) -> None:
    """Keep a scan in ``record`` (Arrow IPC: the utterances as columns, _SCAN_SCHEMA; the rest in the schema's
    metadata). ValueError where a path is not its folder, utterance id and tail (none of the layouts' is not)."""
    meta = {**key, "started_ns": started_ns, "found_layout": layout,
            "folders": [[path, *_folder_state(st)] for path, st in folders],
            "rejected": [f.to_dict() for f in rejected]}
    number = {path: n for n, (path, _) in enumerate(folders)}
    positions, tails = [], []
    for speaker, utterance, path in utterances:
        cut = path.rfind(os.sep)
        if cut < 0 or not path.startswith(utterance, cut + 1) or path[:cut] not in number:
            raise ValueError(f"{path} is not its folder, its utterance id {utterance!r} and an extension")
        positions.append(number[path[:cut]])
        tails.append(path[cut + 1 + len(utterance):])
    table = pa.table([[u.speaker for u in utterances], [u.utterance for u in utterances],
                      pa.array(positions, pa.int32()), pa.array(tails, pa.string()).dictionary_encode()],
                     schema=_SCAN_SCHEMA.with_metadata({"deep-speaker": json.dumps(meta)}))
    with atomic_write(record) as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)


def _read_scan_record(record: Path, key: dict) -> Optional[tuple[list[Utterance], list[Failure], str]]:
    """The scan kept in ``record`` when it was made with ``key``, no folder has changed since, and it is what a scan
    of the folder can have written (_folders_problem, _missing_folders, _rows_problem); else None (a record that
    cannot be is logged)."""
    try:
        with pa.OSFile(str(record)) as source:
            table = pa.ipc.open_file(source).read_all()
        meta = json.loads(table.schema.metadata[b"deep-speaker"])
        if table.schema.remove_metadata() != _SCAN_SCHEMA or any(meta.get(k) != v for k, v in key.items()):
            return None
        root, layout = key["audio_dir"], meta["found_layout"]
        problem = _folders_problem(meta["folders"], root) or (
            None if layout in PARSERS and key["layout"] in ("auto", layout) else f"layout {layout!r}")
        if problem is None:
            stats = []
            for path, *state in meta["folders"]:
                st = os.stat(path)
                # Changed since, or changed so shortly before the recorded scan that a later change may not show.
                if _folder_state(st) != state or max(state[1:]) >= meta["started_ns"] - RACY_NS:
                    return None
                stats.append(st)
            folders = [f[0] for f in meta["folders"]]
            number = {path: n for n, path in enumerate(folders)}
            parents = [-1] + [number[path[:path.rfind(os.sep)]] for path in folders[1:]]  # the root's: -1
            rejected = [Failure.from_dict(f) for f in meta["rejected"]]
            table = table.combine_chunks()
            problem = (_missing_folders(number, parents, stats, rejected)
                       or _rows_problem(table, layout, folders, parents))
        if problem is not None:
            log.warning("%s: not used (%s); the corpus is scanned again and the record rewritten", record, problem)
            return None
        speaker, utterance, folder, tail = (table.column(name) for name in _SCAN_SCHEMA.names)
        paths = pc.binary_join_element_wise(pa.array([path + os.sep for path in folders]).take(folder), utterance,
                                            tail.cast(pa.string()), "")
        # Made by tuple.__new__ from C (no Python frame per row, as Utterance(...) has): a third less time at 10^5
        # rows, which pays for most of the checks above.
        rows = zip(speaker.to_pylist(), utterance.to_pylist(), paths.to_pylist())
        utterances = list(map(functools.partial(tuple.__new__, Utterance), rows))
        return utterances, rejected, layout
    except FileNotFoundError:
        return None
    except (OSError, KeyError, TypeError, ValueError, AttributeError, pa.ArrowException) as exc:
        log.debug("%s: not used (%s); the corpus is scanned again", record, exc)
        return None


def _folders_problem(folders: object, root: str) -> Optional[str]:
    """Why a recorded folder list cannot be a walk of ``root`` (None when it can): the walk lists the root first,
    each folder after its parent, once, by its name below it (never ``..``, never a folder named like an audio
    file), so every recorded folder lies under the root. Checked before any of them is stat-ed. (A symlinked folder
    below the root is walked, so recorded, by a scan as well: a record names nothing a scan could not.)"""
    # (Its inode and times are compared with the folder's own by the caller: anything else there is a change.)
    if not (isinstance(folders, list) and folders
            and all(isinstance(f, list) and len(f) == 4 and isinstance(f[0], str) for f in folders)):
        return "malformed folder list"
    if folders[0][0] != root:
        return f"its first folder {folders[0][0]!r} is not the audio folder"
    seen = {root}
    for path, *_ in folders[1:]:
        cut = path.rfind(os.sep)
        name = path[cut + 1:]
        if path[:cut] not in seen or path in seen or name in ("", ".", "..") \
                or name.lower().endswith(AUDIO_EXTENSIONS):
            return f"folder {path!r} is not one a walk of the audio folder lists"
        seen.add(path)
    return None


def _missing_folders(number: dict[str, int], parents: list[int], stats: list[os.stat_result],
                     rejected: list[Failure]) -> Optional[str]:
    """Why a recorded folder list (as _folders_problem checked it: each folder's ``number`` in it, the number of
    its parent, each stat-ed now) may lack a folder, or None: a record that does would hide that folder's new
    files from every later update. A folder's link count is 2 plus its subfolders on most file systems (not btrfs:
    1), and the walk lists each subfolder but those named like audio files (rejected); symlinked folders are
    listed, not counted."""
    folders = list(number)
    children = np.bincount(np.array(parents[1:], np.int64), minlength=len(folders))
    for failure in rejected:
        parent = number.get(failure.path[:failure.path.rfind(os.sep)])
        if failure.reason == DIRECTORY_MISFIT and parent is not None and os.path.isdir(failure.path):
            children[parent] += 1
    for path, st, count in zip(folders, stats, children.tolist()):
        if st.st_nlink >= 2 and count < st.st_nlink - 2:
            return f"{path} holds {st.st_nlink - 2} folders, the record {count}"
    if stats[0].st_nlink < 2:  # no link counts: the top level at least is listed (one folder: cheap)
        with os.scandir(folders[0]) as entries:
            missing = [e.path for e in entries if e.is_dir() and e.path not in number
                       and not e.name.lower().endswith(AUDIO_EXTENSIONS)]
        if missing:
            return f"folder {missing[0]} is missing from it"
    return None


# The utterance ids of each layout (each a plain name: is_plain_id), and the rest of their files' names.
_UTTERANCE_IDS = {"folders": PLAIN_ID_PATTERN, "vctk": r"^[A-Za-z0-9]+_[0-9]+$",
                  "librispeech": r"^[0-9]+-[0-9]+-[0-9]+$"}
_MICROPHONE_TAIL = re.compile(r"_mic[0-9]")


def _fits_tail(tail: object, layout: str) -> bool:
    """Whether the rest of a file name after its utterance id is an audio extension (any case, as the walk takes
    them) of the layout, with VCTK's microphone before it."""
    if not isinstance(tail, str):
        return False
    if layout == "vctk" and _MICROPHONE_TAIL.match(tail):
        tail = tail[5:]
    return tail.lower() in AUDIO_EXTENSIONS


def _split_last(column: pa.Array, separator: str) -> Optional[tuple[pa.Array, pa.Array]]:
    """What precedes and what follows the last ``separator`` of each string; None when one has none."""
    parts = pc.split_pattern(column, separator, max_splits=1, reverse=True)
    if not pc.all(pc.equal(pc.list_value_length(parts), 2)).as_py():
        return None
    return pc.list_element(parts, 0), pc.list_element(parts, 1)


def _rows_problem(table: pa.Table, layout: str, folders: list[str], parents: list[int]) -> Optional[str]:
    """Why the rows of a scan record (one chunk; its folders as _folders_problem checked them, the number of each
    one's parent) cannot be what a scan of ``folders[0]`` in ``layout`` wrote, or
    None: each file is in a recorded folder (as _folders_problem checked them: below the root) that is or lies in
    its speaker's folder, named by its utterance id and an extension of the layout; its ids fit the layout and are
    plain names; sorted by ids without repeats, one folder per speaker. A record that could name files outside the
    folder, or ids that are no plain names, is never used. Column-wise (Arrow, numpy): a Python loop over 10^5 rows
    would cost a no-op update a good part of its time; the parsers (PARSERS) say the same per file."""
    if not table.num_rows:
        return None
    speaker, utterance, folder, tail = (table.column(name).chunk(0) for name in _SCAN_SCHEMA.names)
    none = len(folders)  # the number of no recorded folder (named "", the parent of the root)
    at = pc.fill_null(folder, none).to_numpy()
    at = np.where((at >= 0) & (at < none), at, none)
    # The speaker's folder (LibriSpeech: the chapter's parent), never the root itself (number 0), is named as the
    # speaker id.
    above = np.array([none if n < 0 else n for n in parents] + [none])
    home = above[at] if layout == "librispeech" else at
    names = pa.array([path[path.rfind(os.sep) + 1:] for path in folders] + [""], pa.string())

    def same(a: pa.Array, b: pa.Array) -> np.ndarray:
        return pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)

    tails = np.array([_fits_tail(t, layout) for t in tail.dictionary.to_pylist()] + [False])
    fits = (home > 0) & (home < none) & same(speaker, names.take(pa.array(home))) \
        & tails[pc.fill_null(tail.indices, -1).to_numpy()]  # -1: the False after them
    if layout != "folders":  # the speaker (LibriSpeech: and the chapter) the utterance id repeats
        repeated = pc.binary_join_element_wise(speaker, names.take(pa.array(at)), "-") \
            if layout == "librispeech" else speaker
        prefix = (_split_last(utterance, "_" if layout == "vctk" else "-") or (None, None))[0]
        fits &= same(prefix, repeated) if prefix is not None else False
    checks = {"is no plain speaker id": plain_ids(speaker, repeated=True),
              "is no plain utterance id of the layout": pc.fill_null(pc.match_substring_regex(
                  utterance, _UTTERANCE_IDS[layout]), False).to_numpy(zero_copy_only=False),
              "does not lie in a recorded folder below the audio folder": at < none,
              f"does not fit the {layout} layout": fits}
    if len(speaker) > 1:  # sorted (as the scan writes them), no id twice, each speaker in one folder
        first = np.append(True, ~same(speaker[:-1], speaker[1:]))
        in_order = pc.fill_null(pc.less(speaker[:-1], speaker[1:]), False).to_numpy(zero_copy_only=False) | (
            ~first[1:] & pc.fill_null(pc.less(utterance[:-1], utterance[1:]), False).to_numpy(zero_copy_only=False))
        checks["is out of order, repeated, or its speaker in another folder"] = np.append(
            True, in_order & (first[1:] | (home[:-1] == home[1:])))
    for what, ok in checks.items():
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            return f"row {row} ({speaker[row].as_py()!r}/{utterance[row].as_py()!r}) {what}"
    return None


def _scan(audio_dir: Path, layout: str,
          mic: str) -> tuple[list[Utterance], list[Failure], str, list[tuple[str, os.stat_result]]]:
    files, rejected, walked = _walk_audio(audio_dir)
    rel = relative_parts(audio_dir, files)
    parsed_files = None
    if layout == "auto":
        layout, parsed_files = detect_layout(rel)
    if layout == "vctk":
        _vctk_root(audio_dir)
    if parsed_files is None:
        parsed_files = map(PARSERS[layout], rel)
    chosen: dict[tuple[str, str], tuple[Optional[str], str]] = {}
    speaker_dirs: dict[str, tuple[str, str]] = {}  # speaker -> (its folder, the first file found there)
    folders: dict[tuple[str, str], str] = {}  # (a file's folder, speaker) -> the speaker's folder
    for path, parsed in zip(files, parsed_files):
        if isinstance(parsed, str):
            rejected.append(Failure(path, parsed))
            continue
        speaker, utterance, file_mic = parsed
        # The speaker id and its folder are checked once per folder of files (10^5 files share 10^3 of them).
        parent = path[:path.rfind(os.sep)]  # os.path.dirname, without its per-call overhead
        folder = folders.get((parent, speaker))
        if folder is None:
            folder = folders[(parent, speaker)] = _speaker_folder(path, speaker) if is_plain_id(speaker) else ""
            # The speaker id is a folder name: two folders of that name are two people the ids would merge.
            first_folder, first_file = speaker_dirs.setdefault(speaker, (folder, path))
            if folder and first_folder != folder:
                raise DeepSpeakerError(f"two folders give speaker {speaker!r}: {first_file} and {path}; rename one "
                                       f"folder, or point at one of their parents")
        if not folder or _SAFE_ID.fullmatch(utterance) is None:
            rejected.append(id_failure(path, speaker, utterance))
            continue
        key = (speaker, utterance)
        if key in chosen:
            other_mic, other = chosen[key]
            if other_mic != file_mic and mic in (other_mic, file_mic):
                if file_mic == mic:  # the preferred microphone replaces the other one
                    chosen[key] = (file_mic, path)
                continue
            raise DeepSpeakerError(f"two files give speaker {speaker!r} utterance {utterance!r}: {other} and {path}")
        chosen[key] = (file_mic, path)
    utterances = [Utterance(spk, utt, path) for (spk, utt), (_, path) in sorted(chosen.items())]
    return utterances, rejected, layout, walked


def list_utterances(audio_dir: str | os.PathLike, layout: str = "auto", mic: str = "mic1") -> list[Utterance]:
    """The utterances of ``audio_dir`` sorted by (speaker, utterance); files that fit no layout are left out."""
    return scan_corpus(audio_dir, layout=layout, mic=mic)[0]
