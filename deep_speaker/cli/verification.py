"""``deep-speaker verify`` / ``evaluate-verification``, and the original ``--unseen_speakers`` / ``--get_embeddings``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DeepSpeakerError
from ..eval.config import CalibrateConfig, EvaluateConfig
from ..eval.constants import DEFAULT_PRIOR
from ..metrics.constants import DEFAULT_REPLICATES, DEFAULT_TOP_K, SCORE_NORMS
from . import EXIT_OK, EXIT_PARTIAL, native_stderr_silenced
from .embed import add_embedder_options, encoder_from_args, report_failures
from .options import (add_config_options, add_html_option, check_html_option, config_values, finite_float,
                      probability)

if TYPE_CHECKING:
    from ..encoders import Encoder
    from ..eval.scoring import CalibrationRecord, ScoreNorm
    from ..eval.embedded import Embedded

# Cosine similarity midway between unrelated (0) and identical (1) voices; calibrate a model's own threshold
# with evaluate-verification (its EER threshold).
DEFAULT_THRESHOLD = 0.5
SIMILARITY_NOTE = ("cosine similarity: 1 = same direction, 0 = unrelated; the original README printed "
                   "1 - similarity (a distance). A good model has SAP well above SAN.")


def add_scoring_options(parser: argparse.ArgumentParser, calibration: bool = True) -> None:
    """--score-norm, --cohort, --top-k (and --calibration): how scores are normalised and turned into LLRs."""
    group = parser.add_argument_group("scoring")
    group.add_argument("--score-norm", choices=SCORE_NORMS, default="none",
                       help="normalise cosine scores against a cohort: S-norm or adaptive S-norm (default none)")
    group.add_argument("--cohort", metavar="PATH",
                       help="the cohort: a labelled folder or feature cache (one mean embedding per speaker), or an "
                            ".npz from 'deep-speaker embed' made with the same model; never the evaluated speakers")
    group.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, metavar="K",
                       help=f"asnorm: cohort scores kept per side (default {DEFAULT_TOP_K})")
    if calibration:
        group.add_argument("--calibration", metavar="FILE",
                           help="score-to-LLR calibration from 'deep-speaker calibrate' (default: MODEL.calibration."
                                "json beside --model, or the packaged model's card; 'none' for raw scores only)")


def score_norm_from_args(args: argparse.Namespace, encoder: Encoder) -> ScoreNorm:
    """The normalisation the options ask for, its cohort embedded with ``encoder``."""
    from ..eval.scoring import NO_NORM
    from ..eval.verification import load_cohort

    if args.score_norm == "none":
        if args.cohort:
            raise DeepSpeakerError("--cohort is used by --score-norm snorm or asnorm; give one of them")
        return NO_NORM
    if not args.cohort:
        raise DeepSpeakerError(f"--score-norm {args.score_norm} needs --cohort (a folder of other speakers, a "
                               f"feature cache, or an embedding .npz)")
    return load_cohort(encoder, args.cohort, args.score_norm, top_k=args.top_k)


def calibration_from_args(args: argparse.Namespace, encoder: Encoder,
                          score_norm: ScoreNorm) -> CalibrationRecord | None:
    """--calibration FILE (checked against the model and normalisation), or the one found beside the weights the
    encoder loaded."""
    from ..eval.scoring import find_calibration, read_calibration

    if args.calibration == "none":
        return None
    if args.calibration:
        record = read_calibration(args.calibration)
        record.check_applies(encoder.name, encoder.identity, score_norm)
        return record
    # Beside the weights the encoder loaded: --model, or the default it resolved (the newest checkpoint).
    record, note = find_calibration(encoder.name, encoder.identity, model=encoder.weights.path, score_norm=score_norm)
    if record is None and note.startswith("calibration not used"):
        print(note, file=sys.stderr)  # one was found beside the model but does not fit these scores: say so
    return record


def verify(args: argparse.Namespace) -> int:
    """Score two files; with a calibration print the LLR, P(same) at the prior and the Bayes decision, else (or
    with --threshold) decide 'same speaker' when the score exceeds the threshold."""
    import numpy as np

    from ..metrics.calibration import bayes_threshold

    encoder = encoder_from_args(args)
    score_norm = score_norm_from_args(args, encoder)
    calibration = calibration_from_args(args, encoder, score_norm) if args.threshold is None else None
    result = encoder.embed_files_with_failures([args.first, args.second])
    if result.failures:
        report_failures(result.failures)
        return EXIT_PARTIAL
    score = float(score_norm.scores(result.embeddings, np.array([0]), np.array([1]))[0])
    kind = "cosine similarity" if score_norm.method == "none" else f"{score_norm.method} of the cosine similarity"
    print(f"score ({kind}) = {score:.4f}")
    if calibration is not None:
        llr = float(calibration.calibration.llr(score))
        posterior = float(calibration.calibration.posterior(score, args.prior))
        same = llr > bayes_threshold(args.prior)
        print(f"log-likelihood ratio = {llr:.3f} (natural log; > 0 favours the same speaker)")
        print(f"P(same speaker) = {posterior:.3f} at prior P(same) = {args.prior:g}")
        print(f"decision: {'SAME speaker' if same else 'DIFFERENT speakers'} (Bayes decision at that prior, "
              f"equal error costs)")
        return EXIT_OK
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    same = score > threshold
    print(f"decision: {'SAME speaker' if same else 'DIFFERENT speakers'} "
          f"(score {'>' if same else '<='} threshold {threshold:g})")
    if args.threshold is None:
        print("(no calibration for this model: 'deep-speaker calibrate' fits one, then verify prints an LLR and "
              "P(same))")
    return EXIT_OK


def run_evaluate(args: argparse.Namespace) -> int:
    """All-pairs or trial-list verification report: table on stdout, JSON (+ trial scores) and PNGs on request."""
    from ..atomic import write_json
    from ..eval.formats import trial_scores_path, write_trial_scores
    from ..eval.tables import table_format, write_table
    from ..eval.verification import compare_with, evaluate, verification_source
    from ..eval.verification_report import format_comparison, format_table, table_rows, write_plots

    config = EvaluateConfig(**config_values(args, EvaluateConfig))  # a usage error now, not after the embedding
    # before the model loads
    source = verification_source(args.audio_dir, trials=args.trials, root=args.root, cache=args.cache)
    for path in args.table:
        table_format(path)  # an unknown suffix is a usage error before anything is embedded
    if args.compare and not trial_scores_path(args.compare).is_file():
        raise DeepSpeakerError(f"--compare {args.compare}: no trial scores beside it "
                               f"({trial_scores_path(args.compare)})")
    check_html_option(args)
    encoder = encoder_from_args(args)
    score_norm = score_norm_from_args(args, encoder)
    calibration = calibration_from_args(args, encoder, score_norm)
    result = evaluate(encoder, source, config, score_norm=score_norm, calibration=calibration)
    if args.compare:
        result.report["comparison"] = compare_with(result, args.compare, seed=config.seed,
                                                   replicates=config.bootstrap or DEFAULT_REPLICATES)
    failed = report_failures(result.failures)
    print(format_table(result.report))
    if args.compare:
        print(format_comparison(result.report["comparison"]))
    for path in args.table:
        print(f"table written to {write_table(path, ['metric', 'value'], table_rows(result.report))}")
    if args.output:
        scores_path = write_trial_scores(args.output, scores=result.scores, labels=result.labels,
                                         keys=result.trial_keys(), speakers=result.trial_speakers())
        write_json(args.output, result.report)
        print(f"report written to {args.output} (trial scores: {scores_path})")
    if args.plots:
        for path in write_plots(args.plots, result.scores, result.labels, eer=result.report["eer"],
                                labelled=result.labelled, projection=config.projection):
            print(f"picture written to {path}")
    if args.html:
        print(f"html report: {_write_html(args.html, result, config.projection)}")
    return EXIT_PARTIAL if failed else EXIT_OK


def _write_html(folder: str, result, projection: str) -> Path:
    """The evaluate-verification page (eval.html): the table, the --plots pictures, one row per trial and the
    hardest trials to listen to."""
    from ..eval.html import verification_page, write_page
    from ..eval.verification_report import table_rows, write_plots

    trials = result.trials
    paths = trials.items.paths
    first, second = result.trial_speakers()
    rows = [[paths[a], paths[b], sa, sb, int(label), float(score)]
            for a, b, sa, sb, label, score in zip(trials.first.tolist(), trials.second.tolist(), first, second,
                                                  result.labels.tolist(), result.scores.tolist())]
    page = verification_page(result.report, table_rows(result.report), rows)
    return write_page(folder, page, lambda out: write_plots(out, result.scores, result.labels,
                                                            eer=result.report["eer"], labelled=result.labelled,
                                                            projection=projection))


def run_calibrate(args: argparse.Namespace) -> int:
    """Fit a score-to-LLR calibration on a labelled folder's pairs or a trial list; write it beside the model."""
    from ..eval.scoring import beside_model, save_calibration
    from ..eval.verification import calibrate, verification_source

    config = CalibrateConfig(**config_values(args, CalibrateConfig))
    source = verification_source(args.audio_dir, trials=args.trials, root=args.root, cache=args.cache,
                                 segments=config.segments)
    if args.output is None and not args.model:
        raise DeepSpeakerError("give -o FILE: the calibration of the packaged model cannot be written beside it")
    out = Path(args.output) if args.output else beside_model(args.model)
    encoder = encoder_from_args(args)
    score_norm = score_norm_from_args(args, encoder)
    record, failures = calibrate(encoder, source, config, score_norm=score_norm)
    failed = report_failures(failures)
    save_calibration(out, record)
    c, fit = record.calibration, record.fitted_on
    print(f"llr = {c.scale:.4f} * score {c.offset:+.4f}   (fitted at prior {c.prior:g} on {fit['n_target']} target "
          f"and {fit['n_nontarget']} non-target trials)")
    print(f"on those trials: Cllr {fit['cllr']:.4f} bits, minCllr {fit['min_cllr']:.4f} bits")
    print(f"calibration written to {out}; verify and evaluate-verification use it for model {record.model_identity}")
    return EXIT_PARTIAL if failed else EXIT_OK


def _speakers_source(args: argparse.Namespace, speakers: list[str]) -> tuple[Embedded, Encoder]:
    """Embeddings of the speakers' utterances (from the feature cache, else the audio folder) and their encoder.

    The speaker ids are checked before the model is loaded, so a typo is answered at once; the folder is walked once.
    """
    from ..data.sources import open_features
    from ..eval.verification import check_speakers, embed_cache, embed_utterances, folder_utterances

    if getattr(args, "cache_output_dir", None):
        cache = open_features(args.cache_output_dir)
        check_speakers(speakers, cache.speakers, f"the cache {cache.path}")
        # Training on this cache writes CACHE/checkpoints: its newest triplet checkpoint is the natural default.
        with native_stderr_silenced():  # Keras loads: TensorFlow's C++ start-up lines
            from ..encoders.deepspeaker import DEFAULT_CHECKPOINT_ROOT, default_model_path
        model = getattr(args, "model", None) or default_model_path([cache.path / "checkpoints", DEFAULT_CHECKPOINT_ROOT])
        encoder = encoder_from_args(args, model=model)
        return embed_cache(encoder, cache, speakers), encoder
    if not getattr(args, "audio_dir", None):
        raise DeepSpeakerError("give --cache_output_dir (a cache built with --update_cache) or --audio_dir")
    utterances, rejected = folder_utterances(args.audio_dir, speakers=speakers)
    encoder = encoder_from_args(args)
    return embed_utterances(encoder, utterances, rejected), encoder


def unseen_speakers(args: argparse.Namespace) -> int:
    """The original ``--unseen_speakers A,B``: SAP of A against itself, SAN of A against B (cosine similarity)."""
    from ..eval.verification import speaker_pair_similarity

    speakers = [s.strip() for s in args.unseen_speakers.split(",") if s.strip()]
    if len(speakers) != 2 or speakers[0] == speakers[1]:
        raise DeepSpeakerError(f"--unseen_speakers needs two different speaker ids, e.g. p362,p363; "
                               f"got {args.unseen_speakers!r}")
    labelled, _ = _speakers_source(args, speakers)
    failed = report_failures(labelled.failures)
    r = speaker_pair_similarity(labelled, *speakers)
    print(f"Speakers {r['first']} ({r['n_first']} utterances) and {r['second']} ({r['n_second']} utterances)")
    print(f"SAP (mean cosine similarity, same speaker {r['first']}) = {r['sap']:.4f}   [{r['sap_pairs']} pairs]")
    print(f"SAN (mean cosine similarity, {r['first']} vs {r['second']}) = {r['san']:.4f}   [{r['san_pairs']} pairs]")
    print(SIMILARITY_NOTE)
    return EXIT_PARTIAL if failed else EXIT_OK


def get_embeddings(args: argparse.Namespace) -> int:
    """The original ``--get_embeddings SPK``: write the speaker's utterance embeddings to SPK_embeddings.npz."""
    from ..eval.export import save_embeddings

    speaker = args.get_embeddings.strip()
    labelled, encoder = _speakers_source(args, [speaker])
    failed = report_failures(labelled.failures)
    out = Path(getattr(args, "output", None) or f"{speaker}_embeddings.npz")
    save_embeddings(out, labelled.embeddings, labelled.paths, model_id=encoder.identity, speakers=labelled.speakers,
                    encoder=encoder.name)
    print(f"wrote the embeddings of {len(labelled.paths)} utterances of speaker {speaker} "
          f"({labelled.embeddings.shape[1]}-d, L2-normalised) to {out.resolve()}")
    print(f"load them with: np.load({str(out)!r})['embeddings']")
    return EXIT_PARTIAL if failed else EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="are two recordings the same speaker?",
                              description="Cosine similarity of two files' embeddings and the decision at a threshold.")
    p.add_argument("first", metavar="A.wav")
    p.add_argument("second", metavar="B.wav")
    p.add_argument("--threshold", type=finite_float, default=None,
                   help=f"decide on the raw score instead of the calibrated LLR: 'same speaker' when the score "
                        f"exceeds it (without a calibration the default is {DEFAULT_THRESHOLD:g})")
    p.add_argument("--prior", type=probability, default=DEFAULT_PRIOR,
                   help=f"prior probability of 'same speaker' for P(same) and the Bayes decision (default "
                        f"{DEFAULT_PRIOR:g})")
    add_embedder_options(p)
    add_scoring_options(p)
    p.set_defaults(func=verify)

    p = subparsers.add_parser(
        "evaluate-verification", help="EER, minDCF, SAP/SAN over a labelled set or a trial list",
        description="Speaker-verification report over all same/different-speaker pairs of a labelled folder or "
                    "feature cache, or over a VoxCeleb trial list ('1 a.wav b.wav' per line): SAP, SAN, EER, "
                    "minDCF (p_target 0.01 and 0.05), best F-measure/TPR/accuracy, trial counts.")
    p.add_argument("audio_dir", nargs="?", metavar="DIR", help="labelled folder (VCTK, LibriSpeech, speaker_id/)")
    p.add_argument("--trials", metavar="FILE", help="VoxCeleb-format trial list")
    p.add_argument("--root", metavar="DIR", help="folder the trial paths are relative to (default: the list's)")
    p.add_argument("--cache", metavar="DIR", help="feature cache (deep-speaker cache build)")
    p.add_argument("-o", "--output", metavar="REPORT.json", help="write the report as JSON")
    p.add_argument("--plots", metavar="DIR", help="write det.png (and, for labelled sets, similarity_matrix.png "
                                                  "and projection_*.png) here")
    # The report's numbers: defaults, help texts and checks written once, on eval.config.EvaluateConfig.
    add_config_options(p, EvaluateConfig, only=("projection",))
    add_html_option(p)
    add_config_options(p, EvaluateConfig, only=("bootstrap", "seed"))
    p.add_argument("--table", action="append", default=[], metavar="FILE",
                   help="also write the table to FILE as .csv, .md, .tex or .txt (by suffix; repeatable)")
    p.add_argument("--compare", metavar="OTHER.json",
                   help="a report of another system on the same trials (written with -o): the paired difference")
    add_embedder_options(p)
    add_scoring_options(p)
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser(
        "calibrate", help="fit a score-to-LLR calibration (for verify and evaluate-verification)",
        description="Linear calibration llr = a * score + b fitted by prior-weighted logistic regression on all "
                    "pairs of a labelled folder or cache, or on a trial list; written beside the model "
                    "(MODEL.calibration.json) or to -o. Fit it on other speakers than those you evaluate on.")
    p.add_argument("audio_dir", nargs="?", metavar="DIR", help="labelled folder (VCTK, LibriSpeech, speaker_id/)")
    p.add_argument("--trials", metavar="FILE", help="VoxCeleb-format trial list")
    p.add_argument("--root", metavar="DIR", help="folder the trial paths are relative to (default: the list's)")
    p.add_argument("--cache", metavar="DIR", help="feature cache (deep-speaker cache build)")
    add_config_options(p, CalibrateConfig)  # --segments, --prior: eval.config.CalibrateConfig
    p.add_argument("-o", "--output", metavar="FILE.json", help="where to write it (default: beside --model)")
    add_embedder_options(p)
    add_scoring_options(p, calibration=False)
    p.set_defaults(func=run_calibrate)
