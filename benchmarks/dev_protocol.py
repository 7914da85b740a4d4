"""The dev protocol of issue #33: EER of encoders on held-out train-clean-100 speakers, clean and out of domain.

    python benchmarks/dev_protocol.py --work DIR [--model PATH ...] [--pooling P] [--encoders deep-speaker,mean-mfcc,resemblyzer]
                                      [--whitened]

The dev speakers are ``eval.dev.dev_speakers`` of the bundled samples/librispeech/train-clean-100 (32, half female,
half male; the README's test speakers, test-other, are never touched); their dev set (``eval.dev.make_dev_set``:
clean, Opus codec, pitch, tempo, mel vocoder) is written once to DIR/dev-set. Each encoder is scored by
``eval.dev.evaluate_dev`` (all pairs of 3 segments per utterance, 1000 speaker-bootstrap resamples):
deep-speaker with the packaged model, unless --model is given (each --model PATH is one more deep-speaker row).
Printed: EER % [95 % interval] per condition and the mean over the out-of-domain conditions, then each encoder's
paired difference to mean-mfcc (percentage points; negative: better than the baseline; the table's header names the
baseline's encoder), and the wall time of each encoder's evaluation. The reports go to DIR/dev.json.

--whitened adds a second table, paired against mean-mfcc whitened: each encoder as it is and with its embeddings
centred and whitened by the statistics of the segments of the other 200 train-clean-100 speakers (the packaged
model's training speakers; never the dev or test ones). The whitening is the classic back-end that a
raw cosine of feature means lacks, so the whitened mean-MFCC is the stronger baseline to beat.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from sklearn.covariance import LedoitWolf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from deep_speaker.atomic import write_json  # noqa: E402
from deep_speaker.encoders import EmbedResult, Encoder, EncoderWrapper, get_encoder  # noqa: E402
from deep_speaker.encoders.constants import POOLINGS  # noqa: E402
from deep_speaker.encoders.deepspeaker import PACKAGED_MODEL_DIR, packaged_model  # noqa: E402
from deep_speaker.eval.dev import dev_speakers, evaluate_dev, make_dev_set  # noqa: E402
from deep_speaker.eval.verification import embed_segments, folder_utterances  # noqa: E402
from deep_speaker.eval.dev_report import dev_tables  # noqa: E402
from deep_speaker.metrics import normalize_rows  # noqa: E402

TRAIN = Path(__file__).resolve().parents[1] / "samples" / "librispeech" / "train-clean-100"
BASELINE = "mean-mfcc"


def build(name: str, model: Path | None, pooling: str | None) -> tuple[str, Encoder]:
    """A row's label and its encoder (deep-speaker: ``model``, else the packaged model, with ``pooling``)."""
    if name != "deep-speaker":
        return name, get_encoder(name)
    model = model or packaged_model()
    encoder = get_encoder(name, model=str(model), pooling=pooling)
    return f"deep-speaker ({model.name}, pooling {encoder.pooling})", encoder


class Whitened(EncoderWrapper):
    """``inner`` with each embedding ``e`` replaced by the unit vector of ``W (e - mean)``, ``W = S^(-1/2)``."""

    def __init__(self, inner: Encoder, mean: np.ndarray, covariance: np.ndarray) -> None:
        super().__init__(inner)
        values, vectors = np.linalg.eigh(covariance)
        self.mean, self.transform = mean, (vectors / np.sqrt(values)) @ vectors.T
        self._identity = hashlib.sha256(inner.identity.encode() + self.transform.tobytes()).hexdigest()[:16]

    identity = property(lambda self: self._identity)

    def whiten(self, embeddings: np.ndarray) -> np.ndarray:
        return normalize_rows((embeddings - self.mean) @ self.transform).astype(np.float32)

    def embed_prepared(self, inputs: Sequence[Any]) -> np.ndarray:
        return self.whiten(self.inner.embed_prepared(inputs))

    def embed_features_batch(self, features: Sequence[np.ndarray]) -> np.ndarray:
        return self.whiten(self.inner.embed_features_batch(features))

    def embed_files_with_failures(self, paths: Iterable[str | os.PathLike]) -> EmbedResult:
        return Encoder.embed_files_with_failures(self, paths)  # the inner's own would not whiten


def whitened(encoder: Encoder, speakers: list[str], segments: int) -> Whitened:
    """``encoder`` whitened by its embeddings of the ``segments`` parts of ``speakers``' train-clean-100 utterances:
    their mean, and Ledoit-Wolf's shrunk covariance (scikit-learn; 512-d embeddings from a few hundred segments)."""
    utterances, _ = folder_utterances(TRAIN, speakers=speakers)
    rows = embed_segments(encoder, utterances, segments).embeddings.astype(np.float64)
    return Whitened(encoder, rows.mean(axis=0), LedoitWolf().fit(rows).covariance_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the dev set and dev.json go here")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="a deep-speaker model to score (repeatable; default: the packaged model)")
    parser.add_argument("--pooling", choices=POOLINGS, default=None,
                        help="deep-speaker's pooling (default: the model card's, else windows)")
    parser.add_argument("--encoders", default=f"deep-speaker,{BASELINE},resemblyzer")
    parser.add_argument("--count", type=int, default=32, help="dev speakers, half of each gender")
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--whitened", action="store_true",
                        help="also each encoder whitened by the training speakers' statistics (module docstring)")
    args = parser.parse_args()

    card = json.loads((PACKAGED_MODEL_DIR / "model_card.json").read_text())
    print("Dev protocol (issue #33): held-out speakers of samples/librispeech/train-clean-100.")
    speakers = dev_speakers(TRAIN, count=args.count, seed=args.seed)
    if not set(speakers) <= set(card.get("dev_protocol", {}).get("speakers", ())):
        print(f"NOTE: the packaged model's card does not list these dev speakers as held out (trained on "
              f"{card.get('training_data', '?')}): its dev figures may be optimistic.")
    start = time.perf_counter()
    dev = make_dev_set(TRAIN, speakers, args.work / "dev-set", seed=args.seed)
    print(f"{len(speakers)} dev speakers: {' '.join(speakers)}\ndev set {dev} ready in "
          f"{time.perf_counter() - start:.1f} s")

    wanted = [(name, None) for name in args.encoders.split(",") if name != "deep-speaker" or not args.model]
    if "deep-speaker" in args.encoders.split(","):
        wanted[:0] = [("deep-speaker", m) for m in args.model]
    raw: dict[str, Encoder] = {}
    for name, model in wanted:
        label, raw[label] = build(name, model, args.pooling)
    tables = {f"against {BASELINE}": (raw, get_encoder(BASELINE), BASELINE)}
    if args.whitened:
        others = sorted(p.name for p in TRAIN.iterdir() if p.is_dir() and p.name not in speakers)
        whiten = {f"{label}, whitened": whitened(encoder, others, args.segments) for label, encoder in raw.items()}
        label = f"{BASELINE}, whitened"
        reference = whiten[label] if label in whiten else whitened(get_encoder(BASELINE), others, args.segments)
        others_raw = {name: encoder for name, encoder in raw.items() if name != BASELINE}
        tables[f"against {label} (the training speakers' statistics)"] = ({**others_raw, **whiten}, reference, label)
    # Per table: a row of the second is evaluated again (paired against another baseline), in its own time.
    reports: dict[str, dict[str, dict[str, Any]]] = {title: {} for title in tables}
    seconds: dict[str, dict[str, float]] = {title: {} for title in tables}
    for title, (encoders, baseline, baseline_label) in tables.items():
        for label, encoder in encoders.items():
            start = time.perf_counter()
            reports[title][label] = evaluate_dev(encoder, dev, segments=args.segments, bootstrap=args.bootstrap,
                                                 seed=args.seed,
                                                 baseline=None if label == baseline_label else baseline)
            seconds[title][label] = time.perf_counter() - start
    for title, table in reports.items():
        print(f"\n== {title}\n{dev_tables(table, seconds[title])}")
    print(f"(wall s: embedding every condition and the bootstraps; rows with a difference include one {BASELINE} "
          f"pass; the whitened rows' statistics are fitted before)")
    write_json(args.work / "dev.json", {"speakers": speakers, "seconds": seconds, "reports": reports})
    print(f"written {args.work / 'dev.json'}")


if __name__ == "__main__":
    main()
