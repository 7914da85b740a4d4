"""``deep-speaker similarity PAIRS``: speaker similarity of (reference, generated) pairs, the zero-shot TTS SIM
protocol, in one or several embedding spaces."""

from __future__ import annotations

import argparse

from ..metrics.constants import DEFAULT_REPLICATES, FAR_TARGET
from . import EXIT_OK, EXIT_PARTIAL
from .embed import add_scheduler_option, report_failures
from .generated import add_encoders_options, add_layout_option, encoder_factories
from .options import add_html_option, check_html_option, check_report_options, finite_float


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "similarity", help="SIM of (reference, generated) pairs, as zero-shot TTS papers report it",
        description="The cosine between each generated utterance and its own reference (prompt) in one or several "
                    "speaker-embedding spaces, each distinct file embedded once: the mean SIM with 95 % bootstrap "
                    "intervals over pairs (and over reference speakers when the list has a speaker column), the "
                    "least similar pairs and, with --real, that space's real same- and different-speaker cosines "
                    "and the share of pairs a verifier accepts at the real EER and false-accept thresholds. Files "
                    "that cannot be embedded are reported and their pairs skipped (exit 1).",
        epilog="PAIRS: a CSV whose header holds reference,generated (paths absolute or relative to the CSV's folder; "
               "other columns are carried to the per-pair table and the worst pairs), or a seed-tts-eval meta.lst "
               "(utt|prompt_text|prompt_wav|infer_text[|gt_wav], prompts relative to its folder) with "
               "--generated-dir DIR holding <utt>.wav.")
    parser.add_argument("pairs", metavar="PAIRS", help="the pair list: a CSV or a seed-tts-eval meta.lst")
    parser.add_argument("--generated-dir", metavar="DIR", help="meta.lst only: the folder of the generated <utt>.wav")
    parser.add_argument("--reference-dir", metavar="DIR",
                        help="use the file of each reference's name in DIR instead (SIM-r: the resynthesised "
                             "prompts; the listed prompts give SIM-o)")
    parser.add_argument("--speaker-column", metavar="NAME",
                        help="CSV column naming each pair's reference speaker, for the speaker interval (default: "
                             "the column 'speaker' when there is one)")
    parser.add_argument("--real", metavar="DIR",
                        help="a labelled folder of real speech (speakers from its layout): the same- and "
                             "different-speaker cosines of real pairs in each space, and its verifier thresholds")
    parser.add_argument("-o", "--output", metavar="REPORT.json", help="write the full report as JSON")
    parser.add_argument("--per-pair", metavar="FILE.csv",
                        help="write one row per pair and encoder: reference, generated, encoder, similarity and the "
                             "carried columns")
    parser.add_argument("--worst", type=int, default=5, metavar="N", help="list the N least similar pairs (default 5)")
    parser.add_argument("--far", type=finite_float, default=FAR_TARGET, metavar="RATE",
                        help=f"false-accept rate of the second acceptance threshold, on real pairs (default "
                             f"{FAR_TARGET:g})")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_REPLICATES, metavar="N",
                        help=f"resamples for the 95 %% intervals (default {DEFAULT_REPLICATES}; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    add_html_option(parser)
    add_layout_option(parser)
    add_encoders_options(parser)  # the other embedding commands' options: each works here the same way
    add_scheduler_option(parser)
    parser.set_defaults(func=run_similarity)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse bad numbers and output names before anything is embedded (one-line errors)."""
    from ..eval.tables import table_format

    check_report_options(args)
    if args.per_pair:
        table_format(args.per_pair)
    check_html_option(args)


def run_similarity(args: argparse.Namespace) -> int:
    # Imported here: numpy and the encoders load when the command runs, not when the parser is built (--help).
    from ..atomic import write_json
    from ..eval.similarity import evaluate_pairs, format_table, read_pairs
    from ..eval.tables import write_table

    _check_options(args)
    factories = encoder_factories(args)
    pairs = read_pairs(args.pairs, generated_dir=args.generated_dir, reference_dir=args.reference_dir,
                       speaker_column=args.speaker_column)
    result = evaluate_pairs(pairs, factories, real_dir=args.real, layout=args.layout, replicates=args.bootstrap,
                            seed=args.seed, far=args.far, worst=args.worst)
    print(format_table(result.report))
    if args.output:
        write_json(args.output, result.report)
        print(f"report: {args.output}")
    if args.per_pair:
        print(f"per-pair results: {write_table(args.per_pair, *result.per_pair_rows())}")
    if args.html:
        from ..eval.html import similarity_page, similarity_plots, write_page

        header, rows = result.per_pair_rows()
        page = similarity_page(result.report, header, rows)
        print(f"html report: {write_page(args.html, page, similarity_plots(result.report, header, rows))}")
    return EXIT_PARTIAL if report_failures(result.failures) else EXIT_OK
