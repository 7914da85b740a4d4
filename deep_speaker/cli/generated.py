"""``deep-speaker stats``, ``compare`` and ``degrade``: evaluating generated speech against real speech."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..atomic import write_json
from ..data.corpus import LAYOUTS
from ..errors import DeepSpeakerError
from ..eval.degrade import KINDS
from . import EXIT_OK, EXIT_PARTIAL
from .embed import add_embedder_options, deep_speaker_options, encoder_from_args
from .options import finite_float

SIDE_HELP = "a folder of audio files (speakers from its layout) or a statistics .npz written by 'stats'"


def add_layout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", default="auto", choices=LAYOUTS,
                        help="how speaker labels are read from folder paths (default auto)")


def register(subparsers: argparse._SubParsersAction) -> None:
    stats = subparsers.add_parser(
        "stats", help="embed a folder and save its statistics file (.npz)",
        description="Embed every audio file of DIR (speaker labels from the folder layout: LibriSpeech, VCTK or "
                    "<speaker>/<file>) and save mu, sigma, the embeddings, labels, paths, the encoder, its model "
                    "identity and its settings to a .npz that 'compare' accepts in place of the folder.")
    stats.add_argument("dir", metavar="DIR", help="folder of audio files")
    stats.add_argument("-o", "--output", required=True, metavar="FILE.npz", help="statistics file to write")
    add_layout_option(stats)
    add_embedder_options(stats)
    stats.set_defaults(func=run_stats)

    cmp = subparsers.add_parser(
        "compare", help="distances between generated and real speech (FD, KD, cFD/cKD, FD∞, SECS, ...)",
        description="Compare generated speech with real speech in the speaker-embedding space: FD and KD with "
                    "error bars, conditional cFD/cKD, FD∞, speaker similarity (SECS), SAP/SAN, NDB, optional "
                    "classifier scores and paired MR-STFT; each beside a real-data baseline (two disjoint "
                    "per-speaker halves of the real set). Prints a table; writes JSON and PNGs on request.",
        epilog="Both sides must come from the same encoder, model and settings; statistics files record them.")
    cmp.add_argument("real", metavar="REAL", help=SIDE_HELP)
    cmp.add_argument("generated", metavar="GENERATED", help=SIDE_HELP)
    cmp.add_argument("-o", "--output", metavar="REPORT.json", help="write the full report as JSON")
    cmp.add_argument("--plots", metavar="DIR", help="write speaker_similarity.png and fd_infinity.png here")
    cmp.add_argument("--seed", type=int, default=0, help="seed of every random split and subset (default 0)")
    cmp.add_argument("--num-splits", type=int, default=5, metavar="K", help="disjoint splits for FD (default 5)")
    cmp.add_argument("--subset-size", type=int, default=1000, metavar="M",
                     help="KD subset size, shrunk to the smaller set when larger (default 1000)")
    cmp.add_argument("--num-subsets", type=int, default=100, metavar="S", help="KD subsets (default 100)")
    cmp.add_argument("--ndb-bins", type=int, default=50, metavar="K", help="NDB k-means bins (default 50)")
    cmp.add_argument("--fd-inf-points", type=int, default=15, metavar="P",
                     help="subset sizes N in the FD∞ fit (default 15)")
    cmp.add_argument("--probs", metavar="GEN.npy",
                     help="p(y|x) rows [n, classes] of the generated set from any classifier: adds IS and mIS")
    cmp.add_argument("--ref-probs", metavar="REAL.npy", help="p(y|x) rows of real speech: adds the AM score")
    cmp.add_argument("--classifier", metavar="MODEL",
                     help="a checkpoint with a softmax head (e.g. OUT/softmax/best.keras): its p(y|x) of both sets "
                          "(mean over windows) give IS, mIS and AM, as --probs/--ref-probs would")
    add_layout_option(cmp)
    add_embedder_options(cmp)
    cmp.set_defaults(func=run_compare)

    deg = subparsers.add_parser(
        "degrade", help="write degraded copies of real speech (noise, low-pass, vocoders) for sanity checks",
        description="Copy every audio file of SRC to the same relative path under DST, degraded: white noise "
                    "at an SNR (level in dB, default 20), a low-pass filter (level = cut-off Hz, default 4000), "
                    "a Griffin-Lim resynthesis from the STFT magnitude (level = iterations, default 8) or a "
                    "mel-vocoder-like resynthesis through a mel bottleneck (level = mel bands, default 80). "
                    "Comparing SRC with DST should give larger distances for stronger degradations.")
    deg.add_argument("src", metavar="SRC", help="folder of real speech")
    deg.add_argument("dst", metavar="DST", help="output folder (same layout and names)")
    deg.add_argument("--kind", required=True, choices=KINDS, help="degradation")
    deg.add_argument("--level", type=finite_float, default=None,
                     help="SNR dB (noise), cut-off Hz (lowpass), iterations (griffinlim) or mel bands (melvocoder)")
    deg.add_argument("--seed", type=int, default=0, help="seed of the noise / initial phases (default 0)")
    deg.set_defaults(func=run_degrade)


def run_stats(args: argparse.Namespace) -> int:
    from ..eval.generated import compute_stats, save_stats

    stats = compute_stats(args.dir, encoder_from_args(args), args.layout)
    save_stats(args.output, stats)
    for failure in stats.failures:
        print(f"skipped {failure}", file=sys.stderr)
    print(f"{args.output}: {len(stats.paths)} utterances, {len(stats.speakers)} speakers, "
          f"model {stats.model_identity}")
    return EXIT_PARTIAL if stats.failures else EXIT_OK


def _load_probs(path: str | None) -> np.ndarray | None:
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DeepSpeakerError(f"{path}: cannot read a probability array ({exc})") from exc


def run_compare(args: argparse.Namespace) -> int:
    from ..eval.generated import classifier_probabilities, compare, format_table, load_side
    from ..eval.plots import plot_report

    encoder = None

    def get_encoder():  # loading a model is slow: only when a side is a folder
        nonlocal encoder
        encoder = encoder or encoder_from_args(args)
        return encoder

    real = load_side(args.real, get_encoder, args.layout)
    generated = load_side(args.generated, get_encoder, args.layout)
    both_folders = os.path.isdir(args.real) and os.path.isdir(args.generated)
    gen_probs, ref_probs = _load_probs(args.probs), _load_probs(args.ref_probs)
    if args.classifier:
        from ..encoders.deepspeaker import SpeakerClassifier

        # The classifier is a ResCNN with a softmax head, whatever --encoder is: it windows as deep-speaker does.
        classifier = SpeakerClassifier(args.classifier, **deep_speaker_options(args))
        gen_probs, ref_probs = classifier_probabilities(classifier, real, generated)
    report = compare(real, generated, seed=args.seed, num_splits=args.num_splits, subset_size=args.subset_size,
                     num_subsets=args.num_subsets, ndb_bins=args.ndb_bins, fd_inf_points=args.fd_inf_points,
                     gen_probs=gen_probs, ref_probs=ref_probs,
                     paired_folders=(args.real, args.generated) if both_folders else None)
    print(format_table(report))
    if args.output:
        write_json(args.output, report)
        print(f"report: {args.output}")
    if args.plots:
        for png in plot_report(report, args.plots):
            print(f"plot: {png}")
    failures = real.failures + generated.failures
    for failure in failures:
        print(f"skipped {failure}", file=sys.stderr)
    return EXIT_PARTIAL if failures else EXIT_OK


def run_degrade(args: argparse.Namespace) -> int:
    from ..eval.degrade import LEVELS, degrade_folder

    meaning, default = LEVELS[args.kind]
    level = default if args.level is None else args.level
    written = degrade_folder(args.src, args.dst, args.kind, level, args.seed)
    print(f"{len(written)} files written to {args.dst} ({args.kind}, {meaning} {level:g})")
    return EXIT_OK
