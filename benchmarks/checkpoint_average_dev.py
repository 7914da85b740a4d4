"""Checkpoint averaging on the dev protocol (issue #33): a job's checkpoints, each alone and their weights averaged.

    python benchmarks/checkpoint_average_dev.py --job runs/default-model --dev runs/default-model/dev \
        [--baseline MODEL]

Takes a finished main job (``deep-speaker run`` or scripts/train_default_model.py) and scores on the dev protocol
(``eval.dev.evaluate_dev``, speaker-bootstrap intervals) the embedding networks of its best softmax, best triplet and
last triplet checkpoints, and of the element-wise mean of their weights (every variable, batch-norm statistics
included: the triplet phase starts from the best softmax checkpoint, so the three lie near one another), each
paired against --baseline (default: the packaged model).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from deep_speaker.encoders import get_encoder  # noqa: E402
from deep_speaker.encoders.deepspeaker import packaged_model  # noqa: E402
from deep_speaker.eval.dev import evaluate_dev  # noqa: E402
from deep_speaker.eval.dev_report import dev_tables  # noqa: E402
from deep_speaker.model.rescnn import load_model, to_embedding_model  # noqa: E402

CHECKPOINTS = ("softmax/best.keras", "triplet/best.keras", "triplet/last.keras")


def averaged(models: list[keras.Model]) -> keras.Model:
    """A copy of models[0] whose every variable is the mean of that variable over the models."""
    mean = [np.mean([np.asarray(m.weights[i]) for m in models], axis=0) for i in range(len(models[0].weights))]
    out = keras.models.clone_model(models[0])
    out.set_weights(mean)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, required=True, help="a finished main job's output folder")
    parser.add_argument("--dev", type=Path, required=True, help="the dev set (eval.dev.make_dev_set's folder)")
    parser.add_argument("--baseline", type=Path, default=None, help="paired against; default: the packaged model")
    args = parser.parse_args()
    models = {name: to_embedding_model(load_model(args.job / "checkpoints" / name)) for name in CHECKPOINTS}
    candidates = dict(models)
    candidates["mean of triplet best, last"] = averaged([models[n] for n in CHECKPOINTS[1:]])
    candidates["mean of all three"] = averaged(list(models.values()))
    baseline = get_encoder(model=args.baseline or packaged_model())
    reports = {name: evaluate_dev(get_encoder(model=model), args.dev, baseline=baseline)
               for name, model in candidates.items()}
    print(dev_tables(reports))


if __name__ == "__main__":
    main()
