"""The words and pictures of a speaker-verification report (``eval.verification``'s numbers): its table for people
(:func:`format_table`) and files (:func:`table_rows`), the paired comparison's lines, the DET curve, similarity
matrix and projection."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import roc
from . import plots
from .embedded import Embedded

# Pictures of more utterances than this would be unreadable (and t-SNE slow): whole speakers are kept up to it.
MAX_PLOTTED = 1000


def ci_text(report: dict[str, Any], name: str, scale: float = 1.0) -> str:
    """`` [95 % CI low–high]`` of a metric when the report has its bootstrap interval, else empty."""
    interval = report.get("intervals", {}).get(name)
    if interval is None:
        return ""
    digits = 2 if scale == 100 else 4
    return f" [95 % CI {scale * interval['low']:.{digits}f}–{scale * interval['high']:.{digits}f}]"


def calibration_line(report: dict[str, Any]) -> str:
    """Where the calibration came from, and in the same line whether it saw any of these trials' files."""
    cal = report["calibration"]
    seen = cal["files_also_in_these_trials"]
    fitted = json.dumps(cal["fitted_on"], sort_keys=True)
    note = (f"FITTED ON {seen} OF THESE {cal['n_files']} FILES: Cllr/actDCF are optimistic" if seen
            else "fitted on other files than these trials'")
    return f"{cal['file'] or 'given'} ({fitted}); {note}"


def table_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The report as (metric, value) rows: trials, SAP/SAN (or mean scores), EER and minDCF with their intervals,
    minCllr, the calibrated Cllr/actDCF, best F-measure, the score normalisation and calibration used."""
    best = report["best_f"]
    rows = [("trials", f"{report['n_trials']} ({report['n_target']} target, {report['n_nontarget']} non-target)")]
    norm = report.get("score_norm", {"method": "none"})
    if norm["method"] != "none":
        overlap = norm.get("cohort_files_also_in_these_trials", 0)
        top = f" (top {norm['top_k']})" if "top_k" in norm else ""
        warn = f"; THE COHORT SHARES {overlap} FILES WITH THESE TRIALS" if overlap else ""
        rows.append(("score normalisation", f"{norm['method']}{top} against {norm['n_cohort']} cohort embeddings "
                                            f"from {norm['cohort']}{warn}"))
    if "sap" in report:
        rows += [("SAP", f"{report['sap']:.4f}  (mean cosine similarity, same speaker)"),
                 ("SAN", f"{report['san']:.4f}  (mean cosine similarity, different speakers)")]
    else:
        rows += [("mean target score", f"{report['mean_target_score']:.4f}"),
                 ("mean non-target score", f"{report['mean_nontarget_score']:.4f}")]
    rows.append(("EER", f"{100 * report['eer']:.2f} %{ci_text(report, 'eer', 100)}  at threshold "
                        f"{report['eer_threshold']:.4f}"))
    for name, value in report["min_dcf"].items():
        key = "min_dcf_" + name.split("=")[1]
        rows.append((f"minDCF ({name})", f"{value['min_dcf']:.4f}{ci_text(report, key)}  at threshold "
                                         f"{value['threshold']:.4f}"))
    if "min_cllr" in report:
        rows.append(("minCllr", f"{report['min_cllr']:.4f} bits  (after the best monotone calibration of these trials)"))
    if report.get("calibration"):
        rows.append(("Cllr", f"{report['cllr']:.4f} bits  (calibrated: {calibration_line(report)})"))
        for name, value in report["act_dcf"].items():
            rows.append((f"actDCF ({name})", f"{value:.4f}  (at the Bayes threshold of the calibrated LLR)"))
    elif "min_cllr" in report:
        rows.append(("Cllr, actDCF", "not computed: no calibration for this model (deep-speaker calibrate)"))
    rows.append(("best F-measure", f"{best['f_measure']:.4f}  at threshold {best['threshold']:.4f} "
                                   f"(TPR {best['tpr']:.4f}, accuracy {best['accuracy']:.4f})"))
    if "intervals" in report:
        iv = report["intervals"]
        rows.append(("intervals", f"none: {iv['skipped']}" if "skipped" in iv else f"95 % speaker bootstrap: {iv['replicates']} resamples of {iv['n_speakers']} "
                                  f"speakers, seed {iv['seed']}"))
    return rows


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table (:func:`table_rows`)."""
    rows = table_rows(report)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def format_comparison(c: dict) -> str:
    """The paired comparison of two systems (``eval.verification.compare_with``) as lines: each difference with its
    interval."""
    lines = [f"this system minus {c['other']} (paired speaker bootstrap, {c['replicates']} resamples, 95 %):"]
    for name, v in c.items():
        if isinstance(v, dict):
            scale, unit = (100, " %") if name == "eer" else (1, "")
            lines.append(f"  {name:<14s} {scale * v['value']:+.4f}{unit}  [{scale * v['low']:+.4f}, "
                         f"{scale * v['high']:+.4f}]{'  (interval excludes 0)' if v['low'] > 0 or v['high'] < 0 else ''}")
    return "\n".join(lines)


def plotted_subset(labelled: Embedded, limit: int = MAX_PLOTTED) -> np.ndarray:
    """Indices of whole speakers (sorted ids) up to ``limit`` utterances, for pictures."""
    speakers = np.asarray(labelled.speakers)
    keep: list[int] = []
    for name in sorted(set(labelled.speakers)):
        rows = np.flatnonzero(speakers == name)
        if keep and len(keep) + rows.size > limit:
            break
        keep.extend(rows.tolist())
    return np.asarray(keep, dtype=int)


def write_plots(out_dir: str | os.PathLike, scores: np.ndarray, labels: np.ndarray, *, eer: float,
                labelled: Embedded | None = None, projection: str = "tsne") -> list[str]:
    """DET curve of the trials; similarity matrix and 2-D projection when the set is labelled. The PNG paths."""
    out = Path(out_dir)
    _, far, frr = roc(scores, labels)
    written = [plots.plot_det(far, frr, eer, path=out / "det.png",
                              title=f"DET curve ({labels.sum()} target, {(labels == 0).sum()} non-target trials)")]
    if labelled is not None:
        rows = plotted_subset(labelled)
        emb = labelled.embeddings[rows]
        spk = [labelled.speakers[i] for i in rows]
        shown = "" if rows.size == len(labelled.speakers) else f" (first {rows.size} of {len(labelled.speakers)})"
        written.append(plots.plot_similarity_matrix(
            emb, spk, out / "similarity_matrix.png",
            title=f"Cosine similarity of {rows.size} utterances, grouped by speaker{shown}"))
        written.append(plots.plot_projection(emb, spk, out / f"projection_{projection}.png", method=projection))
    return [str(p) for p in written]
