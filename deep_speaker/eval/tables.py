"""Tables for people and papers, the one home of them: a header and rows of cells as aligned text, CSV,
Markdown or LaTeX, chosen by the output file's suffix and written atomically.

``write_table("results.tex", ["metric", "value"], [["EER", "3.1 %"]])``. Cells are strings or numbers (None is an
empty cell); a number is written as ``str()`` gives it, so CSV keeps every digit.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Sequence

from ..atomic import write_atomic
from ..errors import DeepSpeakerError

TABLE_FORMATS = {".txt": "text", ".csv": "csv", ".md": "markdown", ".tex": "latex"}
# Symbols of our metric names and cells that LaTeX text mode lacks, as math.
_LATEX_SYMBOLS = {"±": r"$\pm$", "∞": r"$\infty$", "²": r"$^2$", "θ": r"$\theta$", "≤": r"$\leq$", "≥": r"$\geq$",
                  "−": "-", "–": "--", "—": "---", "…": r"\dots{}", "∘": r"$\circ$", "·": r"$\cdot$"}
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                  "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _cells(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows as strings, every row as wide as the header."""
    head = ["" if c is None else str(c) for c in header]
    body = [["" if c is None else str(c) for c in row] for row in rows]
    for i, row in enumerate(body):
        if len(row) != len(head):
            raise DeepSpeakerError(f"table row {i} has {len(row)} cells for {len(head)} columns")
    return head, body


def text_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], gap: int = 2) -> str:
    """Columns padded to their widest cell, a rule of dashes under the header."""
    head, body = _cells(header, rows)
    widths = [max(len(r[j]) for r in [head, *body]) for j in range(len(head))]

    def line(cells: list[str]) -> str:
        return (" " * gap).join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(head), "-" * (sum(widths) + gap * (len(widths) - 1)), *map(line, body)])


def csv_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """RFC 4180 CSV (the csv module's quoting), one line per row."""
    head, body = _cells(header, rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)
    writer.writerows(body)
    return out.getvalue()


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown pipe table; ``|`` inside cells escaped."""
    head, body = _cells(header, rows)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |"

    return "\n".join([line(head), "|" + "|".join("---" for _ in head) + "|", *map(line, body)]) + "\n"


def latex_escape(text: str) -> str:
    """Text-mode LaTeX: its special characters escaped, the symbols of metric names as math."""
    return "".join(_LATEX_SPECIAL.get(c, _LATEX_SYMBOLS.get(c, c)) for c in text)


def latex_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A ``tabular`` with booktabs rules (``\\usepackage{booktabs}``): the first column left, the others right."""
    head, body = _cells(header, rows)

    def line(cells: list[str]) -> str:
        return " & ".join(map(latex_escape, cells)) + r" \\"

    spec = "l" + "r" * (len(head) - 1)
    return "\n".join([rf"\begin{{tabular}}{{{spec}}}", r"\toprule", line(head), r"\midrule", *map(line, body),
                      r"\bottomrule", r"\end{tabular}"]) + "\n"


_RENDER = {"text": lambda h, r: text_table(h, r) + "\n", "csv": csv_table, "markdown": markdown_table,
           "latex": latex_table}


def table_format(path: str | os.PathLike) -> str:
    """The format a table file's suffix asks for; a one-line error for another suffix."""
    fmt = TABLE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DeepSpeakerError(f"{path}: a table file ends in {', '.join(TABLE_FORMATS)}")
    return fmt


def render_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """The table as ``text``, ``csv``, ``markdown`` or ``latex``."""
    if fmt not in _RENDER:
        raise DeepSpeakerError(f"unknown table format {fmt!r}; choose one of {', '.join(_RENDER)}")
    return _RENDER[fmt](header, rows)


def write_table(path: str | os.PathLike, header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> Path:
    """Write the table to ``path`` in the format of its suffix (.txt, .csv, .md, .tex), atomically; returns the path."""
    text = render_table(header, rows, table_format(path))
    write_atomic(path, text.encode("utf8"))
    return Path(path)
