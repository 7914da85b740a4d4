"""``deep-speaker run``: the main job end to end on the bundled speech (or any folder of the same shape)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..pipeline import BUNDLED_DATA, TEST_SUBSET, TRAIN_SUBSET, JobConfig, format_summary, run_main_job
from . import EXIT_OK


def run(args: argparse.Namespace) -> int:
    cfg = JobConfig(data_dir=args.data, output_dir=args.output_dir, width=args.width,
                    softmax_steps=args.softmax_steps, triplet_steps=args.triplet_steps,
                    batch_size=args.batch_size, seed=args.seed, precision=args.precision,
                    **({"workers": args.workers} if args.workers else {}))
    print(format_summary(run_main_job(cfg)))
    return EXIT_OK


def register(subparsers) -> None:
    defaults = JobConfig()
    p = subparsers.add_parser(
        "run", help="the main job on bundled speech: cache, training, verification, generated-speech metrics",
        description="Run the whole toolkit once, offline: build feature caches, pre-train with softmax, train "
                    "with the triplet loss, measure speaker verification (SAP/SAN, EER) on speakers never seen "
                    "in training, and score degraded copies of real speech (noise, low-pass, Griffin-Lim) "
                    "with the generated-speech metrics. Re-running continues where it stopped.",
        epilog=f"DATA must hold {TRAIN_SUBSET}/ (training speakers) and {TEST_SUBSET}/ (held-out speakers) "
               "in LibriSpeech layout, as samples/librispeech does.")
    p.add_argument("--data", type=Path, default=BUNDLED_DATA, help="speech folder (default: %(default)s)")
    p.add_argument("--output-dir", "-o", type=Path, default=defaults.output_dir,
                   help="where caches, checkpoints, JSON and PNGs go (default: %(default)s)")
    p.add_argument("--width", type=float, default=defaults.width, help="ResCNN width factor (default: %(default)s)")
    p.add_argument("--softmax-steps", type=int, default=defaults.softmax_steps, help="default: %(default)s")
    p.add_argument("--triplet-steps", type=int, default=defaults.triplet_steps, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default=defaults.precision,
                   help="default: %(default)s")
    p.add_argument("--workers", type=int, default=None, help="processes for the cache build (default: all cores)")
    p.set_defaults(func=run)
