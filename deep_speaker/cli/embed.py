"""``deep-speaker embed FILES_OR_DIRS -o out.npz``: speaker embeddings of audio files (.npz, .npy or .csv)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Iterable

from ..data.corpus import find_audio_files
from ..encoders.deepspeaker import (DEFAULT_BATCH_SIZE, DEFAULT_HOP_SECONDS, DEFAULT_WINDOW_SECONDS, EXPORT_SUFFIXES, EmbedFailure,
                     Embedder, save_embeddings)
from ..model.rescnn import PRECISIONS
from . import EXIT_OK, EXIT_PARTIAL


def add_embedder_options(parser: argparse.ArgumentParser) -> None:
    """--model, --window, --hop, --batch-size, --precision: how embeddings are computed."""
    group = parser.add_argument_group("embedding")
    group.add_argument("--model", metavar="PATH", default=None,
                       help="model: .keras, original .h5, or a training run folder (default: the newest triplet "
                            "checkpoint under checkpoints/, else the packaged demo model)")
    group.add_argument("--window", type=float, default=DEFAULT_WINDOW_SECONDS, metavar="SECONDS",
                       help=f"window of long utterances, averaged (default {DEFAULT_WINDOW_SECONDS:g} s, the "
                            f"training crop)")
    group.add_argument("--hop", type=float, default=DEFAULT_HOP_SECONDS, metavar="SECONDS",
                       help=f"step between windows (default {DEFAULT_HOP_SECONDS:g} s)")
    group.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                       help=f"windows per forward pass (default {DEFAULT_BATCH_SIZE})")
    group.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="compute precision (mixed_bfloat16 is faster on recent CPUs/GPUs)")


def embedder_from_args(args: argparse.Namespace, model: str | os.PathLike | None = None,
                       kind: type[Embedder] = Embedder) -> Embedder:
    """The Embedder (or ``kind``) the options describe (``model`` overrides --model; the original's queries have
    only --model)."""
    return kind(model or getattr(args, "model", None), window_seconds=getattr(args, "window", DEFAULT_WINDOW_SECONDS),
                    hop_seconds=getattr(args, "hop", DEFAULT_HOP_SECONDS),
                    batch_size=getattr(args, "batch_size", DEFAULT_BATCH_SIZE),
                    precision=getattr(args, "precision", "float32"))


def report_failures(failures: Iterable[EmbedFailure]) -> int:
    """Print each failure as 'path: reason' on stderr; their number."""
    count = 0
    for failure in failures:
        print(f"skipped {failure}", file=sys.stderr)
        count += 1
    return count


def expand_inputs(items: list[str]) -> tuple[list[str], list[EmbedFailure]]:
    """Audio files of the arguments: files as given, folders searched for .wav/.flac; folders without audio fail."""
    paths: list[str] = []
    failures: list[EmbedFailure] = []
    for item in items:
        if os.path.isdir(item):
            found, rejected = find_audio_files(item)
            paths += found
            failures += [EmbedFailure(r.path, r.reason) for r in rejected]
            if not found:
                failures.append(EmbedFailure(item, "folder holds no .wav or .flac file"))
        else:
            paths.append(item)  # a missing or bad file is reported by the Embedder with its reason
    return paths, failures


def run(args: argparse.Namespace) -> int:
    """Embed the inputs, write the output file, report the files that failed."""
    paths, failures = expand_inputs(args.inputs)
    embedder = embedder_from_args(args)
    result = embedder.embed_files_with_failures(paths)
    failed = report_failures(failures + result.failures)
    if not result.paths:
        print(f"no file could be embedded; nothing written to {args.output}", file=sys.stderr)
        return EXIT_PARTIAL
    out = save_embeddings(args.output, result.embeddings, result.paths, embedder.model_identity)
    print(f"wrote {len(result.paths)} embeddings ({result.embeddings.shape[1]}-d, L2-normalised) to {out} "
          f"(model {embedder.model_identity}){f'; {failed} file(s) skipped' if failed else ''}")
    return EXIT_PARTIAL if failed else EXIT_OK


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed", help="speaker embeddings of audio files",
        description="Speaker embeddings (512-d, L2-normalised) of audio files or folders of them. A long utterance "
                    "is the normalised mean of overlapping windows; a short one is zero-padded to the window. "
                    "Files that cannot be read are reported and skipped (exit code 1).")
    parser.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help="audio files, or folders searched for them")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help=f"output file by suffix: {', '.join(EXPORT_SUFFIXES)} (.npz holds embeddings, paths "
                             f"and model_identity)")
    add_embedder_options(parser)
    parser.set_defaults(func=run)
