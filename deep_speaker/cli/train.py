"""``deep-speaker train softmax|triplet|probe``: the three training phases (also behind the original train_cli.py)."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import DeepSpeakerError
from ..train.config import PHASES, TrainConfig, phase_defaults
from . import EXIT_PARTIAL, EXIT_USAGE, native_stderr_silenced, program_name
from .options import add_config_options, config_values

PHASE_HELP = {
    "softmax": "softmax pre-training of the ResCNN over the training speakers (Adam, best by validation accuracy)",
    "triplet": "triplet training with hard negatives (SGD, batch 96 = 32 triplets), from the best softmax checkpoint",
    "probe": "softmax re-trained on frozen embeddings: the classification accuracy the embeddings allow",
}


def add_training_options(parser: argparse.ArgumentParser, phase: str | None = None) -> None:
    """The options of TrainConfig, shared by ``deep-speaker train PHASE`` and ``train_cli.py`` (dashes or
    underscores); with a phase, its own defaults are shown."""
    add_config_options(parser, TrainConfig, underscores=True, defaults=phase_defaults(phase) if phase else None)


def config_from_args(args: argparse.Namespace, phase: str) -> TrainConfig:
    """A TrainConfig from parsed options."""
    return TrainConfig(phase=phase, **config_values(args, TrainConfig))


def report(phase: str, result: dict) -> None:
    """Print the final figures of a phase."""
    keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy", "val_eer") if k in result]
    print(f"{phase}: step {result.get('step')}, " + ", ".join(f"{k} {result[k]:.4f}" for k in keys)
          + (f", best {result['best_value']:.4f}" if result.get("best_value") is not None else ""))
    if phase == "probe" and "val_accuracy" in result:
        print(f"classification accuracy on frozen embeddings (held-out crops): {result['val_accuracy']:.4f}")


def train(config: TrainConfig) -> dict:
    """Train a phase (with --teacher, after its targets are made): Keras loads at the first call, not with the
    parser."""
    with native_stderr_silenced():  # TensorFlow's C++ start-up lines
        from ..train.run import train as train_phase
    if config.teacher is not None:
        from ..encoders.teacher import ensure_teacher_targets

        ensure_teacher_targets(config.teacher, config.features_dir, config.teacher_targets)
    return train_phase(config)


def run_phase(args: argparse.Namespace) -> int:
    """Train the phase the command line names and print its final figures."""
    config = config_from_args(args, args.phase)
    if config.strategy == "multiworker":
        return run_worker(config)
    report(args.phase, train(config))
    return 0


def run_worker(config: TrainConfig) -> int:
    """One worker of a multi-worker run. An error is one line, then exit 1 when the other workers were lost (the
    same command resumes), 2 otherwise: through os._exit, since JAX's shutdown would wait for the lost workers
    (then abort with a stack dump), and a half-initialised JAX runtime can hang the interpreter's exit."""
    from ..train.multiworker import WorkerLost

    try:
        result = train(config)
    except DeepSpeakerError as exc:
        print(f"{program_name()}: error: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_PARTIAL if isinstance(exc, WorkerLost) else EXIT_USAGE)
    report(config.phase, result)
    rate = result.get("samples_per_s")
    print(f"worker {config.worker}: step {result['step']} (from step {result['resumed_from']})"
          + (f", {rate:.1f} samples/s" if rate else ""), flush=True)
    return 0


def register(subparsers) -> None:
    """Add ``train PHASE`` to the ``deep-speaker`` command."""
    parser = subparsers.add_parser("train", help="train the ResCNN: softmax, then triplet, then a probe",
                                   description="The original three training phases. Run them in order with the "
                                               "same --output-dir; each resumes where it was killed.")
    phases = parser.add_subparsers(dest="phase", metavar="PHASE", required=True)
    for phase in PHASES:
        sub = phases.add_parser(phase, help=PHASE_HELP[phase], description=PHASE_HELP[phase])
        add_training_options(sub, phase)
        sub.set_defaults(func=run_phase)
