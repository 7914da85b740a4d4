"""Choosing the checkpoint's step on the dev protocol, judged on dev speakers the choice did not see (issue #33).

    python benchmarks/checkpoint_steps_dev.py --dev runs/default-model/dev --jobs RUN_SEED0 RUN_SEED1 ... \
        [--pooling utterance] [--splits 50]

Each job is a finished main job trained with ``keep_every`` (``scripts/train_default_model.py --variant DIR
keep_every=100 seed=S``). Every candidate checkpoint (each phase's kept steps and its best.keras) is scored once on
the dev protocol (``eval.dev.condition_evaluations``). Then the dev speakers are split at random in two halves,
``--splits`` times: a rule chooses its checkpoint by the mean out-of-domain EER on one half (the clean EER breaks a
tie) and is scored on the other half, both ways. Choosing among many checkpoints on 32 speakers rewards noise;
scoring on the half that did not choose measures what the choice is worth on speakers it has not seen.

Rules: ``shipped`` (of the best softmax and best triplet checkpoints, chosen by the training speakers' held-out
audio, the one the dev half prefers: scripts/train_default_model.py today), ``any step`` (every kept step of both
phases and the two best ones), ``softmax steps``, ``triplet steps``, and three without a dev choice: ``best
triplet`` (the original job's), and the weights averaged over the last --average kept softmax steps, or over all
kept triplet steps (``model.rescnn.averaged_model``). Prints per job and the mean over jobs: the held-out mean OOD
EER of each rule (mean over splits and directions), and the checkpoint each rule picks on all the dev speakers.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from deep_speaker.encoders import get_encoder  # noqa: E402
from deep_speaker.encoders.constants import POOLINGS  # noqa: E402
from deep_speaker.eval.dev import CLEAN, condition_evaluations  # noqa: E402
from deep_speaker.metrics.verification import equal_error_rate  # noqa: E402
from deep_speaker.model.checkpoints import best_checkpoint, kept_checkpoints  # noqa: E402
from deep_speaker.model.rescnn import averaged_model, load_model, to_embedding_model  # noqa: E402

PHASES = ("softmax", "triplet")


def candidates(job: Path, average: int) -> dict[str, keras.Model]:
    """A job's embedding networks by name: ``softmax@STEP``, ``triplet@STEP``, ``best softmax``, ``best triplet``,
    and the two weight averages."""
    root = job / "checkpoints"
    paths = {f"best {phase}": best_checkpoint(root, phase) for phase in PHASES}
    kept = {phase: kept_checkpoints(root, phase) for phase in PHASES}
    if None in paths.values() or not all(kept.values()):
        raise SystemExit(f"{job}: a phase has no best or kept checkpoint (train the job with keep_every=N)")
    paths.update({f"{phase}@{step}": path for phase in PHASES for step, path in kept[phase]})
    found = {name: to_embedding_model(load_model(path)) for name, path in paths.items()}
    found[f"mean of last {average} softmax"] = averaged_model(
        [found[f"softmax@{step}"] for step, _ in kept["softmax"][-average:]])
    found["mean of triplet steps"] = averaged_model([found[f"triplet@{step}"] for step, _ in kept["triplet"]])
    return found


class Scores:
    """One checkpoint's per-condition scores of the dev trials, with the speakers of each trial's two sides."""

    def __init__(self, model: keras.Model, dev: Path, pooling: str) -> None:
        encoder = get_encoder(model=model, pooling=pooling)
        results = condition_evaluations(encoder, dev)
        self.ood = [name for name in results if name != CLEAN]
        self.scores = {name: r.scores for name, r in results.items()}
        first = next(iter(results.values()))
        self.labels = first.labels
        self.first, self.second = (np.asarray(side) for side in first.trial_speakers())

    def within(self, speakers: set[str]) -> np.ndarray:
        """The trials whose two sides are both speakers of ``speakers``."""
        return np.isin(self.first, list(speakers)) & np.isin(self.second, list(speakers))

    def key(self, mask: np.ndarray) -> tuple[float, float]:
        """(mean OOD EER, clean EER) over the masked trials: what a rule minimises."""
        ood = float(np.mean([equal_error_rate(self.scores[n][mask], self.labels[mask]) for n in self.ood]))
        return ood, equal_error_rate(self.scores[CLEAN][mask], self.labels[mask])


def rules(names: list[str]) -> dict[str, list[str]]:
    """Each rule's candidate checkpoints (a rule of one candidate makes no dev choice)."""
    steps = {phase: [n for n in names if n.startswith(f"{phase}@")] for phase in PHASES}
    averages = [n for n in names if n.startswith("mean of")]
    return {"shipped": ["best softmax", "best triplet"],
            "any step": steps["softmax"] + steps["triplet"] + ["best softmax", "best triplet"],
            "softmax steps": steps["softmax"] + ["best softmax"], "triplet steps": steps["triplet"] + ["best triplet"],
            "best triplet": ["best triplet"], **{name: [name] for name in averages}}


def judge(scored: dict[str, Scores], splits: int, seed: int) -> dict[str, float]:
    """Each rule's held-out mean OOD EER: chosen on one half of the speakers, scored on the other, both ways, mean
    over ``splits`` random halvings."""
    any_scores = next(iter(scored.values()))
    speakers = sorted(set(any_scores.first) | set(any_scores.second))
    rng = np.random.default_rng(seed)
    held_out: dict[str, list[float]] = {rule: [] for rule in rules(list(scored))}
    for _ in range(splits):
        order = rng.permutation(speakers)
        halves = [set(order[: len(order) // 2]), set(order[len(order) // 2:])]
        for choose, score in (halves, halves[::-1]):
            choose_keys = {name: s.key(s.within(choose)) for name, s in scored.items()}
            for rule, names in rules(list(scored)).items():
                chosen = min(names, key=lambda n: choose_keys[n])
                held_out[rule].append(scored[chosen].key(scored[chosen].within(score))[0])
    return {rule: float(np.mean(values)) for rule, values in held_out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", type=Path, required=True, help="the dev set (eval.dev.make_dev_set)")
    parser.add_argument("--jobs", type=Path, nargs="+", required=True, help="finished main jobs with kept steps")
    parser.add_argument("--pooling", choices=POOLINGS, default="utterance")
    parser.add_argument("--splits", type=int, default=50, help="random halvings of the dev speakers")
    parser.add_argument("--seed", type=int, default=0, help="seed of the halvings")
    parser.add_argument("--average", type=int, default=5, help="kept softmax steps whose weights are averaged")
    args = parser.parse_args()
    table: dict[str, dict[str, float]] = {}
    for job in args.jobs:
        started = time.perf_counter()
        scored = {name: Scores(model, args.dev, args.pooling) for name, model in candidates(job, args.average).items()}
        everyone = np.ones_like(next(iter(scored.values())).labels, dtype=bool)
        keys = {name: s.key(everyone) for name, s in scored.items()}
        print(f"\n{job}: {len(scored)} checkpoints scored in {time.perf_counter() - started:.0f} s "
              f"(mean OOD / clean EER %, all {len(set(next(iter(scored.values())).first))} dev speakers)")
        for name, (ood, clean) in keys.items():
            print(f"  {name:24s} {100 * ood:5.2f} / {100 * clean:5.2f}")
        table[str(job)] = judge(scored, args.splits, args.seed)
        for rule, names in rules(list(scored)).items():
            chosen = min(names, key=lambda n: keys[n])
            print(f"  rule {rule!r:26s} picks {chosen:24s} on all speakers; held out: "
                  f"{100 * table[str(job)][rule]:5.2f} % mean OOD EER")
    print(f"\nheld-out mean OOD EER % (chosen on one half of the dev speakers, scored on the other; "
          f"{args.splits} halvings x 2); columns: the jobs in order, then their mean")
    for rule in next(iter(table.values())):
        values = [100 * row[rule] for row in table.values()]
        print(f"  {rule:24s} " + " ".join(f"{v:6.2f}" for v in values) + f"   mean {np.mean(values):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
