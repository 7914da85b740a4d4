"""The words of a comparison of generated with real speech (``eval.generated``'s numbers): the table of a
:func:`~deep_speaker.eval.generated.compare` or :func:`~deep_speaker.eval.generated.compare_spaces` report, for
people (:func:`format_table`) and for files (:func:`report_table`, written by ``eval.tables``)."""

from __future__ import annotations

from typing import Any

from ..metrics.constants import FAR_TARGET
from .tables import text_table


def _interval_text(interval: dict | None, scale: float = 1.0, digits: str = ".3g") -> str:
    return "" if interval is None else f" [{scale * interval['low']:{digits}}, {scale * interval['high']:{digits}}]"


def _fmt(value: Any, std: Any = None, interval: dict | None = None) -> str:
    """``value ± std [low, high]`` (4 significant digits), "n/a" for a missing value."""
    if value is None:
        return "n/a"
    text = f"{value:.4g}" + ("" if std is None else f" ± {std:.2g}")
    return text + _interval_text(interval)


def _pct(value: Any, interval: dict | None = None) -> str:
    """A share as ``12.3 % [low, high]``."""
    return "n/a" if value is None else f"{100 * value:.1f} %" + _interval_text(interval, 100.0, ".1f")


def _get(report: dict, *keys: str) -> Any:
    """``report[k1][k2]...``, None where a level is missing or None."""
    for key in keys:
        if not isinstance(report, dict) or report.get(key) is None:
            return None
        report = report[key]
    return report


def _space_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """``(key, label, generated cell, baseline cell)`` of one space's report, in table order."""
    s, base, cond = report["settings"], report["baseline"], report.get("conditional") or {}
    fd_split = _get(report, "fd", "splits") or {}
    kd = report.get("kd") or {}
    fit = report.get("fd_inf") or {}
    dsd = report.get("conditional_all") or {}
    g, r = _get(report, "similarity", "generated") or {}, _get(report, "similarity", "real") or {}

    def iv(key: str) -> dict | None:
        return _get(report, "intervals", "values", key)

    return [
        ("fd_splits", f"FD, mean ± std over {s['num_splits']} splits (of {fd_split.get('split_size', '?')})",
         _fmt(fd_split.get("fd"), fd_split.get("fd_std")),
         _fmt(_get(base, "fd", "splits", "fd"), _get(base, "fd", "splits", "fd_std"))),
        ("fd", "FD, full sets", _fmt(_get(report, "fd", "full"), interval=iv("fd")), _fmt(_get(base, "fd", "full"))),
        ("fd_inf", f"FD∞, fit of FD(N) = FD∞ + c/N, N = {min(fit.get('ns', [0]))}..{max(fit.get('ns', [0]))}",
         _fmt(fit.get("fd_inf")), _fmt(_get(base, "fd_inf", "fd_inf"))),
        ("kd", f"KD, {kd.get('num_subsets', s['num_subsets'])} subsets of {kd.get('subset_size', s['subset_size'])}",
         _fmt(kd.get("kd"), kd.get("kd_std"), iv("kd")), _fmt(_get(base, "kd", "kd"), _get(base, "kd", "kd_std"))),
        ("cfd", "cFD, vs a per-speaker half of real of the same speakers", _fmt(_get(cond, "generated", "cfd")),
         _fmt(_get(cond, "real_baseline", "cfd"))),
        ("fd_other", "FD, vs real of other speakers", _fmt(_get(cond, "generated", "fd")),
         _fmt(_get(cond, "real_baseline", "fd"))),
        ("ckd", "cKD, vs a per-speaker half of real of the same speakers",
         _fmt(_get(cond, "generated", "ckd"), _get(cond, "generated", "ckd_std")),
         _fmt(_get(cond, "real_baseline", "ckd"), _get(cond, "real_baseline", "ckd_std"))),
        ("kd_other", "KD, vs real of other speakers",
         _fmt(_get(cond, "generated", "kd"), _get(cond, "generated", "kd_std")),
         _fmt(_get(cond, "real_baseline", "kd"), _get(cond, "real_baseline", "kd_std"))),
        ("cfd_all", "cFD, vs all real of the same speakers (DeepSpeechDistances)", _fmt(dsd.get("cfd")), ""),
        ("ckd_all", "cKD, vs all real of the same speakers (DeepSpeechDistances)",
         _fmt(dsd.get("ckd"), dsd.get("ckd_std")), ""),
        ("secs", "SECS, cosine to the speaker's real centroid",
         _fmt(_get(report, "speaker_similarity", "secs"), _get(report, "speaker_similarity", "secs_std"), iv("secs")),
         _fmt(_get(base, "speaker_similarity", "secs"), _get(base, "speaker_similarity", "secs_std"))),
        ("secs_rescaled", "SECS rescaled: 0 = real different-, 1 = same-speaker mean",
         _fmt(g.get("secs_rescaled"), interval=iv("secs_rescaled")), "1" if g.get("secs_rescaled") is not None else ""),
        ("accept_eer", "accepted as its speaker at the real EER threshold",
         _pct(g.get("accept_eer"), iv("accept_eer")), _pct(r.get("accept_eer"), iv("real_accept_eer"))),
        ("accept_far", f"accepted at the real {100 * s.get('far_target', FAR_TARGET):g} % false-accept threshold",
         _pct(g.get("accept_far"), iv("accept_far")), _pct(r.get("accept_far"), iv("real_accept_far"))),
        ("eer", "EER, verified against the real speakers' centroids", _pct(g.get("eer"), iv("eer")),
         _pct(r.get("eer"), iv("real_eer"))),
        ("identified", "nearest real speaker is its own", _pct(g.get("identified")), ""),
        ("sap", "SAP, same-speaker cosine (within the set)", _fmt(_get(report, "sap_san", "sap")),
         _fmt(_get(base, "sap_san", "sap"))),
        ("san", "SAN, different-speaker cosine", _fmt(_get(report, "sap_san", "san")),
         _fmt(_get(base, "sap_san", "san"))),
        ("ndb", f"NDB/K, {s['ndb_bins']} k-means bins on real",
         _fmt(_get(report, "ndb", "ndb_over_k")), _fmt(_get(base, "ndb", "ndb_over_k"))),
    ] + (_anchored_rows(report) if "anchored" in report else [])


def _anchored_cell(value: dict | None) -> str:
    return "n/a" if value is None else f"{value['score']:.1f} (nearest: {value['nearest_noise']})"


def _anchored_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """The noise-anchored scores' rows, only in a report that asked for them."""
    anchored = report.get("anchored") or {}
    return [("fd_anchored", "FD anchored: 100 = real, 0 = nearest noise set (TTSDS)",
             _anchored_cell(anchored.get("fd")), _anchored_cell(anchored.get("fd_baseline"))),
            ("sim_anchored", "SIM anchored: W2 of cosines to the centroid, 100 = real, 0 = noise",
             _anchored_cell(anchored.get("sim")), "")]


def _shared_rows(report: dict) -> list[tuple[str, str]]:
    """``(label, value)`` of the classifier scores and MR-STFT: numbers of the audio, not of a space."""
    rows = []
    if "classifier" in report:
        c = report["classifier"]
        rows += [("IS (class score)", _fmt(c.get("is"), c.get("is_std"))), ("mIS", _fmt(c.get("mis"))),
                 ("AM score", "inf" if c.get("am_unbounded") else _fmt(c.get("am")))]
    if report.get("mr_stft"):
        m = report["mr_stft"]
        rows += [(f"MR-STFT spectral convergence ({m['pairs']} pairs)",
                  _fmt(m["spectral_convergence"], m["spectral_convergence_std"])),
                 ("MR-STFT log-magnitude distance", _fmt(m["log_magnitude"], m["log_magnitude_std"]))]
    return rows


def _spaces(report: dict) -> list[tuple[str, dict]]:
    """``(encoder, report)`` of each space: one for a :func:`compare` report, several for :func:`compare_spaces`."""
    if "spaces" in report:
        return [(name, report["spaces"][name]) for name in report["encoders"]]
    return [(report["settings"]["encoder"], report)]


def report_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """The table of a :func:`compare` or :func:`compare_spaces` report as ``(header, rows)`` (for ``tables``):
    one generated and one baseline column per space, then the numbers shared by all spaces."""
    spaces = _spaces(report)
    if "spaces" in report:
        header = ["metric"] + [f"{name}: {col}" for name, _ in spaces for col in ("generated vs real", "real baseline")]
    else:
        header = ["metric", "generated vs real", "real half vs half"]
    cells = [{key: (gen, base) for key, _, gen, base in _space_rows(sp)} for _, sp in spaces]
    rows = [[label] + [c for space in cells for c in space.get(key, ("n/a", "n/a"))]
            for key, label, _, _ in _space_rows(spaces[0][1])]
    rows += [[label, value] + [""] * (len(header) - 2) for label, value in _shared_rows(report)]
    return header, rows


def _space_lines(name: str, report: dict, several: bool) -> list[str]:
    """What was compared in one space: the sets, the encoder, the baseline and the verifier's thresholds."""
    s, real, gen = report["settings"], report["real"], report["generated"]
    th = _get(report, "similarity", "thresholds")
    verifier = (f"; verifier thresholds on real trials: EER {th['eer']:.4g}, {100 * th['far_target']:g} % false "
                f"accepts {th['far']:.4g}" if th else "")
    lines = [f"generated: {gen['source']} ({gen['n']} utterances, {gen['speakers']} speakers)",
             f"real:      {real['source']} ({real['n']} utterances, {real['speakers']} speakers)",
             f"encoder {s['encoder']}, model {s['model_identity']}, seed {s['seed']}; baseline = two disjoint "
             f"per-speaker halves of the real set ({report['baseline_halves']['n_a']} + "
             f"{report['baseline_halves']['n_b']}){verifier}"]
    return [f"[{name}] {line}" for line in lines] if several else lines


def _worst_lines(name: str, report: dict, several: bool) -> list[str]:
    if not report.get("worst"):
        return []
    lines = [f"{f'[{name}] ' if several else ''}least similar generated files (cosine to their speaker's real "
             f"centroid; nearest real speaker):"]
    lines += [f"  {w['similarity']:.4f}  {w['path']}  (speaker {w['speaker']}; nearest {w['nearest_speaker']}, "
              f"{w['nearest_similarity']:.4f})" for w in report["worst"]]
    return lines


def format_table(report: dict) -> str:
    """The report as a table for people: generated vs real beside each space's real baseline, then the least
    similar files and the messages. Takes a :func:`compare` or a :func:`compare_spaces` report."""
    spaces = _spaces(report)
    several = "spaces" in report
    lines = [line for name, sp in spaces for line in _space_lines(name, sp, several)] + [""]
    lines.append(text_table(*report_table(report)))
    lines.append("similarities: cosine similarity, higher is closer; distances: lower is closer; acceptance and "
                 "EER baselines: the real trials that set the thresholds")
    for name, sp in spaces:
        iv = sp.get("intervals")
        if iv:
            lines.append(f"{f'[{name}] ' if several else ''}" + (
                f"[low, high]: 95 % bootstrap interval, {iv['replicates']} resamples of the speakers, then of each "
                f"speaker's utterances (seed {iv['seed']})" if "values" in iv else f"no intervals: {iv['skipped']}"))
    for name, sp in spaces:
        lines += _worst_lines(name, sp, several)
    notes = [f"{f'[{name}] ' if several else ''}{m}" for name, sp in spaces for m in sp.get("messages", [])]
    notes += report.get("messages", []) if several else []
    if notes:
        lines += ["", "notes:"] + [f"  - {m}" for m in notes]
    return "\n".join(lines)
