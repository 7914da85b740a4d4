"""``deep-speaker verify`` / ``evaluate-verification``, and the original ``--unseen_speakers`` / ``--get_embeddings``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..data.cache import FeatureCache
from ..data.corpus import list_utterances
from ..encoders.deepspeaker import DEFAULT_CHECKPOINT_ROOT, default_model_path, save_embeddings
from ..errors import DeepSpeakerError
from ..metrics import cosine_scores, verification_report
from ..eval.verification import (Labelled, check_speakers, embed_cache, embed_folder, labelled_report, read_trials,
                            score_trials, speaker_pair_similarity, write_plots)
from . import EXIT_OK, EXIT_PARTIAL
from .embed import add_embedder_options, embedder_from_args, report_failures

# Cosine similarity midway between unrelated (0) and identical (1) voices; calibrate a model's own threshold
# with evaluate-verification (its EER threshold).
DEFAULT_THRESHOLD = 0.5
SIMILARITY_NOTE = ("cosine similarity: 1 = same direction, 0 = unrelated; the original README printed "
                   "1 - similarity (a distance). A good model has SAP well above SAN.")


def verify(args: argparse.Namespace) -> int:
    """Score two files and decide 'same speaker' when the cosine similarity exceeds the threshold."""
    embedder = embedder_from_args(args)
    result = embedder.embed_files_with_failures([args.first, args.second])
    if result.failures:
        report_failures(result.failures)
        return EXIT_PARTIAL
    score = float(cosine_scores(result.embeddings[0], result.embeddings[1]))
    same = score > args.threshold
    print(f"score (cosine similarity) = {score:.4f}")
    print(f"decision: {'SAME speaker' if same else 'DIFFERENT speakers'} "
          f"(score {'>' if same else '<='} threshold {args.threshold:g})")
    return EXIT_OK


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table."""
    best = report["best_f"]
    rows = [("trials", f"{report['n_trials']} ({report['n_target']} target, {report['n_nontarget']} non-target)")]
    if "sap" in report:
        rows += [("SAP", f"{report['sap']:.4f}  (mean cosine similarity, same speaker)"),
                 ("SAN", f"{report['san']:.4f}  (mean cosine similarity, different speakers)")]
    else:
        rows += [("mean target score", f"{report['mean_target_score']:.4f}"),
                 ("mean non-target score", f"{report['mean_nontarget_score']:.4f}")]
    rows.append(("EER", f"{100 * report['eer']:.2f} %  at threshold {report['eer_threshold']:.4f}"))
    for name, value in report["min_dcf"].items():
        rows.append((f"minDCF ({name})", f"{value['min_dcf']:.4f}  at threshold {value['threshold']:.4f}"))
    rows.append(("best F-measure", f"{best['f_measure']:.4f}  at threshold {best['threshold']:.4f} "
                                   f"(TPR {best['tpr']:.4f}, accuracy {best['accuracy']:.4f})"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def evaluate(args: argparse.Namespace) -> int:
    """All-pairs or trial-list verification report: table on stdout, JSON and PNGs on request."""
    sources = [bool(args.audio_dir), bool(args.trials), bool(args.cache)]
    if sum(sources) != 1:
        raise DeepSpeakerError("give exactly one of: a labelled folder DIR, --trials FILE (with --root), --cache DIR")
    embedder = embedder_from_args(args)
    labelled: Labelled | None = None
    if args.trials:
        scores, labels, failures = score_trials(embedder, read_trials(args.trials, args.root))
        report = verification_report(scores, labels)
        source = {"trials": str(args.trials), "root": str(args.root or Path(args.trials).parent)}
    else:
        labelled = embed_folder(embedder, args.audio_dir) if args.audio_dir else embed_cache(embedder,
                                                                                            FeatureCache(args.cache))
        failures = labelled.failures
        report, scores, labels = labelled_report(labelled)
        source = {"audio_dir": str(args.audio_dir)} if args.audio_dir else {"cache": str(args.cache)}
    failed = report_failures(failures)
    report = {**report, "source": source, "model_identity": embedder.model_identity,
              "failures": [{"path": f.path, "reason": f.reason} for f in failures]}
    print(format_table(report))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.output}")
    if args.plots:
        for path in write_plots(args.plots, scores, labels, report["eer"], labelled, args.projection):
            print(f"picture written to {path}")
    return EXIT_PARTIAL if failed else EXIT_OK


def _speakers_source(args: argparse.Namespace, speakers: list[str]) -> tuple[Labelled, str]:
    """Embeddings of the speakers' utterances (from the feature cache, else the audio folder) and the model identity.

    The speaker ids are checked before the model is loaded, so a typo is answered at once.
    """
    if getattr(args, "cache_output_dir", None):
        cache = FeatureCache(args.cache_output_dir)
        check_speakers(speakers, cache.speakers, f"the cache {cache.path}")
        # Training on this cache writes CACHE/checkpoints: its newest triplet checkpoint is the natural default.
        model = getattr(args, "model", None) or default_model_path([cache.path / "checkpoints", DEFAULT_CHECKPOINT_ROOT])
        embedder = embedder_from_args(args, model)
        return embed_cache(embedder, cache, speakers), embedder.model_identity
    if not getattr(args, "audio_dir", None):
        raise DeepSpeakerError("give --cache_output_dir (a cache built with --update_cache) or --audio_dir")
    check_speakers(speakers, sorted({u.speaker for u in list_utterances(args.audio_dir)}), args.audio_dir)
    embedder = embedder_from_args(args)
    return embed_folder(embedder, args.audio_dir, speakers=speakers), embedder.model_identity


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
    labelled, identity = _speakers_source(args, [speaker])
    failed = report_failures(labelled.failures)
    out = Path(getattr(args, "output", None) or f"{speaker}_embeddings.npz")
    save_embeddings(out, labelled.embeddings, labelled.sources, identity, labelled.speakers)
    print(f"wrote the embeddings of {len(labelled.sources)} utterances of speaker {speaker} "
          f"({labelled.embeddings.shape[1]}-d, L2-normalised) to {out.resolve()}")
    print(f"load them with: np.load({str(out)!r})['embeddings']")
    return EXIT_PARTIAL if failed else EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="are two recordings the same speaker?",
                              description="Cosine similarity of two files' embeddings and the decision at a threshold.")
    p.add_argument("first", metavar="A.wav")
    p.add_argument("second", metavar="B.wav")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
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
    p.set_defaults(func=evaluate)
