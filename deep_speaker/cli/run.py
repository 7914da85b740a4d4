"""``deep-speaker run``: the main job end to end on the bundled speech (or any folder of the same shape)."""

from __future__ import annotations

import argparse

from ..job_config import TEST_SUBSET, TRAIN_SUBSET, JobConfig
from . import EXIT_OK, native_stderr_silenced
from .options import add_config_options, config_values


def run(args: argparse.Namespace) -> int:
    """Run the main job with the options given and print its summary."""
    with native_stderr_silenced():  # the model framework loads: TensorFlow's C++ start-up lines
        from ..pipeline import format_summary, run_main_job
    print(format_summary(run_main_job(JobConfig(**config_values(args, JobConfig)))))
    return EXIT_OK


def register(subparsers) -> None:
    """Add ``run`` to the ``deep-speaker`` command."""
    p = subparsers.add_parser(
        "run", help="the main job on bundled speech: cache, training, verification, generated-speech metrics",
        description="Run the whole toolkit once, offline: build feature caches, pre-train with softmax, train "
                    "with the triplet loss, measure speaker verification (SAP/SAN, EER) on speakers never seen "
                    "in training, and score degraded copies of real speech (noise, low-pass, mel-vocoder "
                    "resynthesis) with the generated-speech metrics. Re-running continues where it stopped.",
        epilog=f"DATA must hold {TRAIN_SUBSET}/ (training speakers) and {TEST_SUBSET}/ (held-out speakers) "
               "in LibriSpeech layout, as samples/librispeech does.")
    add_config_options(p, JobConfig)
    p.set_defaults(func=run)
