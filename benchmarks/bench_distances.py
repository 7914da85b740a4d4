"""FD and KD speed and agreement: ours vs the classic scipy-sqrtm FID formula and a plain float64 numpy KID loop.

Run: python benchmarks/bench_distances.py [--n 10000] [--dim 512] [--kd-sizes 2000 10000]
GFLOP/s use nominal flop counts (stated below), so they compare the methods, not the machine peak.
KD computes all subsets from one kernel matrix of the union when that costs fewer flops (sets up to about
10x the subset size), else one product per subset like the plain loop: the default sizes show both.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg

from deep_speaker.metrics import frechet_distance, gaussian_stats, kernel_distance
from deep_speaker.metrics.distances import kernel_subsets


def sqrtm_fd(mu1, s1, mu2, s2) -> float:
    """The classic FID formula (pytorch-fid / TTUR): scipy.linalg.sqrtm(S1 @ S2), real part of its trace."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def plain_kd(x, y, subsets) -> float:
    """A plain float64 numpy KID loop: per subset three kernel matrices (x·y/d + 1)**3 and their sums."""
    values = []
    for ix, iy in subsets:
        a, b = x[ix], y[iy]
        m, d = a.shape
        kxx = (a @ a.T / d + 1) ** 3
        kyy = (b @ b.T / d + 1) ** 3
        kxy = (a @ b.T / d + 1) ** 3
        values.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    return float(np.mean(values))


def best_of(fn, repeats: int):
    """Smallest wall time of ``repeats`` calls (the machine is shared) and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def correlated(rng: np.random.Generator, n: int, d: int, shift: float) -> np.ndarray:
    """Embedding-like data: a decaying spectrum (so covariances are ill-conditioned like real ones), unit rows."""
    mix = rng.normal(size=(d, d)) * (1.0 / np.arange(1, d + 1)) ** 0.7
    x = rng.normal(size=(n, d)) @ mix.T + shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kd-sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--num-subsets", type=int, default=100)
    parser.add_argument("--subset-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    d = args.dim
    x = correlated(rng, args.n, d, 0.0)
    y = correlated(rng, args.n, d, 0.02)
    rows = []

    t_stats, (stats_x, stats_y) = best_of(lambda: (gaussian_stats(x), gaussian_stats(y)), 1)
    t_ours, fd_ours = best_of(lambda: frechet_distance(*stats_x, *stats_y), args.repeats)
    t_ref, fd_ref = best_of(lambda: sqrtm_fd(*stats_x, *stats_y), args.repeats)
    # Nominal flops: ours eigh with vectors ~9d³, three products 6d³, eigvalsh ~(4/3)d³; sqrtm: S1@S2 2d³,
    # complex Schur ~25d³ (real arithmetic counted), triangular square root d³/3.
    rows.append(("FD (from stats)", f"n={args.n} d={d}", t_ours, 16.3 * d ** 3, t_ref, 27.3 * d ** 3,
                 fd_ours, fd_ref))

    for n_kd in args.kd_sizes:
        xs, ys = x[:n_kd], y[:n_kd]
        m, subsets = kernel_subsets(n_kd, n_kd, num_subsets=args.num_subsets, subset_size=args.subset_size,
                                    seed=args.seed)
        t_ours, (kd_ours, _) = best_of(lambda: kernel_distance(xs, ys, num_subsets=args.num_subsets,
                                                               subset_size=args.subset_size,
                                                               seed=args.seed), 1)
        t_ref, kd_ref = best_of(lambda: plain_kd(xs, ys, subsets), 1)
        n_all, s = 2 * n_kd, args.num_subsets
        all_subsets = n_all * n_all * (d + 2 * s) < 2 * s * m * m * d  # the rule kernel_distance applies
        flops_ours = 2.0 * n_all * n_all * (d + 2 * s) if all_subsets else 4.0 * s * m * m * d
        rows.append((f"KD {s}x{m} ({'one kernel matrix' if all_subsets else 'per subset'})", f"n={n_kd} d={d}",
                     t_ours, flops_ours, t_ref, 4.0 * s * m * m * d, kd_ours, kd_ref))

    print(f"seed {args.seed}; statistics (np.cov of both sets, shared by both FD methods): {t_stats:.3f} s")
    header = f"{'metric':34} {'size':15} {'ours s':>8} {'GFLOP/s':>8} {'ref s':>8} {'GFLOP/s':>8} {'speed-up':>8} " \
             f"{'ours':>14} {'reference':>14} {'rel diff':>9}"
    print(header)
    print("-" * len(header))
    for name, size, t_o, f_o, t_r, f_r, v_o, v_r in rows:
        print(f"{name:34} {size:15} {t_o:8.3f} {f_o / t_o / 1e9:8.1f} {t_r:8.3f} {f_r / t_r / 1e9:8.1f} "
              f"{t_r / t_o:7.1f}x {v_o:14.8g} {v_r:14.8g} {abs(v_o - v_r) / abs(v_r):9.1e}")
    print("targets: FD >= 3x, KD >= 2x, values equal to 1e-6 relative")


if __name__ == "__main__":
    main()
