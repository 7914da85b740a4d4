"""Command-line options derived from a config dataclass, so that each default is written once (on the field).

A field becomes an option when its metadata has a ``help`` text. Other metadata keys: ``option`` (the option's
name when it is not the field's), ``flags`` (more option strings, e.g. ``-o``), ``metavar``, ``choices``, and
``default_help`` (the default in words, where it is not one value: a default factory, or one per phase),
``formatted`` (the help is an argparse format string that states its default itself: ``%(default)s``, ``%%``),
``value`` (the name of a checked argparse type of this module, e.g. ``"probability"``, where the annotation's is not
enough). The type comes from the annotation (``Path | None`` gives ``Path``); a ``bool`` field is a flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Mapping, Sequence

from ..errors import DeepSpeakerError
from ..job_config import parse_degradations


def _option_fields(config: type, only: Sequence[str] | None = None) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config) if "help" in f.metadata and (only is None or f.name in only)]


def _dest(f: dataclasses.Field) -> str:
    # The option's own name: a field such as `verbose` (Keras fit verbosity) must not take the CLI's --verbose.
    return f.metadata.get("option", f.name)


def _value_type(annotation: Any) -> Any:
    """The type an option converts its text to: the annotation without its ``| None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def finite_float(text: str) -> float:
    """argparse type: a float that is a number (``nan``, ``inf`` are refused as a usage error)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def probability(text: str) -> float:
    """argparse type: a probability strictly between 0 and 1 (a prior)."""
    value = finite_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not strictly between 0 and 1")
    return value


def degradations(text: str) -> tuple[tuple[str, float], ...]:
    """argparse type: ``job_config.parse_degradations`` (a refusal is a usage error)."""
    try:
        return parse_degradations(text)
    except DeepSpeakerError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--degrade: ")) from None


# The checked types a field's ``value`` metadata names (a config module imports nothing of the command line).
VALUE_TYPES = {"probability": probability, "degradations": degradations}


def _default(f: dataclasses.Field) -> Any:
    """The field's default, or None where a factory (computed when the config is made) stands for it."""
    return None if f.default is dataclasses.MISSING else f.default


def add_config_options(parser: argparse.ArgumentParser, config: type, *, underscores: bool = False,
                       dashes: bool = True, defaults: Mapping[str, Any] | None = None,
                       only: Sequence[str] | None = None) -> None:
    """One option per field of the dataclass ``config`` with a help text: ``--batch-size`` for ``batch_size``
    (and ``--batch_size`` too with ``underscores``; ``--batch_size`` alone without ``dashes``); ``defaults``
    replaces field defaults, by field name; ``only`` (field names) adds those fields' options alone, in the
    config's order."""
    hints = typing.get_type_hints(config)
    defaults = defaults or {}
    for f in _option_fields(config, only):
        meta, name = f.metadata, _dest(f)
        if not dashes:
            flags = [f"--{name}"]
        else:
            flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if underscores and "_" in name else [])
        flags += list(meta.get("flags", ()))
        default = defaults.get(f.name, _default(f))
        kwargs: dict[str, Any] = {"dest": name, "default": default}
        formatted = meta.get("formatted", False)
        help_text = meta["help"] if formatted else meta["help"].replace("%", "%%")
        value_type = _value_type(hints[f.name])
        if value_type is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = (VALUE_TYPES[meta["value"]] if "value" in meta
                              else finite_float if value_type is float else value_type)
            for key in ("metavar", "choices"):
                if key in meta:
                    kwargs[key] = meta[key]
            if not formatted and (f.name in defaults or default is not None):
                help_text += "; default: %(default)s"
            elif not formatted and "default_help" in meta:
                help_text += f"; default: {meta['default_help']}".replace("%", "%%")
        parser.add_argument(*flags, help=help_text, **kwargs)


def config_values(args: argparse.Namespace, config: type) -> dict[str, Any]:
    """The values of the options :func:`add_config_options` made, by field name; unset ones (None, or options this
    command does not have) left out so that the config's own default applies."""
    values = {f.name: getattr(args, _dest(f), None) for f in _option_fields(config)}
    return {name: value for name, value in values.items() if value is not None}


def check_report_options(args: argparse.Namespace) -> None:
    """``--far``, ``--bootstrap`` and ``--worst`` of a report command, by ``eval.config.check_report_numbers``."""
    from ..eval.config import check_report_numbers

    check_report_numbers(args.far, args.bootstrap, args.worst)


def add_html_option(parser: argparse.ArgumentParser) -> None:
    """``--html DIR`` of a report command: a self-contained page (``eval.html``), refused before any work when DIR
    is a non-empty folder that an earlier page did not write."""
    parser.add_argument("--html", metavar="DIR",
                        help="also write a self-contained HTML page DIR/index.html: the summary with its intervals, "
                             "the plots, a sortable table and audio players for the worst items (plots and audio "
                             "copied beside it); DIR must be new, empty or an earlier page's")


def check_html_option(args: argparse.Namespace) -> None:
    """Refuse ``--html DIR`` (one line, exit 2) before anything is embedded when DIR is not ours to write."""
    if getattr(args, "html", None):
        from ..eval.html import check_html_dir

        check_html_dir(args.html)
