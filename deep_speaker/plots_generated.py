"""Pictures of a comparison report: per-speaker similarity with its real ceiling, and FD against 1/N with the FD∞ fit."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
