"""The dev protocol's reports (``eval.dev.evaluate_dev``) as text: one table of EERs per condition with their
speaker-bootstrap intervals, and one of the paired differences to the baseline."""

from __future__ import annotations

from typing import Any, Mapping


def interval_text(part: Mapping[str, Any], signed: bool = False) -> str:
    """``value [low, high]`` in percent (points when ``signed``), or the value alone without an interval."""
    sign = "+" if signed else ""
    text = f"{100 * part['value']:{sign}.2f}"
    if "low" in part:
        text += f" [{100 * part['low']:{sign}.1f}, {100 * part['high']:{sign}.1f}]"
    return text


def eer_part(condition: Mapping[str, Any]) -> dict[str, float]:
    """A condition's EER as an interval dict (its bootstrap interval when there is one)."""
    return {"value": condition["eer"], **{k: v for k, v in condition.get("intervals", {}).get("eer", {}).items()
                                          if k in ("low", "high")}}


def aligned(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A titled text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    return "\n".join([title, *lines])


def dev_tables(reports: Mapping[str, Mapping[str, Any]], seconds: Mapping[str, float] | None = None) -> str:
    """The EER % [95 % interval] of each labelled report per condition and over the out-of-domain ones (and the
    wall seconds when given), then the paired differences to the baseline of the reports that have one."""
    conditions = list(next(iter(reports.values()))["conditions"])
    wall = ["wall s"] if seconds else []
    text = aligned("EER % [95 % speaker-bootstrap interval]", ["encoder", *conditions, "OOD mean", *wall],
                   [[label, *(interval_text(eer_part(r["conditions"][c])) for c in conditions),
                     interval_text(r["ood"]["eer"]), *([f"{seconds[label]:.0f}"] if seconds else [])]
                    for label, r in reports.items()])
    compared = {label: r["baseline"] for label, r in reports.items() if "baseline" in r}
    if compared:
        other = next(iter(compared.values()))["encoder"]
        text += "\n\n" + aligned(f"EER difference to {other}, percentage points [95 % paired interval]",
                                 ["encoder", *conditions, "OOD mean"],
                                 [[label, *(interval_text(b["difference"][c]["eer"], signed=True) for c in conditions),
                                   interval_text(b["ood_difference"]["eer"], signed=True)]
                                  for label, b in compared.items()])
    return text
