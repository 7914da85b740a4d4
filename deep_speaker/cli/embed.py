"""``deep-speaker embed FILES_OR_DIRS -o out.npz``: speaker embeddings of audio files (.npz, .npy, .csv, or Kaldi
.ark + .scp); ``--scheduler tcp://HOST:PORT`` embeds on a Dask cluster."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any, Iterable

from ..data.constants import AUDIO_EXTENSIONS
from ..encoders import DEFAULT_ENCODER, available_encoders, encoder_declaration
from ..encoders.constants import EMBEDDING_CACHE_ENV
from ..errors import DeepSpeakerError, Failure
from ..eval.constants import EXPORT_SUFFIXES, KALDI_SUFFIX
from . import EXIT_OK, EXIT_PARTIAL, native_stderr_silenced
from .options import finite_float

if TYPE_CHECKING:
    from ..encoders import Encoder
    from ..encoders.distributed import EncoderSpec
    from ..encoders.options import EncoderOption


def declared_options() -> dict[str, list[tuple[str, EncoderOption]]]:
    """Each option flag the registered encoders declare, with every (encoder, option) that takes it."""
    flags: dict[str, list[tuple[str, EncoderOption]]] = {}
    for name in available_encoders():
        for option in encoder_declaration(name).options:
            flags.setdefault(option.flag, []).append((name, option))
    return flags


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _option_help(takers: list[tuple[str, EncoderOption]]) -> str:
    """The help of one flag: each encoder taking it with its own text and default."""
    parts = [f"{name}: {option.help}" + ("" if option.default is None else f" (default {option.default})")
             for name, option in takers]
    return "; ".join(parts).replace("%", "%%")


def add_embedder_options(parser: argparse.ArgumentParser) -> None:
    """--encoder, --embedding-cache and the options every registered encoder declares (deep-speaker's --model,
    --window, --hop, --batch-size, --precision; the pretrained encoders' --model): how embeddings are made."""
    group = parser.add_argument_group("embedding")
    # No argparse choices: encoders registered later (plug-ins) count, and an unknown name is a one-line error.
    group.add_argument("--encoder", metavar="NAME", default=DEFAULT_ENCODER,
                       help=f"speaker encoder: {', '.join(available_encoders())} (default {DEFAULT_ENCODER})")
    for flag, takers in declared_options().items():
        first = takers[0][1]  # encoders sharing a flag share its type (--model: a path)
        # Default None: an option not given is not passed, so each encoder's own default applies.
        group.add_argument(flag, dest=_dest(flag), default=None, metavar=first.metavar, choices=first.choices,
                           type=finite_float if first.type is float else first.type, help=_option_help(takers))
    group.add_argument("--embedding-cache", metavar="DIR", default=os.environ.get(EMBEDDING_CACHE_ENV) or None,
                       help="keep embeddings in DIR (one SQLite file per encoder, model and settings) by each file's "
                            "content hash, so files embedded before are not decoded or embedded again (default: "
                            f"${EMBEDDING_CACHE_ENV} if set, else off; '' turns it off)")


def add_scheduler_option(parser: argparse.ArgumentParser) -> None:
    """--scheduler: embed files on an existing Dask cluster instead of in this process."""
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT", default=None,
                        help="embed the files on the Dask cluster of this scheduler (each worker loads the encoder "
                             "once; workers must see the files and the model under the same paths); default: here, "
                             "in one process")


def check_encoder_options(args: argparse.Namespace, names: list[str]) -> None:
    """Refuse an encoder option given on the command line that none of the encoders ``names`` takes (one line,
    exit 2); with several encoders, an option declared for one encoder alone (a weights path) counts only where
    it applies with several."""
    several = len(names) > 1
    for flag, takers in declared_options().items():
        if getattr(args, _dest(flag), None) is None:
            continue
        owners = [name for name, option in takers if option.several or not several]
        if not set(owners) & set(names):
            raise DeepSpeakerError(f"{flag} applies to {', '.join(owners) or 'no encoder'} only, which is not among "
                                   f"--encoder {getattr(args, 'encoder', DEFAULT_ENCODER)}")


def encoder_options(args: argparse.Namespace, name: str, several: bool = False) -> dict[str, Any]:
    """The options given on the command line that encoder ``name`` takes, as its factory's keywords, each checked
    by its declaration (one line before any model loads); ``several``: one of several encoders."""
    values = {}
    for option in encoder_declaration(name).options:
        value = getattr(args, _dest(option.flag), None)
        if value is None or (several and not option.several):
            continue
        reason = option.check(value) if option.check else None
        if reason:
            raise DeepSpeakerError(f"{option.flag} {value}: {reason}")
        values[option.name] = value
    return values


def encoder_spec(args: argparse.Namespace, *, model: str | os.PathLike | None = None, name: str | None = None,
                 several: bool = False) -> EncoderSpec:
    """The description of encoder ``name`` (default --encoder) with the options given that it takes (``model``
    overrides --model); ``several``: one of several encoders."""
    from ..encoders.distributed import EncoderSpec

    name = name or getattr(args, "encoder", DEFAULT_ENCODER)
    if not several:
        check_encoder_options(args, [name])
    options = {**encoder_options(args, name, several), **({} if model is None else {"model": model})}
    return EncoderSpec(name, options, getattr(args, "embedding_cache", None) or None)


def encoder_from_args(args: argparse.Namespace, *, model: str | os.PathLike | None = None, name: str | None = None,
                      several: bool = False) -> Encoder:
    """The encoder the options describe (``model`` overrides --model; the original's queries have only --model;
    ``name``, ``several``: one of several encoders); with --scheduler, one that embeds files on that Dask cluster."""
    from ..encoders.distributed import DaskEncoder

    spec = encoder_spec(args, model=model, name=name, several=several)
    scheduler = getattr(args, "scheduler", None)
    if scheduler:
        return DaskEncoder(spec, scheduler)
    if spec.name == DEFAULT_ENCODER:
        with native_stderr_silenced():  # Keras loads here, not with the parser: TensorFlow's C++ start-up lines
            importlib.import_module("deep_speaker.encoders.deepspeaker")
    return spec.build()


def report_failures(failures: Iterable[Failure]) -> int:
    """Print each failure as 'path: reason' on stderr; their number."""
    count = 0
    for failure in failures:
        print(f"skipped {failure}", file=sys.stderr)
        count += 1
    return count


def expand_inputs(items: list[str]) -> tuple[list[str], list[Failure]]:
    """Audio files of the arguments: files as given, folders searched for audio files; folders without audio fail."""
    from ..data.corpus import find_audio_files

    paths: list[str] = []
    failures: list[Failure] = []
    for item in items:
        if os.path.isdir(item):
            found, rejected = find_audio_files(item)
            paths += found
            failures += rejected
            if not found:
                failures.append(Failure(item, f"folder holds no audio file ({', '.join(AUDIO_EXTENSIONS)})"))
        else:
            paths.append(item)  # a missing or bad file is reported by the encoder with its reason
    return paths, failures


def run(args: argparse.Namespace) -> int:
    """Embed the inputs, write the output file, report the files that failed."""
    from ..eval.export import save_embeddings
    from ..eval.kaldi import save_kaldi

    paths, failures = expand_inputs(args.inputs)
    encoder = encoder_from_args(args)
    result = encoder.embed_files_with_failures(paths)
    failed = report_failures(failures + result.failures)
    if not result.paths:
        print(f"no file could be embedded; nothing written to {args.output}", file=sys.stderr)
        return EXIT_PARTIAL
    if args.output.lower().endswith(KALDI_SUFFIX):
        out, scp = save_kaldi(args.output, result.embeddings, result.paths)
        out = f"{out} + {scp}"
    else:
        out = save_embeddings(args.output, result.embeddings, result.paths, model_id=encoder.identity,
                              encoder=encoder.name)
    print(f"wrote {len(result.paths)} embeddings ({result.embeddings.shape[1]}-d, L2-normalised) to {out} "
          f"(model {encoder.weights}){f'; {failed} file(s) skipped' if failed else ''}")
    return EXIT_PARTIAL if failed else EXIT_OK


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed", help="speaker embeddings of audio files",
        description="Speaker embeddings (deep-speaker: 512-d, L2-normalised) of audio files or folders of them. A "
                    "long utterance is the normalised mean of overlapping windows; a short one is zero-padded to "
                    "the window. "
                    "Files that cannot be read are reported and skipped (exit code 1).")
    parser.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help="audio files, or folders searched for them")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help=f"output file by suffix: {', '.join(EXPORT_SUFFIXES + (KALDI_SUFFIX,))} (.npz holds "
                             f"embeddings, paths, model_identity, encoder; .ark: a Kaldi archive of float vectors "
                             f"keyed by utterance id, with its .scp beside it)")
    add_embedder_options(parser)
    add_scheduler_option(parser)
    parser.set_defaults(func=run)
