"""``deep-speaker verify`` / ``evaluate-verification``, and the original ``--unseen_speakers`` / ``--get_embeddings``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import write_json
from ..data.cache import FeatureCache
from ..encoders import Encoder
from ..encoders.deepspeaker import DEFAULT_CHECKPOINT_ROOT, default_model_path
from ..errors import DeepSpeakerError
from ..eval.export import save_embeddings
from ..eval.verification import (
    Labelled,
    check_speakers,
    embed_cache,
    embed_utterances,
    evaluate,
    folder_utterances,
    format_table,
    speaker_pair_similarity,
    verification_source,
    write_plots,
)
from ..metrics import cosine_scores
from . import EXIT_OK, EXIT_PARTIAL
from .embed import add_embedder_options, encoder_from_args, report_failures
from .options import finite_float

# Cosine similarity midway between unrelated (0) and identical (1) voices; calibrate a model's own threshold
# with evaluate-verification (its EER threshold).
DEFAULT_THRESHOLD = 0.5
SIMILARITY_NOTE = ("cosine similarity: 1 = same direction, 0 = unrelated; the original README printed "
                   "1 - similarity (a distance). A good model has SAP well above SAN.")


def verify(args: argparse.Namespace) -> int:
    """Score two files and decide 'same speaker' when the cosine similarity exceeds the threshold."""
    encoder = encoder_from_args(args)
    result = encoder.embed_files_with_failures([args.first, args.second])
    if result.failures:
        report_failures(result.failures)
        return EXIT_PARTIAL
    score = float(cosine_scores(result.embeddings[0], result.embeddings[1]))
    same = score > args.threshold
    print(f"score (cosine similarity) = {score:.4f}")
    print(f"decision: {'SAME speaker' if same else 'DIFFERENT speakers'} "
          f"(score {'>' if same else '<='} threshold {args.threshold:g})")
    return EXIT_OK


def run_evaluate(args: argparse.Namespace) -> int:
    """All-pairs or trial-list verification report: table on stdout, JSON and PNGs on request."""
    source = verification_source(args.audio_dir, args.trials, args.root, args.cache)  # before the model loads
    result = evaluate(encoder_from_args(args), source)
    failed = report_failures(result.failures)
    print(format_table(result.report))
    if args.output:
        write_json(args.output, result.report)
        print(f"report written to {args.output}")
    if args.plots:
        for path in write_plots(args.plots, result.scores, result.labels, result.report["eer"], result.labelled,
                                args.projection):
            print(f"picture written to {path}")
    return EXIT_PARTIAL if failed else EXIT_OK


def _speakers_source(args: argparse.Namespace, speakers: list[str]) -> tuple[Labelled, Encoder]:
    """Embeddings of the speakers' utterances (from the feature cache, else the audio folder) and their encoder.

    The speaker ids are checked before the model is loaded, so a typo is answered at once; the folder is walked once.
    """
    if getattr(args, "cache_output_dir", None):
        cache = FeatureCache(args.cache_output_dir)
        check_speakers(speakers, cache.speakers, f"the cache {cache.path}")
        # Training on this cache writes CACHE/checkpoints: its newest triplet checkpoint is the natural default.
        model = getattr(args, "model", None) or default_model_path([cache.path / "checkpoints", DEFAULT_CHECKPOINT_ROOT])
        encoder = encoder_from_args(args, model)
        return embed_cache(encoder, cache, speakers), encoder
    if not getattr(args, "audio_dir", None):
        raise DeepSpeakerError("give --cache_output_dir (a cache built with --update_cache) or --audio_dir")
    utterances, rejected = folder_utterances(args.audio_dir, speakers=speakers)
    encoder = encoder_from_args(args)
    return embed_utterances(encoder, utterances, rejected), encoder


def unseen_speakers(args: argparse.Namespace) -> int:
    """The original ``--unseen_speakers A,B``: SAP of A against itself, SAN of A against B (cosine similarity)."""
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
    speaker = args.get_embeddings.strip()
    labelled, encoder = _speakers_source(args, [speaker])
    failed = report_failures(labelled.failures)
    out = Path(getattr(args, "output", None) or f"{speaker}_embeddings.npz")
    save_embeddings(out, labelled.embeddings, labelled.sources, encoder.identity, labelled.speakers, encoder.name)
    print(f"wrote the embeddings of {len(labelled.sources)} utterances of speaker {speaker} "
          f"({labelled.embeddings.shape[1]}-d, L2-normalised) to {out.resolve()}")
    print(f"load them with: np.load({str(out)!r})['embeddings']")
    return EXIT_PARTIAL if failed else EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="are two recordings the same speaker?",
                              description="Cosine similarity of two files' embeddings and the decision at a threshold.")
    p.add_argument("first", metavar="A.wav")
    p.add_argument("second", metavar="B.wav")
    p.add_argument("--threshold", type=finite_float, default=DEFAULT_THRESHOLD,
                   help=f"'same speaker' when the score exceeds it (default {DEFAULT_THRESHOLD:g}; use the EER "
                        f"threshold evaluate-verification reports for your model)")
    add_embedder_options(p)
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
    p.add_argument("--projection", choices=("tsne", "pca"), default="tsne", help="2-D projection (default tsne)")
    add_embedder_options(p)
    p.set_defaults(func=run_evaluate)
