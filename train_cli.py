"""The original training command lines, kept working:

    python train_cli.py --loss_on_softmax --data_filename $CACHE_DIR/full_inputs.pkl
    python train_cli.py --loss_on_embeddings --normalize_embeddings --data_filename $CACHE_DIR/full_inputs.pkl
    python train_cli.py --loss_on_softmax --freeze_embedding_weights --normalize_embeddings \\
        --data_filename $CACHE_DIR/full_inputs.pkl

plus the options of ``deep-speaker train PHASE --help`` (``--steps``, ``--width``, ``--output_dir``, ...).
"""

from __future__ import annotations

import argparse
import sys

from deep_speaker.cli import run_command
from deep_speaker.cli.train import add_training_options, run_phase


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss_on_softmax", action="store_true",
                        help="softmax pre-training (with --freeze_embedding_weights: the probe)")
    parser.add_argument("--loss_on_embeddings", action="store_true",
                        help="triplet training, from the best softmax checkpoint when there is one")
    parser.add_argument("--freeze_embedding_weights", action="store_true",
                        help="train only a softmax on the frozen embeddings and report its accuracy")
    parser.add_argument("--normalize_embeddings", action="store_true",
                        help="accepted for compatibility: the embeddings are always L2-normalised (layer ln)")
    parser.add_argument("--verbose", action="store_true", help="print the full traceback on errors")
    add_training_options(parser)
    return parser


def phase_of(args: argparse.Namespace) -> str | None:
    """The phase an original flag combination asks for (None when neither loss is given)."""
    if args.loss_on_embeddings:
        return "triplet"
    if args.loss_on_softmax:
        return "probe" if args.freeze_embedding_weights else "softmax"
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    phase = phase_of(args)
    if phase is None:
        parser.error("please provide at least --loss_on_softmax or --loss_on_embeddings")
    if args.data_filename is None and args.cache_dir is None:
        parser.error("--data_filename is required")
    args.phase = phase
    return run_command(run_phase, args)


if __name__ == "__main__":
    sys.exit(main())
