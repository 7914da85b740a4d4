"""Checkpoint averaging on the dev protocol (issue #33): a job's checkpoints, each alone, their weights averaged, and
their embeddings averaged.

    python benchmarks/checkpoint_average_dev.py --job runs/default-model --dev runs/default-model/dev \
        [--baseline MODEL] [--pooling utterance]

Takes a finished main job (``deep-speaker run`` or scripts/train_default_model.py) and scores on the dev protocol
(``eval.dev.evaluate_dev``, speaker-bootstrap intervals) the embedding networks of its best softmax, best triplet and
last triplet checkpoints, and of the element-wise mean of their weights (every variable, batch-norm statistics
included: the triplet phase starts from the best softmax checkpoint, so the three lie near one another), and the
unit mean of the unit embeddings of the best softmax and best triplet checkpoints (an ensemble: twice the embedding
work), each paired against --baseline (default: the packaged model), all with --pooling (default windows).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from deep_speaker.encoders import get_encoder  # noqa: E402
from deep_speaker.encoders.base import Encoder, EncoderWrapper  # noqa: E402
from deep_speaker.encoders.constants import POOLINGS  # noqa: E402
from deep_speaker.encoders.deepspeaker import packaged_model  # noqa: E402
from deep_speaker.eval.dev import evaluate_dev  # noqa: E402
from deep_speaker.eval.dev_report import dev_tables  # noqa: E402
from deep_speaker.metrics import normalize_rows  # noqa: E402
from deep_speaker.model.rescnn import averaged_model, load_model, to_embedding_model  # noqa: E402

CHECKPOINTS = ("softmax/best.keras", "triplet/best.keras", "triplet/last.keras")


class MeanEmbedding(EncoderWrapper):
    """Encoders of one kind (the same inputs) as one: the unit mean of their unit embeddings."""

    def __init__(self, encoders: list[Encoder]) -> None:
        super().__init__(encoders[0])
        self.encoders = encoders

    identity = property(lambda self: "+".join(e.identity for e in self.encoders))

    def embed_prepared(self, inputs):
        return normalize_rows(sum(normalize_rows(e.embed_prepared(inputs)) for e in self.encoders))

    def embed_features_batch(self, features):
        return normalize_rows(sum(normalize_rows(e.embed_features_batch(features)) for e in self.encoders))

    def embed_files_with_failures(self, paths):
        return Encoder.embed_files_with_failures(self, paths)  # the inner's own would embed with it alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, required=True, help="a finished main job's output folder")
    parser.add_argument("--dev", type=Path, required=True, help="the dev set (eval.dev.make_dev_set's folder)")
    parser.add_argument("--baseline", type=Path, default=None, help="paired against; default: the packaged model")
    parser.add_argument("--pooling", choices=POOLINGS, default="windows", help="every encoder's pooling")
    args = parser.parse_args()
    models = {name: to_embedding_model(load_model(args.job / "checkpoints" / name)) for name in CHECKPOINTS}
    candidates = dict(models)
    candidates["mean of triplet best, last"] = averaged_model([models[n] for n in CHECKPOINTS[1:]])
    candidates["mean of all three"] = averaged_model(list(models.values()))
    encoders = {name: get_encoder(model=model, pooling=args.pooling) for name, model in candidates.items()}
    encoders["embeddings of softmax best, triplet best averaged"] = MeanEmbedding(
        [encoders[name] for name in CHECKPOINTS[:2]])
    baseline = get_encoder(model=args.baseline or packaged_model(), pooling=args.pooling)
    reports = {name: evaluate_dev(encoder, args.dev, baseline=baseline) for name, encoder in encoders.items()}
    print(dev_tables(reports))


if __name__ == "__main__":
    main()
