#!/usr/bin/env python
"""The original Deep Speaker command line, kept as its README shows it; a thin layer over deep_speaker.

    python cli.py --regenerate_full_cache --multi_threading --cache_output_dir $CACHE_DIR --audio_dir $AUDIO_DIR
    python cli.py --update_cache --multi_threading --cache_output_dir $CACHE_DIR --audio_dir $AUDIO_DIR
    python cli.py --generate_training_inputs --multi_threading --cache_output_dir $CACHE_DIR --audio_dir $AUDIO_DIR
    python cli.py --unseen_speakers p362,p363 --audio_dir $AUDIO_DIR --cache_output_dir $CACHE_DIR
    python cli.py --get_embeddings p225 --audio_dir $AUDIO_DIR --cache_output_dir $CACHE_DIR
"""

from __future__ import annotations

import argparse
import importlib
import sys

from deep_speaker.cli import EXIT_USAGE, native_stderr_silenced, run_command
from deep_speaker.cli.cache import run_build, run_inputs, worker_count
from deep_speaker.data.config import BuildConfig
from deep_speaker.errors import DeepSpeakerError

# The folders each action needs (the original required both always).
REQUIRED = {"regenerate_full_cache": ("cache_output_dir", "audio_dir"), "update_cache": ("cache_output_dir", "audio_dir"),
            "generate_training_inputs": ("cache_output_dir",)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Deep Speaker (original command line). The same commands, with "
                                                 "more options, are under 'deep-speaker cache --help'.")
    parser.add_argument("--audio_dir", help="folder of the corpus (VCTK, LibriSpeech or speaker_id/*.wav)")
    parser.add_argument("--cache_output_dir", help="folder of the feature cache")
    parser.add_argument("--regenerate_full_cache", action="store_true", help="wipe the cache (3 s warning) and rebuild it")
    parser.add_argument("--update_cache", action="store_true", help="add only new or changed files to the cache")
    parser.add_argument("--generate_training_inputs", action="store_true",
                        help="write CACHE_OUTPUT_DIR/full_inputs.npz (the original's full_inputs.pkl, without pickle)")
    parser.add_argument("--multi_threading", action="store_true", help="use every CPU core")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="number of processes")
    parser.add_argument("--yes", action="store_true", help="no 3 s warning before wiping the cache")
    parser.add_argument("--unseen_speakers", metavar="SPK1,SPK2", help="compare two speakers not seen in training")
    parser.add_argument("--get_embeddings", metavar="SPK", help="print the embeddings of a speaker's utterances")
    parser.add_argument("--model", metavar="PATH", help="checkpoint to use (default: the bundled model)")
    parser.add_argument("--verbose", action="store_true", help="full traceback on errors")
    return parser


def verification_command(name: str):
    """deep_speaker.cli.verification.<name>, imported only when asked for."""
    with native_stderr_silenced():  # TensorFlow's C++ start-up lines
        module = importlib.import_module("deep_speaker.cli.verification")
    return getattr(module, name)


def run(args: argparse.Namespace) -> int:
    """Do what the flags ask, in the original's order: cache, training inputs, then speaker commands."""
    for flag, required in REQUIRED.items():
        missing = [f"--{name}" for name in required if getattr(args, flag) and not getattr(args, name)]
        if missing:
            raise DeepSpeakerError(f"--{flag} needs {' and '.join(missing)}")
    code = 0
    workers = worker_count(args.workers, args.multi_threading)
    if args.regenerate_full_cache or args.update_cache:
        code = run_build(BuildConfig(args.audio_dir, args.cache_output_dir, args.update_cache, workers, yes=args.yes))
    if args.generate_training_inputs:
        code = max(code, run_inputs(args.cache_output_dir))
    for name in ("unseen_speakers", "get_embeddings"):
        if getattr(args, name):
            code = max(code, int(verification_command(name)(args) or 0))
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not any(getattr(args, f) for f in ("regenerate_full_cache", "update_cache", "generate_training_inputs",
                                          "unseen_speakers", "get_embeddings")):
        parser.print_help()
        return EXIT_USAGE
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
