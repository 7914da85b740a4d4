"""Settings checks, the one home of them: a named choice among allowed values, and the difference of two settings dicts."""

from __future__ import annotations

from typing import Any, Iterable, TypeVar

from .errors import DeepSpeakerError

T = TypeVar("T")


def check_choice(value: T, choices: Iterable[T], what: str) -> T:
    """``value`` if it is one of ``choices``, else a one-line DeepSpeakerError ``unknown WHAT 'x'; choose one of ...``."""
    choices = tuple(choices)
    if value not in choices:
        raise DeepSpeakerError(f"unknown {what} {value!r}; choose one of {', '.join(map(str, choices))}")
    return value


def settings_difference(found: dict[str, Any], expected: dict[str, Any]) -> str:
    """The keys where two settings dicts differ, with both values ('' when they are equal)."""
    keys = sorted(set(found) | set(expected))
    return ", ".join(f"{k}: {found.get(k)!r} vs {expected.get(k)!r}" for k in keys if found.get(k) != expected.get(k))
