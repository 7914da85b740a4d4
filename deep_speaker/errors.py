"""What can go wrong, in one place: the exception hierarchy and the record of an input that failed.

- :class:`DeepSpeakerError`: a problem the user can fix (bad argument, missing model or data, incompatible
  settings); its message is one line. The CLI prints it and exits 2.
- :class:`InputError`: one input (a file, a cache entry) that cannot be used, with its path and reason. A batch
  workflow records it as a :class:`Failure` and goes on with the other inputs (the CLI then exits 1).
- :class:`InternalError`: a broken invariant of our own, i.e. a bug; the CLI exits 3, as for any unexpected
  exception, and asks for a report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable


class DeepSpeakerError(Exception):
    """A problem the user can fix (bad input, missing model, wrong settings); its message is one line."""


class InternalError(Exception):
    """A broken invariant of deep-speaker itself (a bug), not something the user did."""


@dataclass(frozen=True, order=True)
class Failure:
    """An input that gave no result, and why: the one record of it in summaries, reports and manifests."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{printable(self.path)}: {printable(self.reason)}"

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Failure":
        return cls(str(record["path"]), str(record["reason"]))


class InputError(DeepSpeakerError, ValueError):
    """One input that cannot be used (unreadable, empty, silent, too short, not fitting a layout)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(str(self.failure))  # the failure's line: one line whatever the path holds

    @property
    def failure(self) -> Failure:
        return Failure(self.path, self.reason)


def printable(text: str) -> str:
    """``text`` safe for one line of a report: characters that are not printable (a newline or other control
    character in a file name, a line separator) escaped as ``repr`` escapes them, and the bytes of a file name that
    is not UTF-8 (which Python holds as lone surrogates, and which no terminal or UTF-8 file can take) as ``\\xNN``.
    Printable text, the common case, is returned as it is (backslashes too: the point is one line per record)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else
                   f"\\x{ord(ch) - 0xDC00:02x}" if "\udc80" <= ch <= "\udcff" else repr(ch)[1:-1]
                   for ch in text)


def failures_message(failures: Iterable[Failure], what: str = "input(s) failed", shown: int = 5) -> str:
    """One line naming the first ``shown`` failures: ``N input(s) failed: a: why; b: why (and K more)``."""
    failures = list(failures)
    listed = "; ".join(map(str, failures[:shown]))
    more = f" (and {len(failures) - shown} more)" if len(failures) > shown else ""
    return f"{len(failures)} {what}: {listed}{more}"
