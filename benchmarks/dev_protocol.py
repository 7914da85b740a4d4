"""The dev protocol of issue #33: EER of encoders on held-out train-clean-100 speakers, clean and out of domain.

    python benchmarks/dev_protocol.py --work DIR [--model PATH ...] [--pooling P] [--encoders deep-speaker,mean-mfcc,resemblyzer]

The dev speakers are ``eval.dev.dev_speakers`` of the bundled samples/librispeech/train-clean-100 (32, half female,
half male; the README's test speakers, test-other, are never touched); their dev set (``eval.dev.make_dev_set``:
clean, Opus codec, pitch, tempo, mel vocoder) is written once to DIR/dev-set. Each encoder is scored by
``eval.dev.evaluate_dev`` (all pairs of 3 segments per utterance, 1000 speaker-bootstrap resamples):
deep-speaker with the packaged model, unless --model is given (each --model PATH is one more deep-speaker row).
Printed: EER % [95 % interval] per condition and the mean over the out-of-domain conditions, then each encoder's
paired difference to mean-mfcc (percentage points; negative: better than the baseline), and the wall time of each
encoder's evaluation. The reports go to DIR/dev.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from deep_speaker.atomic import write_json  # noqa: E402
from deep_speaker.encoders import Encoder, get_encoder  # noqa: E402
from deep_speaker.encoders.constants import POOLINGS  # noqa: E402
from deep_speaker.encoders.deepspeaker import PACKAGED_MODEL_DIR, packaged_model  # noqa: E402
from deep_speaker.eval.dev import dev_speakers, evaluate_dev, make_dev_set  # noqa: E402
from deep_speaker.eval.dev_report import dev_tables  # noqa: E402

TRAIN = Path(__file__).resolve().parents[1] / "samples" / "librispeech" / "train-clean-100"
BASELINE = "mean-mfcc"


def build(name: str, model: Path | None, pooling: str | None) -> tuple[str, Encoder]:
    """A row's label and its encoder (deep-speaker: ``model``, else the packaged model, with ``pooling``)."""
    if name != "deep-speaker":
        return name, get_encoder(name)
    model = model or packaged_model()
    encoder = get_encoder(name, model=str(model), pooling=pooling)
    return f"deep-speaker ({model.name}, pooling {encoder.pooling})", encoder


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
    baseline = get_encoder(BASELINE)
    reports: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name, model in wanted:
        start = time.perf_counter()
        label, encoder = build(name, model, args.pooling)
        reports[label] = evaluate_dev(encoder, dev, segments=args.segments, bootstrap=args.bootstrap, seed=args.seed,
                                      baseline=None if name == BASELINE else baseline)
        seconds[label] = time.perf_counter() - start
        print(f"{label}: {seconds[label]:.1f} s")

    print()
    print(dev_tables(reports, seconds))
    print("(wall s: building the encoder, embedding every condition and the bootstraps; rows with a difference "
          f"include one {BASELINE} pass)")
    write_json(args.work / "dev.json", {"speakers": speakers, "seconds": seconds, "reports": reports})
    print(f"written {args.work / 'dev.json'}")


if __name__ == "__main__":
    main()
