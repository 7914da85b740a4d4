"""PNG pictures: of verification results (DET curve, similarity matrix, 2-D embedding projection) and of a
generated-speech comparison report (per-speaker similarity against its real ceiling, FD against 1/N with the FD∞ fit)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
import numpy as np  # noqa: E402
from scipy.stats import norm  # noqa: E402

from ..atomic import write_atomic  # noqa: E402
from ..metrics import normalize_rows  # noqa: E402

FONT_SIZE = 11
DPI = 130
# DET axes run from 0.1 % to 50 %, the range NIST plots use (to 95 % for a poor system, whose EER would sit
# near the corner); points outside run off the axes.
DET_LOW = 0.001
DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95)


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG (creating the folder) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())  # a killed run never leaves half a PNG under the final name
    return path


def _grouped(speakers: Sequence[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Order that groups utterances by speaker (stable), the speaker names and each group's start index."""
    labels = np.asarray([str(s) for s in speakers])
    order = np.argsort(labels, kind="stable")
    names, starts = np.unique(labels[order], return_index=True)
    return order, [str(n) for n in names], starts


def plot_det(far: np.ndarray, frr: np.ndarray, eer: float, *, path: str | os.PathLike,
             title: str = "DET curve", label: str | None = None) -> Path:
    """DET curve (false-reject against false-accept rate, probit axes) with the EER point marked."""
    lo, hi = DET_LOW, (0.5 if eer < 0.3 else 0.95)
    # Rates of 0 or 1 have infinite probits: clip them just past the axes so the curve leaves the plot cleanly.
    x = norm.ppf(np.clip(np.asarray(far, dtype=np.float64), 1e-6, 1 - 1e-6))
    y = norm.ppf(np.clip(np.asarray(frr, dtype=np.float64), 1e-6, 1 - 1e-6))
    with plt.rc_context({"font.size": FONT_SIZE}):
        fig, ax = plt.subplots(figsize=(5.5, 5.5))
        ax.plot(x, y, lw=2, label=label or "system")
        ax.plot([norm.ppf(lo), norm.ppf(hi)], [norm.ppf(lo), norm.ppf(hi)], ls=":", color="grey", lw=1,
                label="FAR = FRR")
        e = norm.ppf(np.clip(eer, lo, hi))
        ax.plot([e], [e], "o", color="crimson", ms=8, label=f"EER = {100 * eer:.2f} %")
        shown = [t for t in DET_TICKS if t <= hi]
        ticks = norm.ppf(shown)
        names = [f"{100 * t:g}" for t in shown]
        ax.set_xticks(ticks, names)
        ax.set_yticks(ticks, names)
        ax.set_xlim(norm.ppf(lo), norm.ppf(hi))
        ax.set_ylim(norm.ppf(lo), norm.ppf(hi))
        ax.set_xlabel("False accept rate (%)")
        ax.set_ylabel("False reject rate (%)")
        ax.set_title(title)
        ax.grid(True, alpha=0.4)
        ax.legend(loc="lower left")
        return _save(fig, path)


def plot_similarity_matrix(embeddings: np.ndarray, speakers: Sequence[str], path: str | os.PathLike,
                           *, title: str = "Cosine similarity, utterances grouped by speaker") -> Path:
    """Cosine-similarity matrix of all utterances, grouped by speaker, with speaker boundaries and a colour bar."""
    order, names, starts = _grouped(speakers)
    x = normalize_rows(np.asarray(embeddings)[order])
    sim = x @ x.T
    # Self-similarity (always 1) would stretch the colour scale and hide the speaker blocks: shown grey.
    np.fill_diagonal(sim, np.nan)
    n = len(order)
    ends = np.append(starts[1:], n)
    with plt.rc_context({"font.size": FONT_SIZE}):
        side = float(np.clip(4 + 0.03 * n, 6, 14))
        fig, ax = plt.subplots(figsize=(side + 1.2, side))
        # The colour range is the data's: an untrained model's similarities all lie within 0.001 of 1.
        low, high = (float(np.nanmin(sim)), float(np.nanmax(sim))) if n > 1 else (0.0, 1.0)
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
        image = ax.imshow(sim, cmap=cmap, vmin=low, vmax=max(high, low + 1e-6), interpolation="nearest")
        for b in starts[1:]:
            ax.axhline(b - 0.5, color="white", lw=0.8)
            ax.axvline(b - 0.5, color="white", lw=0.8)
        centres = (starts + ends - 1) / 2
        # Label every speaker while they fit; beyond ~40 the names would overlap, so thin them out.
        step = max(1, len(names) // 40)
        ax.set_xticks(centres[::step], names[::step], rotation=90, fontsize=FONT_SIZE - 2)
        ax.set_yticks(centres[::step], names[::step], fontsize=FONT_SIZE - 2)
        ax.set_xlabel("Speaker (utterances in speaker order)")
        ax.set_ylabel("Speaker (utterances in speaker order)")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
        return _save(fig, path)


def project_2d(embeddings: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D coordinates of the embeddings by t-SNE (perplexity adapted to small sets) or PCA."""
    x = np.asarray(embeddings, dtype=np.float64)
    if method == "pca" or len(x) < 5:  # t-SNE needs more points than its perplexity
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method != "tsne":
        raise ValueError(f"unknown projection {method!r}; choose tsne or pca")
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", metric="cosine",
                random_state=seed).fit_transform(x)


def plot_projection(embeddings: np.ndarray, speakers: Sequence[str], path: str | os.PathLike,
                    *, method: str = "tsne", seed: int = 0, title: str | None = None) -> Path:
    """Scatter of a 2-D projection (t-SNE or PCA) of the embeddings, coloured by speaker, with a legend."""
    points = project_2d(embeddings, method, seed)
    labels = np.asarray([str(s) for s in speakers])
    names = sorted(set(labels))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    markers = "os^Dv<>Pp*"
    with plt.rc_context({"font.size": FONT_SIZE}):
        fig, ax = plt.subplots(figsize=(7.5, 6))
        for i, name in enumerate(names):
            sel = labels == name
            # tab20 has 20 colours: past that, the marker shape tells speakers apart.
            ax.scatter(points[sel, 0], points[sel, 1], s=36, color=cmap(i % cmap.N),
                       marker=markers[(i // cmap.N) % len(markers)], label=name, alpha=0.85,
                       edgecolors="black", linewidths=0.3)
        axis_name = "t-SNE" if method == "tsne" and len(points) >= 5 else "PC"
        ax.set_xlabel(f"{axis_name} 1")
        ax.set_ylabel(f"{axis_name} 2")
        ax.set_title(title or f"Speaker embeddings ({axis_name.replace('PC', 'PCA')}, {len(points)} utterances)")
        if len(names) <= 40:
            ax.legend(title="speaker", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=FONT_SIZE - 2,
                      ncol=1 if len(names) <= 20 else 2, frameon=False)
        return _save(fig, path)


def plot_speaker_similarity(report: dict, path: str | os.PathLike) -> Path | None:
    """Per-speaker SECS of generated speech (points) against the real-halves ceiling (bars); None without speakers."""
    gen = report.get("speaker_similarity") or {}
    ceiling = (report.get("baseline") or {}).get("speaker_similarity") or {}
    speakers = sorted(set(gen.get("per_speaker", {})) | set(ceiling.get("per_speaker", {})))
    if not speakers:
        return None
    pos = np.arange(len(speakers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(speakers) + 2), 4.2))
    ceil = [ceiling.get("per_speaker", {}).get(s, np.nan) for s in speakers]
    ax.bar(pos, ceil, width=0.6, color="#c7d7ea", edgecolor="#4c72b0", label="real vs real (other half): ceiling")
    vals = [gen.get("per_speaker", {}).get(s, np.nan) for s in speakers]
    ax.plot(pos, vals, "o", color="#dd8452", markersize=7, label="generated vs real centroid")
    if gen.get("secs") is not None:
        ax.axhline(gen["secs"], color="#dd8452", linestyle="--", linewidth=1,
                   label=f"generated mean {gen['secs']:.4f}")
    if ceiling.get("secs") is not None:
        ax.axhline(ceiling["secs"], color="#4c72b0", linestyle=":", linewidth=1,
                   label=f"ceiling mean {ceiling['secs']:.4f}")
    ax.set_xticks(pos, speakers, rotation=60 if len(speakers) > 12 else 0, fontsize=8)
    ax.set_xlabel("speaker")
    ax.set_ylabel("cosine to the speaker's real centroid (SECS)")
    ax.set_title("Speaker similarity per speaker: generated vs real ceiling")
    finite = [v for v in vals + ceil if np.isfinite(v)]
    # Zoom on the values: similarities of a good system sit near 1 and differ in the 2nd-3rd decimal.
    span = max(max(finite) - min(finite), 1e-3)
    ax.set_ylim(min(finite) - 0.6 * span, max(finite) + 0.4 * span)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_fd_infinity(report: dict, path: str | os.PathLike) -> Path | None:
    """FD at each subset size N against 1/N, with the least-squares line extrapolated to FD∞ at 1/N = 0."""
    curves = [("generated vs real", report.get("fd_inf"), "#dd8452"),
              ("real half vs real half (baseline)", (report.get("baseline") or {}).get("fd_inf"), "#4c72b0")]
    curves = [(name, fit, colour) for name, fit, colour in curves if fit]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, fit, colour in curves:
        inv_n = 1.0 / np.asarray(fit["ns"], dtype=float)
        ax.plot(inv_n, fit["fds"], "o", color=colour, label=f"{name}: FD at N")
        line = np.linspace(0.0, inv_n.max() * 1.05, 50)
        ax.plot(line, fit["fd_inf"] + fit["slope"] * line, "-", color=colour, linewidth=1,
                label=f"fit FD∞ + c/N: FD∞ = {fit['fd_inf']:.4g}")
        ax.plot([0.0], [fit["fd_inf"]], "*", color=colour, markersize=12)
    ax.set_xlim(left=-0.02 * max(1.0 / min(fit["ns"]) for _, fit, _ in curves))
    ax.set_xlabel("1 / N (N = generated samples in the subset)")
    ax.set_ylabel("Fréchet distance")
    ax.set_title("FD against 1/N and its extrapolation to N = ∞ (FD∞)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_report(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write every picture the report supports into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    written = [plot_speaker_similarity(report, out / "speaker_similarity.png"),
               plot_fd_infinity(report, out / "fd_infinity.png")]
    return [p for p in written if p is not None]


def plot_histograms(values: dict[str, list[float]], path: Path, *, xlabel: str, title: str,
                    lines: Sequence[tuple[str, str, float]] = ()) -> Path | None:
    """Overlaid histograms of each named list of values, with vertical lines ``(name, label, x)`` in the colour
    of their name's histogram; None with no values."""
    values = {k: v for k, v in values.items() if v}
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    every = [x for v in values.values() for x in v]
    low, high = min(every + [x for *_, x in lines]), max(every + [x for *_, x in lines])
    bins = [low + (high - low) * k / 30 for k in range(31)] if high > low else 10
    colour = {name: f"C{k % 10}" for k, name in enumerate(values)}
    for name, v in values.items():
        ax.hist(v, bins=bins, alpha=0.55, color=colour[name], label=f"{name} (n = {len(v)})")
    for k, (name, label, x) in enumerate(lines):
        ax.axvline(x, color=colour.get(name, "grey"), linestyle=("--", ":")[k % 2], linewidth=1.4, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return _save(fig, path)
