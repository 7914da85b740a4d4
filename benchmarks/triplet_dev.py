"""Does the triplet phase help on speakers it never saw? Its dev-protocol EERs step by step (issue #33).

    python benchmarks/triplet_dev.py --job runs/default-model --dev runs/default-model/dev --work triplet-dev \
        [--learning-rate 1e-3] [--lr-schedule plateau] [--margin 0.1] [--steps 600] [--every 100] [--pooling windows]

Takes a finished main job (``deep-speaker run`` or scripts/train_default_model.py: its training cache and its best
softmax checkpoint), trains the triplet phase from that checkpoint as the job does (the job's width, batch size,
SpecAugment and seed; SGD at --learning-rate and --lr-schedule, the triplet loss's --margin) into WORK, in pieces of --every steps (a resumed run is the
uninterrupted one: tests/test_training.py), and scores the checkpoint after each piece on the dev protocol
(``eval.dev.evaluate_dev``: clean and the out-of-domain mean, with speaker-bootstrap intervals). Step 0 is the
softmax checkpoint itself. The triplet validation EER (held-out audio of the training speakers, what picks the job's
best.keras) is printed beside it. The table goes to WORK/triplet_dev.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from deep_speaker.atomic import write_json  # noqa: E402
from deep_speaker.encoders import get_encoder  # noqa: E402
from deep_speaker.encoders.constants import POOLINGS  # noqa: E402
from deep_speaker.eval.dev import evaluate_dev  # noqa: E402
from deep_speaker.eval.dev_report import eer_part, interval_text  # noqa: E402
from deep_speaker.model.checkpoints import best_checkpoint, read_state  # noqa: E402
from deep_speaker.model.constants import TRIPLET_MARGIN  # noqa: E402
from deep_speaker.model.rescnn import load_model, to_embedding_model  # noqa: E402
from deep_speaker.train import TrainConfig, train  # noqa: E402
from deep_speaker.train.config import LR_SCHEDULES  # noqa: E402


def dev_row(model_path: Path, dev: Path, pooling: str) -> dict:
    """The dev report's clean EER and OOD mean EER of a checkpoint's embedding network."""
    encoder = get_encoder(model=to_embedding_model(load_model(model_path)), pooling=pooling)
    report = evaluate_dev(encoder, dev)
    return {"clean": eer_part(report["conditions"]["clean"]), "ood": report["ood"]["eer"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, required=True, help="a finished main job's output folder")
    parser.add_argument("--dev", type=Path, required=True, help="the dev set (eval.dev.make_dev_set's folder)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--margin", type=float, default=TRIPLET_MARGIN, help="the triplet loss's margin")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=LR_SCHEDULES[0],
                        help="cosine: one piece (--every is --steps), as its schedule is fixed by the steps")
    parser.add_argument("--pooling", choices=POOLINGS, default=POOLINGS[0], help="how the dev protocol embeds")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    if args.lr_schedule == "cosine":
        args.every = args.steps

    job = json.loads((args.job / "summary.json").read_text())["config"]
    softmax = best_checkpoint(args.job / "checkpoints", "softmax")
    rows = [{"step": 0, "val_eer": None, **dev_row(softmax, args.dev, args.pooling)}]
    for steps in range(args.every, args.steps + 1, args.every):
        train(TrainConfig(phase="triplet", output_dir=args.work, cache_dir=args.job / "cache" / "train-clean-100",
                          init_model=softmax, steps=steps, learning_rate=args.learning_rate, width=job["width"],
                          triplet_margin=args.margin, lr_schedule=args.lr_schedule,
                          batch_size=job["batch_size"], save_every=args.every, seed=job["seed"],
                          spec_augment=job["spec_augment"], verbose=0))
        state = read_state(args.work / "triplet")
        rows.append({"step": steps, "val_eer": state["last_logs"].get("val_eer"),
                     **dev_row(args.work / "triplet" / "last.keras", args.dev, args.pooling)})
        print(f"step {steps}: validation EER {100 * rows[-1]['val_eer']:.2f} %, dev clean "
              f"{interval_text(rows[-1]['clean'])} %, dev OOD mean {interval_text(rows[-1]['ood'])} %", flush=True)
    print(f"\ntriplet phase from {softmax}, SGD {args.learning_rate:g} ({args.lr_schedule}), margin "
          f"{args.margin:g}, batch {job['batch_size']}, seed {job['seed']}; dev pooling {args.pooling}")
    print("step  validation EER %  dev clean EER %     dev OOD mean EER %")
    for row in rows:
        val = "-" if row["val_eer"] is None else f"{100 * row['val_eer']:.2f}"
        print(f"{row['step']:>4}  {val:>16}  {interval_text(row['clean']):>18}  {interval_text(row['ood']):>20}")
    write_json(args.work / "triplet_dev.json", {"softmax": str(softmax), "learning_rate": args.learning_rate,
                                                 "lr_schedule": args.lr_schedule, "margin": args.margin,
                                                 "pooling": args.pooling, "rows": rows})


if __name__ == "__main__":
    main()
