"""``deep-speaker embed FILES_OR_DIRS -o out.npz``: speaker embeddings of audio files (.npz, .npy, .csv, or Kaldi
.ark + .scp); ``--scheduler tcp://HOST:PORT`` embeds on a Dask cluster."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any, Iterable

from ..data.constants import AUDIO_EXTENSIONS
from ..encoders import DEFAULT_ENCODER, available_encoders
from ..encoders.constants import DEFAULT_BATCH_SIZE, DEFAULT_HOP_SECONDS, DEFAULT_WINDOW_SECONDS, EMBEDDING_CACHE_ENV
from ..errors import Failure
from ..eval.constants import EXPORT_SUFFIXES, KALDI_SUFFIX
from ..model.constants import PRECISIONS
from . import EXIT_OK, EXIT_PARTIAL, native_stderr_silenced
from .options import finite_float

if TYPE_CHECKING:
    from ..encoders import Encoder
    from ..encoders.distributed import EncoderSpec

# The Deep Speaker options: (argparse dest, Embedder keyword). Given ones are passed to the encoder's factory;
# unset ones (None) are left out, so the Embedder's own defaults apply and other encoders are not handed them.
DEEP_SPEAKER_OPTIONS = (("window", "window_seconds"), ("hop", "hop_seconds"), ("batch_size", "batch_size"),
                        ("precision", "precision"))


def add_embedder_options(parser: argparse.ArgumentParser) -> None:
    """--encoder, --model, --embedding-cache, and Deep Speaker's --window, --hop, --batch-size, --precision: how
    embeddings are made."""
    group = parser.add_argument_group("embedding")
    # No argparse choices: encoders registered later (plug-ins) count, and an unknown name is a one-line error.
    group.add_argument("--encoder", metavar="NAME", default=DEFAULT_ENCODER,
                       help=f"speaker encoder: {', '.join(available_encoders())} (default {DEFAULT_ENCODER})")
    group.add_argument("--model", metavar="PATH", default=None,
                       help="the encoder's model; for deep-speaker: .keras, original .h5, or a training run folder "
                            "(default: the newest triplet checkpoint under checkpoints/, else the packaged demo model)")
    group.add_argument("--embedding-cache", metavar="DIR", default=os.environ.get(EMBEDDING_CACHE_ENV) or None,
                       help="keep embeddings in DIR (one SQLite file per encoder, model and settings) by each file's "
                            "content hash, so files embedded before are not decoded or embedded again (default: "
                            f"${EMBEDDING_CACHE_ENV} if set, else off; '' turns it off)")
    group.add_argument("--window", type=finite_float, default=None, metavar="SECONDS",
                       help=f"deep-speaker: window of long utterances, averaged (default {DEFAULT_WINDOW_SECONDS:g} "
                            f"s, the training crop)")
    group.add_argument("--hop", type=finite_float, default=None, metavar="SECONDS",
                       help=f"deep-speaker: step between windows (default {DEFAULT_HOP_SECONDS:g} s)")
    group.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help=f"deep-speaker: windows per forward pass (default {DEFAULT_BATCH_SIZE})")
    group.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="deep-speaker: compute precision (default float32; mixed_bfloat16 is faster on recent "
                            "CPUs/GPUs)")


def add_scheduler_option(parser: argparse.ArgumentParser) -> None:
    """--scheduler: embed files on an existing Dask cluster instead of in this process."""
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT", default=None,
                        help="embed the files on the Dask cluster of this scheduler (each worker loads the encoder "
                             "once; workers must see the files and the model under the same paths); default: here, "
                             "in one process")


def deep_speaker_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Deep Speaker options given on the command line, as Embedder keywords."""
    return {key: getattr(args, dest) for dest, key in DEEP_SPEAKER_OPTIONS if getattr(args, dest, None) is not None}


def encoder_spec(args: argparse.Namespace, model: str | os.PathLike | None = None) -> EncoderSpec:
    """The description of the encoder the options give (``model`` overrides --model)."""
    from ..encoders.distributed import EncoderSpec

    model = model or getattr(args, "model", None)
    options = {**deep_speaker_options(args), **({} if model is None else {"model": model})}
    return EncoderSpec(getattr(args, "encoder", DEFAULT_ENCODER), options,
                       getattr(args, "embedding_cache", None) or None)


def encoder_from_args(args: argparse.Namespace, model: str | os.PathLike | None = None) -> Encoder:
    """The encoder the options describe (``model`` overrides --model; the original's queries have only --model);
    with --scheduler, one that embeds files on that Dask cluster."""
    from ..encoders.distributed import DaskEncoder

    spec = encoder_spec(args, model)
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
        out = save_embeddings(args.output, result.embeddings, result.paths, encoder.identity, encoder=encoder.name)
    print(f"wrote {len(result.paths)} embeddings ({result.embeddings.shape[1]}-d, L2-normalised) to {out} "
          f"(model {encoder.identity}){f'; {failed} file(s) skipped' if failed else ''}")
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
