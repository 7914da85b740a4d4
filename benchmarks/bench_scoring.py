"""Scoring 10^6 verification trials: exact vectorised EER/minDCF/best-F vs the original's threshold-grid loop.

Run: python benchmarks/bench_scoring.py [--trials 1000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from deep_speaker.metrics import best_f_measure, equal_error_rate, min_dcf, verification_report


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


if __name__ == "__main__":
    main()
