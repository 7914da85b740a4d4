"""``deep-speaker make-trials DIR -o trials.txt``: a balanced, seeded VoxCeleb trial list of a labelled folder."""

from __future__ import annotations

import argparse
import sys

from ..errors import DeepSpeakerError
from ..eval.constants import GENDER_RULES
from . import EXIT_OK, EXIT_PARTIAL
from .options import finite_float

DEFAULT_TARGETS = 10000


def run_make_trials(args: argparse.Namespace) -> int:
    """Draw the trials, write them relative to DIR, say what was written; exit 1 when files were rejected."""
    from ..eval.trials import make_trials, write_trials

    if args.genders and args.nontarget_gender == "any":
        raise DeepSpeakerError("--genders is used by a gender rule: add --nontarget-gender same or different")
    made = make_trials(args.audio_dir, n_targets=args.targets, n_nontargets=args.nontargets, seed=args.seed,
                       nontarget_gender=args.nontarget_gender, genders=args.genders, min_seconds=args.min_seconds)
    # Printed here rather than with cli.embed.report_failures: that module loads the model framework.
    for failure in made.failures:
        print(f"skipped {failure}", file=sys.stderr)
    write_trials(args.output, made.trials, args.audio_dir)
    trials = made.trials
    rule = "" if args.nontarget_gender == "any" else f" of {args.nontarget_gender}-gender speakers"
    print(f"wrote {len(trials)} trials ({trials.n_target} target, {trials.n_nontarget} non-target{rule}) to "
          f"{args.output}, paths relative to {args.audio_dir}")
    if made.gender_file:
        print(f"genders from {made.gender_file}")
    print(f"{len(made.speakers)} speakers, {len(set(trials.first) | set(trials.second))} files in the trials, "
          f"drawn from {len(made.utterances)} utterances (seed {args.seed})")
    if made.too_short:
        print(f"{len(made.too_short)} files shorter than {args.min_seconds:g} s left out")
    return EXIT_PARTIAL if made.failures else EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-trials", help="write a balanced VoxCeleb-format trial list of a labelled folder",
        description="Draw target (same-speaker) and non-target (different-speaker) trials from a labelled folder "
                    "(VCTK, LibriSpeech, speaker_id/), uniformly without replacement: never a file with itself, no "
                    "pair twice; the same seed gives the same list. Written as '1 a.wav b.wav' lines, paths relative "
                    "to DIR, for evaluate-verification --trials FILE --root DIR.")
    p.add_argument("audio_dir", metavar="DIR", help="labelled folder")
    p.add_argument("-o", "--output", metavar="trials.txt", required=True, help="the trial list to write")
    p.add_argument("--targets", type=int, default=DEFAULT_TARGETS, metavar="N",
                   help=f"target trials (default {DEFAULT_TARGETS}; all same-speaker pairs when fewer exist, with a "
                        f"warning)")
    p.add_argument("--nontargets", type=int, default=None, metavar="N",
                   help="non-target trials (default: as many as the target trials drawn)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--nontarget-gender", choices=GENDER_RULES, default="any",
                   help="non-target pairs of speakers of the same or different gender (default any); genders from "
                        "--genders, else SPEAKERS.TXT (LibriSpeech) or speaker-info.txt (VCTK) in DIR or its parent")
    p.add_argument("--genders", metavar="FILE", help="'speaker gender' lines (or a SPEAKERS.TXT / speaker-info.txt)")
    p.add_argument("--min-seconds", type=finite_float, default=0.0, metavar="X",
                   help="only files at least X seconds long, by their header (default 0: all)")
    p.set_defaults(func=run_make_trials)
