"""``deep-speaker train softmax|triplet|probe``: the three training phases (also behind the original train_cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..train.training import PHASES, STRATEGIES, TrainConfig, train

PHASE_HELP = {
    "softmax": "softmax pre-training of the ResCNN over the training speakers (Adam, best by validation accuracy)",
    "triplet": "triplet training with hard negatives (SGD, batch 96 = 32 triplets), from the best softmax checkpoint",
    "probe": "softmax re-trained on frozen embeddings: the classification accuracy the embeddings allow",
}
DEFAULT_STEPS = {"softmax": 10000, "triplet": 10000, "probe": 2000}


def add_training_options(parser: argparse.ArgumentParser, phase: str | None = None) -> None:
    """The options shared by ``deep-speaker train PHASE`` and ``train_cli.py`` (dashes or underscores)."""

    def option(name: str, **kwargs):
        parser.add_argument(f"--{name.replace('_', '-')}", f"--{name}", dest=name, **kwargs)

    option("data_filename", type=Path, metavar="PATH",
           help="training inputs: the .npz of 'cli.py --generate_training_inputs' (the original full_inputs.pkl "
                "name reads the .npz beside it; no pickle is ever opened)")
    option("cache_dir", type=Path, metavar="DIR",
           help="triplet phase: the feature cache (default: the folder of --data_filename)")
    option("output_dir", type=Path, metavar="DIR",
           help="runs go to DIR/<phase>/ (last.keras, best.keras, state.json, log.csv, tensorboard/); "
                "default: checkpoints/ beside the data")
    option("init_model", type=Path, metavar="PATH",
           help="starting weights (.keras, original .h5 or run folder); default: the best softmax checkpoint "
                "for triplet, the best triplet (else softmax) checkpoint for probe")
    option("steps", type=int, default=DEFAULT_STEPS.get(phase), metavar="N",
           help="total optimizer steps of the phase (a resumed run continues up to N)"
                + (f"; default {DEFAULT_STEPS[phase]}" if phase else "; default 10000 (probe 2000)"))
    option("batch_size", type=int, default=96, metavar="N", help="batch size (triplet: a multiple of 3); default 96")
    option("learning_rate", type=float, metavar="LR",
           help="initial learning rate; default 0.001 (Adam) for softmax and probe, 0.01 (SGD) for triplet")
    option("width", type=float, default=1.0, metavar="W",
           help="filters x W in every stage (e.g. 0.25 for CPU runs); default 1 (the paper's size)")
    option("crop_frames", type=int, default=160, metavar="T", help="frames per training crop; default 160 (1.6 s)")
    option("seed", type=int, default=0, help="random seed of initialisation, batches and crops; default 0")
    option("save_every", type=int, default=100, metavar="N",
           help="steps between validations and checkpoints (a kill loses at most N steps); default 100")
    option("precision", choices=("float32", "mixed_bfloat16"), default="float32",
           help="Keras dtype policy; mixed_bfloat16 keeps losses and the L2 normalisation in float32")
    option("strategy", choices=STRATEGIES, default="none",
           help="mirrored: data parallel over all GPUs, else the logical CPUs (tf.distribute on TensorFlow, "
                "keras.distribution on JAX); multiworker: not available with Keras 3 (its error says why)")
    option("holdout", type=float, default=0.2,
           help="triplet phase: share of each speaker's audio held out for the validation EER; default 0.2")
    option("random_crops", action="store_true",
           help="softmax phase: fresh random crops of the cache's training audio at every step (validation on "
                "its held-out part) instead of the fixed crops of --data_filename")
    option("refresh_every", type=int, default=100, metavar="K",
           help="triplet phase: steps between two refreshes of the hard-negative pool; default 100")
    option("pool_speakers", type=int, default=640, metavar="N",
           help="triplet phase: speakers (2 crops each) per pool round, 4 rounds kept; default 640")
    option("fit_verbose", type=int, choices=(0, 1, 2), default=2,
           help="Keras fit verbosity; default 2 (one line per save)")


def config_from_args(args: argparse.Namespace, phase: str) -> TrainConfig:
    """A TrainConfig from parsed options."""
    data = args.data_filename
    output_dir = args.output_dir or (data.parent / "checkpoints" if data else
                                     args.cache_dir / "checkpoints" if args.cache_dir else Path("checkpoints"))
    return TrainConfig(
        phase=phase, output_dir=output_dir, data=data, cache_dir=args.cache_dir, init_model=args.init_model,
        steps=args.steps if args.steps is not None else DEFAULT_STEPS[phase], batch_size=args.batch_size,
        learning_rate=args.learning_rate, width=args.width, crop_frames=args.crop_frames, seed=args.seed,
        save_every=args.save_every, precision=args.precision, strategy=args.strategy, holdout=args.holdout,
        random_crops=args.random_crops,
        refresh_every=args.refresh_every, pool_speakers=args.pool_speakers, verbose=args.fit_verbose)


def report(phase: str, result: dict) -> None:
    """Print the final figures of a phase."""
    keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy", "val_eer") if k in result]
    print(f"{phase}: step {result.get('step')}, " + ", ".join(f"{k} {result[k]:.4f}" for k in keys)
          + (f", best {result['best_value']:.4f}" if result.get("best_value") is not None else ""))
    if phase == "probe" and "val_accuracy" in result:
        print(f"classification accuracy on frozen embeddings (held-out crops): {result['val_accuracy']:.4f}")


def run_phase(args: argparse.Namespace) -> int:
    report(args.phase, train(config_from_args(args, args.phase)))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train the ResCNN: softmax, then triplet, then a probe",
                                   description="The original three training phases. Run them in order with the "
                                               "same --output-dir; each resumes where it was killed.")
    phases = parser.add_subparsers(dest="phase", metavar="PHASE", required=True)
    for phase in PHASES:
        sub = phases.add_parser(phase, help=PHASE_HELP[phase], description=PHASE_HELP[phase])
        add_training_options(sub, phase)
        sub.set_defaults(func=run_phase)
