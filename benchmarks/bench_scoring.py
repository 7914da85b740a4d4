"""Scoring 10^6 verification trials: exact vectorised EER/minDCF/best-F vs the original's threshold-grid loop;
AS-norm of 10^6 trials with a 1,000-speaker cohort beside plain cosine scoring; the speaker bootstrap's cost.

Run: python benchmarks/bench_scoring.py [--trials 1000000] [--cohort 1000] [--replicates 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from deep_speaker.metrics import best_f_measure, equal_error_rate, min_dcf, verification_intervals, verification_report
from deep_speaker.metrics.score_norm import snorm_trials
from deep_speaker.metrics.verification import trial_scores


def original_grid(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The original eval_metrics: for thr in arange(0, 1, 0.001), FAR/FRR/F over all scores with numpy."""
    same = labels.astype(bool)
    best_f, best_tpr, best_acc, eer, eer_diff, best_dcf = 0.0, 0.0, 0.0, 1.0, np.inf, np.inf
    for thr in np.arange(0, 1.0, 0.001):
        pred = scores > thr
        tp = np.sum(pred & same)
        fp = np.sum(pred & ~same)
        fn = np.sum(~pred & same)
        tn = np.sum(~pred & ~same)
        tpr = tp / (tp + fn) if tp + fn else 0.0
        precision = tp / (tp + fp) if tp + fp else 0.0
        f = 2 * precision * tpr / (precision + tpr + 1e-12)
        far, frr = fp / (fp + tn), fn / (fn + tp)
        if f > best_f:
            best_f, best_tpr, best_acc = f, tpr, (tp + tn) / scores.size
        if abs(frr - far) < eer_diff:
            eer_diff, eer = abs(frr - far), (frr + far) / 2
        best_dcf = min(best_dcf, (frr * 0.01 + far * 0.99) / 0.01)
    return {"eer": eer, "min_dcf": best_dcf, "f_measure": best_f, "tpr": best_tpr, "accuracy": best_acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1_000_000)
    parser.add_argument("--target-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--items", type=int, default=20_000, help="embeddings the trials are drawn between")
    parser.add_argument("--cohort", type=int, default=1000, help="cohort speakers for AS-norm")
    parser.add_argument("--top-k", type=int, default=300)
    parser.add_argument("--replicates", type=int, default=100, help="speaker-bootstrap replicates timed")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    labels = (rng.random(args.trials) < args.target_fraction).astype(np.int8)
    # Cosine-like scores in [0, 1] so the original grid covers them.
    scores = np.clip(np.where(labels == 1, rng.normal(0.7, 0.1, args.trials), rng.normal(0.45, 0.1, args.trials)), 0, 1)

    start = time.perf_counter()
    eer, dcf, best = equal_error_rate(scores, labels), min_dcf(scores, labels), best_f_measure(scores, labels)
    t_functions = time.perf_counter() - start
    start = time.perf_counter()
    report = verification_report(scores, labels)
    t_report = time.perf_counter() - start
    start = time.perf_counter()
    grid = original_grid(scores, labels)
    t_grid = time.perf_counter() - start

    print(f"{args.trials} trials ({labels.sum()} target), seed {args.seed}")
    print(f"{'method':44} {'seconds':>8} {'EER':>10} {'minDCF':>8} {'best F':>8}")
    print(f"{'ours: equal_error_rate + min_dcf + best_f':44} {t_functions:8.3f} {eer:10.6f} {dcf:8.4f} "
          f"{best['f_measure']:8.4f}")
    print(f"{'ours: verification_report (one sort, all)':44} {t_report:8.3f} {report['eer']:10.6f} "
          f"{report['min_dcf']['p_target=0.01']['min_dcf']:8.4f} {report['best_f']['f_measure']:8.4f}")
    print(f"{'original: arange(0, 1, 0.001) grid loop':44} {t_grid:8.3f} {grid['eer']:10.6f} {grid['min_dcf']:8.4f} "
          f"{grid['f_measure']:8.4f}")
    print(f"speed-up: {t_grid / t_functions:.0f}x (three functions), {t_grid / t_report:.0f}x (report)")
    score_normalisation(args, rng)


def score_normalisation(args: argparse.Namespace, rng: np.random.Generator) -> None:
    """AS-norm vs plain cosine on the same trials between random 512-d embeddings; the bootstrap on the result."""
    items = rng.standard_normal((args.items, 512)).astype(np.float32)
    cohort = rng.standard_normal((args.cohort, 512)).astype(np.float32)
    first, second = rng.integers(0, args.items, args.trials), rng.integers(0, args.items, args.trials)
    trial_scores(items, first[:100_000], second[:100_000])  # warm-up: the first touch of fresh memory is paid once
    start = time.perf_counter()
    trial_scores(items, first, second)
    t_cosine = time.perf_counter() - start
    start = time.perf_counter()
    normed = snorm_trials(items, first, second, cohort=cohort, method="asnorm", top_k=args.top_k)
    t_asnorm = time.perf_counter() - start
    print(f"\n{args.trials} trials between {args.items} embeddings, cohort {args.cohort}, top {args.top_k}")
    print(f"plain cosine scoring: {t_cosine:.3f} s; AS-norm: {t_asnorm:.3f} s ({t_asnorm / t_cosine:.1f}x the cosine "
          f"time; cohort statistics once per embedding, not per trial)")
    speakers = (np.arange(args.items) // 20).astype(str)  # 20 embeddings per speaker: 1,000 speakers
    labels = (speakers[first] == speakers[second]).astype(np.int8)
    labels[:1000] = 1  # a few targets, so both classes exist
    start = time.perf_counter()
    verification_intervals(normed, labels, first_speakers=speakers[first], second_speakers=speakers[second],
                           replicates=args.replicates)
    t_boot = time.perf_counter() - start
    print(f"speaker bootstrap, {args.replicates} replicates of {args.trials} trials: {t_boot:.2f} s "
          f"({1000 * t_boot / args.replicates:.0f} ms per replicate)")


if __name__ == "__main__":
    main()
