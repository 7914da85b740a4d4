"""Distances between sets of embeddings (docs metrics.md): FD, KD (KID), FD∞, conditional cFD/cKD, SECS.

All statistics are float64. Random subsets and splits take a ``seed`` and the results report it.
Too few samples give a message (a :class:`SampleSizeWarning` for functions that return a tuple, a
``messages`` list in those that return a dict) and whatever can still be computed; never NaN or complex.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import DeepSpeakerError
from .verification import normalize_rows


class SampleSizeWarning(UserWarning):
    """Fewer samples than a statistic needs to be well determined (e.g. n ≤ d for a covariance)."""


def _as_set(x: Any, name: str) -> np.ndarray:
    """A [n, d] float64 array of finite values."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise DeepSpeakerError(f"{name} must be a 2-D array [n, d], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DeepSpeakerError(f"{name} holds NaN or infinite values")
    return arr


def _same_dim(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[1] != y.shape[1]:
        raise DeepSpeakerError(f"the two sets differ in dimension: {x.shape[1]} and {y.shape[1]}")


def _covariance_message(n: int, d: int, what: str) -> str | None:
    """The message for a rank-deficient sample covariance (rank ≤ n - 1 < d), or None."""
    if n <= d:
        return (f"{what} has {n} samples for {d} dimensions: its covariance is singular (rank ≤ {n - 1}), "
                f"FD is still defined but biased upward; use more than {d} samples")
    return None


def gaussian_stats(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)``: the sample mean and unbiased covariance ``np.cov(x, rowvar=False)`` (ddof 1), float64."""
    arr = _as_set(x, "x")
    if arr.shape[0] < 2:
        raise DeepSpeakerError(f"a covariance needs at least 2 samples, got {arr.shape[0]}")
    return arr.mean(axis=0), np.atleast_2d(np.cov(arr, rowvar=False))


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root ``V diag(sqrt(max(w, 0))) Vᵀ`` from ``eigh``; negative rounding eigenvalues clipped."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


# Four positional data arrays on purpose (issue #29 exception): the published formula's (mu1, sigma1, mu2, sigma2).
def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """``|mu1 - mu2|² + Tr(S1 + S2) - 2 Σ sqrt(λ_i)``, λ the eigenvalues of the symmetric ``S1^½ S2 S1^½``.

    Real and stable for singular covariances (eigenvalues clipped at 0). The value is reported as computed,
    not clipped: for (nearly) identical statistics it can be slightly negative, down to about
    ``-d sqrt(eps ‖S‖)`` (the square roots of near-zero eigenvalues carry that rounding; ~1e-8 on real features).
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64).ravel(), np.asarray(mu2, dtype=np.float64).ravel()
    s1, s2 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64)), np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.size
    if mu2.size != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise DeepSpeakerError(f"statistics differ in shape: mu {mu1.size}/{mu2.size}, sigma {s1.shape}/{s2.shape}")
    return _frechet_with_root(mu1, s1, _sqrt_psd(s1), mu2, s2)


def _frechet_with_root(mu1: np.ndarray, s1: np.ndarray, root1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """:func:`frechet_distance` given ``root1 = S1^½``, so that a fixed reference pays its ``eigh`` once."""
    middle = root1 @ s2 @ root1
    # Symmetrise: rounding makes the product slightly asymmetric and eigvalsh reads one triangle only.
    lam = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.sqrt(np.clip(lam, 0.0, None)).sum())


def _fd_sets(x: np.ndarray, y: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))


def frechet_distance_splits(x: Any, y: Any, *, num_splits: int = 5, seed: int = 0) -> dict[str, Any]:
    """FD over ``num_splits`` disjoint random splits of each set (mean ± population std) plus the full-set FD."""
    x, y = _as_set(x, "x"), _as_set(y, "y")
    _same_dim(x, y)
    rng = np.random.default_rng(seed)
    xs = np.array_split(x[rng.permutation(x.shape[0])], num_splits)
    ys = np.array_split(y[rng.permutation(y.shape[0])], num_splits)
    smallest = min(min(len(s) for s in xs), min(len(s) for s in ys))
    if smallest < 2:
        raise DeepSpeakerError(f"{num_splits} splits of {x.shape[0]} and {y.shape[0]} samples leave a split "
                               f"with fewer than 2 samples; use fewer splits")
    messages = [m for m in (_covariance_message(smallest, x.shape[1], "a split"),
                            _covariance_message(min(x.shape[0], y.shape[0]), x.shape[1], "the smaller set")) if m]
    values = np.array([_fd_sets(a, b) for a, b in zip(xs, ys)])
    return {
        "fd": float(values.mean()),
        "fd_std": float(values.std()),
        "fd_full": _fd_sets(x, y),
        "fd_splits": values.tolist(),
        "num_splits": num_splits,
        "split_size": smallest,
        "seed": seed,
        "messages": messages,
    }


def _cubic_kernel_sum(gram: np.ndarray, d: int) -> float:
    """``Σ (g/d + 1)³`` over a Gram matrix, in place: the cube as the BLAS dot ``<K∘K, K>``, not a slow ``**3``."""
    gram *= 1.0 / d
    gram += 1.0
    return float(np.vdot(gram * gram, gram))


def _diag_kernel(a: np.ndarray) -> np.ndarray:
    """``k(a_i, a_i) = (|a_i|²/d + 1)³`` per row."""
    return (np.einsum("ij,ij->i", a, a) / a.shape[1] + 1.0) ** 3


def _mmd2_from_sums(sxx: Any, syy: Any, sxy: Any, m: int) -> Any:
    """``(S_xx + S_yy) / (m(m-1)) - 2 S_xy / m²`` from off-diagonal within-set sums and the cross sum."""
    return (sxx + syy) / (m * (m - 1)) - 2.0 * sxy / (m * m)


def mmd2_unbiased(x: Any, y: Any) -> float:
    """Unbiased MMD²: ``[Σ_{i≠j} k(x_i,x_j) + Σ_{i≠j} k(y_i,y_j)] / (m(m-1)) - 2 Σ_{i,j} k(x_i,y_j) / m²``, k cubic."""
    x, y = _as_set(x, "x"), _as_set(y, "y")
    _same_dim(x, y)
    m, d = x.shape
    if y.shape[0] != m or m < 2:
        raise DeepSpeakerError(f"unbiased MMD² needs two sets of the same size m ≥ 2, got {m} and {y.shape[0]}")
    # x @ x.T runs as BLAS syrk (numpy detects the transpose): half the multiply-adds of a general product.
    sxx = _cubic_kernel_sum(x @ x.T, d) - _diag_kernel(x).sum()
    syy = _cubic_kernel_sum(y @ y.T, d) - _diag_kernel(y).sum()
    return float(_mmd2_from_sums(sxx, syy, _cubic_kernel_sum(x @ y.T, d), m))


def _mmd2_all_subsets(x: np.ndarray, y: np.ndarray, subsets: list, m: int, block: int = 1024) -> np.ndarray:
    """Unbiased MMD² of every subset from one pass over the kernel matrix of all ``z = [x; y]``.

    A subset's kernel sum is ``uᵀ K u`` for its 0/1 indicator ``u``, so all subsets need only ``K U`` with
    ``U`` the [N, 2S] indicators: N²(d + 2S) multiply-adds instead of 2 S m² d for one product per
    subset. K is built in row blocks, so memory stays at ``block x N``.
    """
    n_x, d = x.shape
    num = len(subsets)
    z = np.concatenate([x, y])
    indicators = np.zeros((z.shape[0], 2 * num))
    for s, (ix, iy) in enumerate(subsets):
        indicators[ix, s] = 1.0
        indicators[n_x + iy, num + s] = 1.0
    ku = np.empty_like(indicators)
    for start in range(0, z.shape[0], block):
        k = z[start:start + block] @ z.T
        k *= 1.0 / d
        k += 1.0
        cube = k * k
        cube *= k
        ku[start:start + block] = cube @ indicators
    ux, uy = indicators[:n_x, :num], indicators[n_x:, num:]
    sxx = np.einsum("is,is->s", ux, ku[:n_x, :num]) - _diag_kernel(x) @ ux
    syy = np.einsum("is,is->s", uy, ku[n_x:, num:]) - _diag_kernel(y) @ uy
    sxy = np.einsum("is,is->s", ux, ku[:n_x, num:])
    return _mmd2_from_sums(sxx, syy, sxy, m)


def kernel_subsets(n_x: int, n_y: int, *, num_subsets: int, subset_size: int, seed: int) -> tuple[int, list]:
    """The subset size ``m = min(subset_size, n_x, n_y)`` and the seeded index pairs drawn without replacement."""
    m = min(subset_size, n_x, n_y)
    rng = np.random.default_rng(seed)
    return m, [(rng.choice(n_x, m, replace=False), rng.choice(n_y, m, replace=False)) for _ in range(num_subsets)]


def kernel_distance(x: Any, y: Any, *, num_subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KD (KID): mean and population std of unbiased MMD² (cubic kernel) over ``num_subsets`` seeded subsets.

    Fewer samples than ``subset_size`` shrink the subsets to ``m = min(n_x, n_y)`` with a SampleSizeWarning.
    When the sets are small next to the subsets drawn from them, all subsets are scored from one kernel
    matrix of the union; otherwise one product per subset. Both give the same numbers to rounding.
    """
    x, y = _as_set(x, "x"), _as_set(y, "y")
    _same_dim(x, y)
    m, subsets = kernel_subsets(x.shape[0], y.shape[0], num_subsets=num_subsets, subset_size=subset_size, seed=seed)
    if m < 2:
        raise DeepSpeakerError(f"KD needs at least 2 samples in each set, got {x.shape[0]} and {y.shape[0]}")
    if m < subset_size:
        warnings.warn(f"KD subsets hold {m} samples instead of {subset_size} (sets of {x.shape[0]} and "
                      f"{y.shape[0]}): the estimate is noisier", SampleSizeWarning, stacklevel=2)
    n, d = x.shape[0] + y.shape[0], x.shape[1]
    if n * n * (d + 2 * num_subsets) < 2 * num_subsets * m * m * d:
        values = _mmd2_all_subsets(x, y, subsets, m)
    else:
        values = np.array([mmd2_unbiased(x[ix], y[iy]) for ix, iy in subsets])
    return float(values.mean()), float(values.std())


def fd_infinity(x: Any, y: Any, *, num_points: int = 15, n_min: int | None = None, n_max: int | None = None,
                seed: int = 0) -> dict[str, Any]:
    """FD∞: FD of seeded random size-N subsets of ``y`` against all of ``x``; least squares ``FD(N) = FD∞ + c/N``.

    Defaults: N from ``n_max // 5`` to ``n_max = len(y)`` (Chong & Forsyth use 5k..50k), ``num_points`` sizes
    spaced evenly in N.
    """
    x, y = _as_set(x, "x"), _as_set(y, "y")
    _same_dim(x, y)
    n_max = y.shape[0] if n_max is None else min(n_max, y.shape[0])
    n_min = max(2, n_max // 5) if n_min is None else max(2, n_min)
    ns = np.unique(np.linspace(n_min, n_max, num_points).round().astype(int))
    if ns.size < 2:
        raise DeepSpeakerError(f"FD∞ needs at least two subset sizes; N from {n_min} to {n_max} gives {ns.size}")
    messages = [m for m in (_covariance_message(int(ns[0]), x.shape[1], "the smallest subset"),
                            _covariance_message(x.shape[0], x.shape[1], "the reference set")) if m]
    mu_x, sigma_x = gaussian_stats(x)
    root_x = _sqrt_psd(sigma_x)
    rng = np.random.default_rng(seed)
    fds = np.array([_frechet_with_root(mu_x, sigma_x, root_x,
                                       *gaussian_stats(y[rng.choice(y.shape[0], n, replace=False)])) for n in ns])
    slope, intercept = np.polyfit(1.0 / ns, fds, 1)
    return {"fd_inf": float(intercept), "slope": float(slope), "ns": ns.tolist(), "fds": fds.tolist(),
            "seed": seed, "messages": messages}


def split_per_label(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index halves with each label's items split as evenly as possible (odd one to the first)."""
    first, second = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        half = (idx.size + 1) // 2
        first.append(idx[:half])
        second.append(idx[half:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def _fd_kd(a: np.ndarray, b: np.ndarray, num_subsets: int, subset_size: int, seed: int,
           messages: list[str], what: str) -> dict[str, Any]:
    """Full-set FD and KD (mean, std) of two sets, with messages instead of warnings or errors."""
    out: dict[str, Any] = {"fd": None, "kd": None, "kd_std": None}
    if min(a.shape[0], b.shape[0]) < 2:
        messages.append(f"{what}: fewer than 2 samples on a side ({a.shape[0]}, {b.shape[0]}); not computed")
        return out
    note = _covariance_message(min(a.shape[0], b.shape[0]), a.shape[1], f"{what}: the smaller set")
    if note:
        messages.append(note)
    out["fd"] = _fd_sets(a, b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SampleSizeWarning)
        out["kd"], out["kd_std"] = kernel_distance(a, b, num_subsets=num_subsets, subset_size=subset_size, seed=seed)
    messages.extend(f"{what}: {w.message}" for w in caught)
    return out


def conditional_distances(real: Any, real_labels: Any, *, gen: Any, gen_labels: Any, num_subsets: int = 100,
                          subset_size: int = 1000, seed: int = 0) -> dict[str, Any]:
    """cFD/cKD (generated vs real of the *same* conditioning) and FD/KD (vs real of *other* conditioning).

    The conditioning of an utterance is its label (speaker, or text when a pairing is given). Real
    utterances whose label occurs among ``gen_labels`` form the same-conditioning set; it is split per label
    (seeded) into a reference half and a held-out half. The rest of ``real`` is the other-conditioning set.

    - ``generated``: ``cfd``/``ckd`` = generated vs same-conditioning reference half;
      ``fd``/``kd`` = generated vs other-conditioning set.
    - ``real_baseline``: the same with the held-out real half in place of the generated set (the floor).

    FD is the full-set value; KD is mean ± std over seeded subsets. Entries that cannot be computed
    (e.g. no other-conditioning utterances) are None, with a line in ``messages``.
    """
    real, gen = _as_set(real, "real"), _as_set(gen, "gen")
    _same_dim(real, gen)
    real_labels, gen_labels = np.asarray(real_labels), np.asarray(gen_labels)
    if real_labels.shape != (real.shape[0],) or gen_labels.shape != (gen.shape[0],):
        raise DeepSpeakerError("need one label per embedding in both sets")
    messages: list[str] = []
    missing = np.setdiff1d(gen_labels, real_labels)
    if missing.size:
        messages.append(f"{missing.size} generated label(s) have no real utterance: {missing[:5].tolist()}")
    same = np.isin(real_labels, gen_labels)
    same_idx, other_idx = np.flatnonzero(same), np.flatnonzero(~same)
    if other_idx.size == 0:
        messages.append("every real utterance shares a label with the generated set: no other-conditioning "
                        "set, unconditional FD/KD not computed (add real utterances of other labels)")
    ref_half, held_half = split_per_label(real_labels[same_idx], np.random.default_rng(seed))
    ref, held, other = real[same_idx[ref_half]], real[same_idx[held_half]], real[other_idx]

    def side(candidate: np.ndarray, name: str) -> dict[str, Any]:
        cond = _fd_kd(candidate, ref, num_subsets, subset_size, seed, messages, f"{name} vs same-conditioning real")
        uncond = _fd_kd(candidate, other, num_subsets, subset_size, seed, messages, f"{name} vs other-conditioning real")
        return {"cfd": cond["fd"], "ckd": cond["kd"], "ckd_std": cond["kd_std"],
                "fd": uncond["fd"], "kd": uncond["kd"], "kd_std": uncond["kd_std"]}

    return {
        "generated": side(gen, "generated"),
        "real_baseline": side(held, "real held-out half"),
        "n_generated": int(gen.shape[0]),
        "n_real_same_reference": int(ref.shape[0]),
        "n_real_same_held_out": int(held.shape[0]),
        "n_real_other": int(other.shape[0]),
        "num_subsets": num_subsets,
        "subset_size": subset_size,
        "seed": seed,
        "messages": messages,
    }


def _centroid_cosines(query: np.ndarray, query_labels: np.ndarray, ref: np.ndarray,
                      ref_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each query row to the mean of the unit-normalised ref rows of its label; rows without ref dropped."""
    q, r = normalize_rows(query), normalize_rows(ref)
    labels, inverse = np.unique(ref_labels, return_inverse=True)
    centroids = np.zeros((labels.size, r.shape[1]))
    np.add.at(centroids, inverse, r)
    centroids = normalize_rows(centroids)
    pos = np.searchsorted(labels, query_labels)
    pos = np.minimum(pos, labels.size - 1)
    known = labels[pos] == query_labels
    return np.einsum("ij,ij->i", q[known], centroids[pos[known]]), known


def _secs_summary(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    per = {str(lab): float(scores[labels == lab].mean()) for lab in np.unique(labels)}
    return {"secs": float(scores.mean()), "secs_std": float(scores.std()), "per_speaker": per,
            "scores": scores, "n": int(scores.size)}


def speaker_similarity(gen: Any, gen_labels: Any, *, real: Any, real_labels: Any) -> dict[str, Any]:
    """SECS: mean cosine of each generated embedding to its speaker's real centroid (mean of unit vectors), per speaker too."""
    gen_labels, real_labels = np.asarray(gen_labels), np.asarray(real_labels)
    scores, known = _centroid_cosines(_as_set(gen, "gen"), gen_labels, _as_set(real, "real"), real_labels)
    if not known.any():
        raise DeepSpeakerError("no generated speaker has real utterances: speaker similarity is undefined")
    result = _secs_summary(scores, gen_labels[known])
    result["messages"] = ([f"{int((~known).sum())} generated utterance(s) of speakers without real utterances "
                           f"skipped: {np.unique(gen_labels[~known])[:5].tolist()}"] if not known.all() else [])
    return result


def speaker_similarity_ceiling(real: Any, real_labels: Any, seed: int = 0) -> dict[str, Any]:
    """The SECS ceiling: SECS of one seeded per-speaker half of the real set against the other half's centroids."""
    real, real_labels = _as_set(real, "real"), np.asarray(real_labels)
    first, second = split_per_label(real_labels, np.random.default_rng(seed))
    scores, known = _centroid_cosines(real[second], real_labels[second], real[first], real_labels[first])
    if not known.any():
        raise DeepSpeakerError("the SECS ceiling needs a speaker with at least 2 real utterances")
    result = _secs_summary(scores, real_labels[second][known])
    result["seed"] = seed
    single = np.setdiff1d(real_labels, real_labels[second])
    result["messages"] = ([f"{single.size} speaker(s) with a single real utterance left out of the ceiling"]
                          if single.size else [])
    return result
