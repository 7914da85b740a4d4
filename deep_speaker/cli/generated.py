"""``deep-speaker stats``, ``compare`` and ``degrade``: evaluating generated speech against real speech."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..atomic import write_json
from ..encoders import DEFAULT_ENCODER, available_encoders
from ..errors import DeepSpeakerError
from ..eval.config import COMMAND_DEFAULTS, CompareConfig, StatsConfig
from ..eval.constants import DEGRADATION_KINDS
from ..settings import check_choice
from . import EXIT_OK, EXIT_PARTIAL, native_stderr_silenced
from .embed import (add_embedder_options, add_scheduler_option, check_encoder_options, encoder_from_args,
                    encoder_options)
from .options import add_config_options, add_html_option, check_html_option, config_values, finite_float

if TYPE_CHECKING:
    import numpy as np

    from ..encoders import Encoder

PLACEHOLDER = "{encoder}"  # in a statistics file name: one file per encoder
SIDE_HELP = (f"a folder of audio files (speakers from its layout) or a statistics .npz written by 'stats' (with "
             f"several encoders: a name with {PLACEHOLDER}, e.g. real.{PLACEHOLDER}.npz)")
ENCODERS_HELP = (f"speaker encoder(s), comma-separated for several spaces in one run: "
                 f"{', '.join(available_encoders())} "
                 f"(default {DEFAULT_ENCODER}). With several, each takes the options it declares (--model: "
                 f"deep-speaker only); the others use their defaults")


def add_encoders_options(parser: argparse.ArgumentParser) -> None:
    """The embedding options, with --encoder taking a comma-separated list."""
    add_embedder_options(parser)
    for action in parser._actions:  # the shared --encoder option, documented for lists here
        if action.dest == "encoder":
            action.help, action.metavar = ENCODERS_HELP, "NAME[,NAME...]"


def encoder_names(args: argparse.Namespace) -> list[str]:
    """The names of --encoder a,b (one-line errors for an empty or repeated name)."""
    names = [n.strip() for n in str(args.encoder).split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise DeepSpeakerError(f"--encoder {args.encoder}: give distinct names separated by commas")
    return names


def encoder_factories(args: argparse.Namespace) -> dict[str, Callable[[], Encoder]]:
    """A factory per encoder named (models load only when a side is a folder), each with the options given that
    it declares; an option no named encoder takes is refused now."""
    names = encoder_names(args)
    several = len(names) > 1
    for name in names if several else ():  # an unknown one of several is an error now, before any side loads
        check_choice(name, available_encoders(), "encoder")
    check_encoder_options(args, names)
    return {name: functools.partial(encoder_from_args, args, name=name, several=several) for name in names}


def encoder_path(path: str, name: str, several: bool) -> str:
    """``path`` for one encoder's file: its ``{encoder}`` replaced, or with several encoders and no placeholder,
    the name inserted before the suffix (real.npz -> real.deep-speaker.npz)."""
    if PLACEHOLDER in path:
        return path.replace(PLACEHOLDER, name)
    if not several:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}.{name}{p.suffix}"))


def add_layout_option(parser: argparse.ArgumentParser) -> None:
    """``--layout``: eval.config.StatsConfig's (how a folder is read by stats, compare and similarity)."""
    add_config_options(parser, StatsConfig)


def register(subparsers: argparse._SubParsersAction) -> None:
    stats = subparsers.add_parser(
        "stats", help="embed a folder and save its statistics file (.npz)",
        description="Embed every audio file of DIR (speaker labels from the folder layout: LibriSpeech, VCTK or "
                    "<speaker>/<file>) and save mu, sigma, the embeddings, labels, paths, the encoder, its model "
                    "identity and its settings to a .npz that 'compare' accepts in place of the folder.")
    stats.add_argument("dir", metavar="DIR", nargs="?", help="folder of audio files")
    stats.add_argument("--merge", nargs="+", metavar="FILE.npz",
                       help="instead of DIR: merge statistics files of disjoint sets (e.g. shards embedded on "
                            "different machines) of one encoder, model and settings into -o; mu and sigma come from "
                            "the files' summed moments (count, sum, sum of outer products)")
    stats.add_argument("-o", "--output", required=True, metavar="FILE.npz",
                       help=f"statistics file to write; with several encoders one per encoder: {PLACEHOLDER} in the "
                            f"name is replaced by each encoder's name, else the name goes before the suffix")
    add_layout_option(stats)
    add_encoders_options(stats)
    add_scheduler_option(stats)
    stats.set_defaults(func=run_stats)

    cmp = subparsers.add_parser(
        "compare", help="distances between generated and real speech (FD, KD, cFD/cKD, FD∞, SECS, acceptance, ...)",
        description="Compare generated speech with real speech in one or several speaker-embedding spaces: FD and "
                    "KD with error bars, conditional cFD/cKD, FD∞, speaker similarity (SECS, also rescaled between "
                    "the real different- and same-speaker means), the share a verifier accepts as its speaker at "
                    "the real EER and false-accept thresholds, SAP/SAN, NDB, optional classifier scores and paired "
                    "MR-STFT; each beside its space's real-data baseline (two disjoint per-speaker halves of the "
                    "real set, or the real trials), with 95 % bootstrap intervals (speakers, then utterances). "
                    "Prints one table; writes JSON, CSV/Markdown/LaTeX tables, a per-file CSV and PNGs on request.",
        epilog="Both sides of a space must come from the same encoder, model and settings; statistics files record "
               "them.")
    cmp.add_argument("real", metavar="REAL", help=SIDE_HELP)
    cmp.add_argument("generated", metavar="GENERATED", help=SIDE_HELP)
    cmp.add_argument("-o", "--output", metavar="REPORT.json", help="write the full report as JSON")
    cmp.add_argument("--table", action="append", default=[], metavar="FILE",
                     help="also write the table to FILE as .csv, .md, .tex or .txt (by suffix; repeatable)")
    cmp.add_argument("--per-utterance", metavar="FILE.csv",
                     help="write every generated file's similarity to its speaker, acceptance and nearest real "
                          "speaker (one row per file and encoder)")
    # The report's numbers: defaults, help texts and checks written once, on eval.config.CompareConfig.
    add_config_options(cmp, CompareConfig, defaults=COMMAND_DEFAULTS, only=("worst",))
    cmp.add_argument("--plots", metavar="DIR",
                     help="write speaker_similarity.png and fd_infinity.png here (with several encoders: DIR/NAME/)")
    add_html_option(cmp)
    add_config_options(cmp, CompareConfig, defaults=COMMAND_DEFAULTS,
                       only=[f.name for f in fields(CompareConfig) if f.name != "worst"])
    cmp.add_argument("--probs", metavar="GEN.npy",
                     help="p(y|x) rows [n, classes] of the generated set from any classifier: adds IS and mIS")
    cmp.add_argument("--ref-probs", metavar="REAL.npy", help="p(y|x) rows of real speech: adds the AM score")
    cmp.add_argument("--classifier", metavar="MODEL",
                     help="a checkpoint with a softmax head (e.g. OUT/softmax/best.keras): its p(y|x) of both sets "
                          "(mean over windows) give IS, mIS and AM, as --probs/--ref-probs would")
    add_layout_option(cmp)
    add_encoders_options(cmp)
    add_scheduler_option(cmp)
    cmp.set_defaults(func=run_compare)

    deg = subparsers.add_parser(
        "degrade", help="write degraded copies of real speech (noise, low-pass, vocoders, codec, pitch, tempo) for "
                        "sanity checks",
        description="Copy every audio file of SRC to the same relative path under DST, degraded: white noise "
                    "at an SNR (level in dB, default 20), a low-pass filter (level = cut-off Hz, default 4000), "
                    "a Griffin-Lim resynthesis from the STFT magnitude (level = iterations, default 8), a "
                    "mel-vocoder-like resynthesis through a mel bottleneck (level = mel bands, default 80), an Opus "
                    "round trip (level = libsndfile's compression level in [0, 1], 1 the lowest bitrate, default "
                    "0.97), a pitch shift at the same duration (level = semitones, default 2) or a tempo change at "
                    "the same pitch (level = rate, default 1.25). "
                    "Comparing SRC with DST should give larger distances for stronger degradations.")
    deg.add_argument("src", metavar="SRC", help="folder of real speech")
    deg.add_argument("dst", metavar="DST", help="output folder (same layout and names)")
    deg.add_argument("--kind", required=True, choices=DEGRADATION_KINDS, help="degradation")
    deg.add_argument("--level", type=finite_float, default=None,
                     help="SNR dB (noise), cut-off Hz (lowpass), iterations (griffinlim), mel bands (melvocoder), "
                          "compression level (codec), semitones (pitch) or rate (tempo)")
    deg.add_argument("--seed", type=int, default=0, help="seed of the noise / initial phases (default 0)")
    deg.set_defaults(func=run_degrade)


def _reported(failures: list) -> list:
    """Each failure once (several encoders fail on the same file), in order, printed as 'skipped path: reason'."""
    unique = list(dict.fromkeys(failures))
    for failure in unique:
        print(f"skipped {failure}", file=sys.stderr)
    return unique


def run_stats(args: argparse.Namespace) -> int:
    from ..eval.formats import write_stats
    from ..eval.generated import compute_stats, merge_stats

    if (args.dir is None) == (args.merge is None):
        raise DeepSpeakerError("stats: give a folder DIR or --merge FILE.npz ..., not both")
    if args.merge:
        merged = merge_stats(args.merge)
        write_stats(args.output, merged)
        print(f"{args.output}: {len(merged.paths)} utterances, {len(merged.speakers)} speakers merged from "
              f"{len(args.merge)} files, encoder {merged.encoder}, model {merged.model_identity}")
        return EXIT_OK
    config = StatsConfig(**config_values(args, StatsConfig))
    factories = encoder_factories(args)
    failures = []
    for name, make in factories.items():
        stats = compute_stats(args.dir, make(), config)
        out = encoder_path(args.output, name, len(factories) > 1)
        write_stats(out, stats)
        failures += stats.failures
        print(f"{out}: {len(stats.paths)} utterances, {len(stats.speakers)} speakers, encoder {name}, "
              f"model {stats.model_identity}")
    return EXIT_PARTIAL if _reported(failures) else EXIT_OK


def _load_probs(path: str | None) -> np.ndarray | None:
    import numpy as np

    from ..validate import checked_array, one_line

    if path is None:
        return None
    try:
        probs = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DeepSpeakerError(f"{path}: cannot read a probability array ({one_line(exc)})") from None
    if not isinstance(probs, np.ndarray):  # an .npz archive: the array must be a plain .npy
        raise DeepSpeakerError(f"{path}: not a probability array (.npy of [n, classes])")
    probs = checked_array(probs, path, "the probabilities", shape=(None, None))
    if probs.min(initial=0.0) < 0.0 or probs.max(initial=0.0) > 1.0:
        raise DeepSpeakerError(f"{path}: probabilities must lie in [0, 1]")
    return probs


def _once(make: Callable[[], Encoder]) -> Callable[[], Encoder]:
    """``make`` called at most once: loading a model is slow, and only a folder side needs it."""
    made: list[Encoder] = []

    def get() -> Encoder:
        if not made:
            made.append(make())
        return made[0]

    return get


def _check_options(args: argparse.Namespace) -> CompareConfig:
    """The report's numbers (checked by the config) and the output names, refused before anything is embedded
    (one-line errors)."""
    from ..eval.tables import table_format

    config = CompareConfig(**config_values(args, CompareConfig))
    for path in args.table + ([args.per_utterance] if args.per_utterance else []):
        table_format(path)
    check_html_option(args)
    return config


def load_spaces(args: argparse.Namespace) -> dict:
    """``{encoder: (real, generated)}`` for every encoder named; with several, a statistics file must be that
    encoder's (a name with {encoder} gives each its own)."""
    from ..eval.generated import load_side

    config = StatsConfig(**config_values(args, StatsConfig))
    factories = encoder_factories(args)
    several = len(factories) > 1
    spaces = {}
    for name, make in factories.items():
        get = _once(make)
        sides = [load_side(encoder_path(src, name, False), get, config) for src in (args.real, args.generated)]
        for side in sides:
            if several and side.encoder != name:
                raise DeepSpeakerError(f"{side.source} holds statistics of encoder {side.encoder}, not {name}; with "
                                       f"several encoders give folders or names with {PLACEHOLDER}")
        spaces[name] = tuple(sides)
    return spaces


def run_compare(args: argparse.Namespace) -> int:
    from ..eval.generated import UTTERANCE_COLUMNS, classifier_probabilities, compare, compare_spaces, utterance_results
    from ..eval.generated_report import format_table, report_table
    from ..eval.plots import plot_report
    from ..eval.tables import write_table

    config = _check_options(args)
    spaces = load_spaces(args)
    real, generated = next(iter(spaces.values()))
    both_folders = os.path.isdir(args.real) and os.path.isdir(args.generated)
    gen_probs, ref_probs = _load_probs(args.probs), _load_probs(args.ref_probs)
    if args.classifier:
        with native_stderr_silenced():  # Keras loads: TensorFlow's C++ start-up lines
            from ..encoders.deepspeaker import SpeakerClassifier

        # The classifier is a ResCNN with a softmax head, whatever --encoder is: it windows as deep-speaker does.
        options = {k: v for k, v in encoder_options(args, DEFAULT_ENCODER).items() if k != "model"}
        classifier = SpeakerClassifier(args.classifier, **options)
        gen_probs, ref_probs = classifier_probabilities(classifier, real, generated)
    shared = dict(gen_probs=gen_probs, ref_probs=ref_probs,
                  paired_folders=(args.real, args.generated) if both_folders else None)
    several = len(spaces) > 1
    report = compare_spaces(spaces, config, **shared) if several else compare(real, generated, config, **shared)
    print(format_table(report))
    if args.output:
        write_json(args.output, report)
        print(f"report: {args.output}")
    for path in args.table:
        print(f"table: {write_table(path, *report_table(report))}")
    if args.per_utterance or args.html:
        # Only for the page alone are rows that cannot be computed left out (--per-utterance fails as it did).
        results = utterance_results if args.per_utterance else _or_none(utterance_results)
        rows = [[name] + [int(v) if isinstance(v, bool) else v for v in (row[c] for c in UTTERANCE_COLUMNS)]
                for name, (r, g) in spaces.items() for row in results(r, g, config.far)]
    if args.per_utterance:
        print(f"per-utterance results: {write_table(args.per_utterance, ['encoder', *UTTERANCE_COLUMNS], rows)}")
    if args.plots:
        for name, space_report in (report["spaces"].items() if several else [(None, report)]):
            for png in plot_report(space_report, Path(args.plots) / name if name else args.plots):
                print(f"plot: {png}")
    if args.html:
        print(f"html report: {_write_html(args.html, report, spaces, (['encoder', *UTTERANCE_COLUMNS], rows))}")
    failures = _reported([f for r, g in spaces.values() for f in r.failures + g.failures])
    return EXIT_PARTIAL if failures else EXIT_OK


def _or_none(results: Callable[..., list]) -> Callable[..., list]:
    """``results`` answering no rows where it fails as the report's own metrics may (degenerate input)."""
    def rows(*args):
        try:
            return results(*args)
        except (DeepSpeakerError, ValueError):
            return []
    return rows


def _write_html(folder: str, report: dict, spaces: dict, per_file: tuple) -> Path:
    """The compare page (eval.html): the table, the PNGs of --plots, the per-file rows and the real files of each
    speaker to listen to beside the least similar generated files."""
    from ..eval.generated_report import report_table
    from ..eval.html import compare_page, compare_plots, write_page
    from ..eval.plots import plot_report

    real_files: dict = {}
    for name, (real, _) in spaces.items():
        for path, speaker in zip(real.paths.tolist(), real.labels.tolist()):
            real_files.setdefault(name, {}).setdefault(speaker, []).append(path)
    page = compare_page(report, report_table(report), per_file, real_files=real_files)
    return write_page(folder, page, compare_plots(report, per_file, plot_report))


def run_degrade(args: argparse.Namespace) -> int:
    from ..eval.degrade import LEVELS, degrade_folder

    meaning, default = LEVELS[args.kind]
    level = default if args.level is None else args.level
    written = degrade_folder(args.src, args.dst, kind=args.kind, level=level, seed=args.seed)
    print(f"{len(written)} files written to {args.dst} ({args.kind}, {meaning} {level:g})")
    return EXIT_OK
