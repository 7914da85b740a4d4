"""A self-contained HTML page of a report (``--html DIR`` of ``similarity``, ``compare`` and
``evaluate-verification``): ``DIR/index.html`` with the summary table and its intervals, the PNG plots beside it
(``DIR/plots/``), a per-pair, per-file or per-trial table sortable by clicking a column header (a few lines of
inline JavaScript), and audio players for the worst pairs, files or trials and their references, whose files are
copied to ``DIR/audio/`` under safe names so that every link is relative and the page needs no network or server.

The pages are built from what the commands already produce (the report dict, the rows of their CSV tables); the
reports themselves are not changed. Every string from data (paths, ids, speaker names) is HTML-escaped. A folder
is ours when it holds :data:`MARKER` (written first, listing our files); a non-empty folder without it is refused
(:func:`check_html_dir`) before any work, and nothing but the files we listed is ever replaced or removed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import quote

from ..atomic import atomic_write, write_atomic, write_json
from ..errors import DeepSpeakerError

INDEX = "index.html"
MARKER = ".deep-speaker-html.json"  # what says a folder is ours, and which of its files we wrote
AUDIO_DIR = "audio"
PLOTS_DIR = "plots"
MAX_ROWS = 10000  # rows of the sortable table beyond which the page keeps the most telling ones (and says so)
WORST_TRIALS = 5  # hardest target and non-target trials to listen to (evaluate-verification has no --worst)
PLOT_CAPTIONS = {
    "sim_histogram": "SIM of the pairs in each space (with the real same- and different-speaker means)",
    "utterance_similarity": "Similarity of each generated file to its speaker's real centroid",
    "speaker_similarity": "Per-speaker similarity of generated speech against the real ceiling",
    "fd_infinity": "FD against 1/N and its extrapolation to FD∞",
    "det": "DET curve of the trials",
    "similarity_matrix": "Cosine similarity of the utterances, grouped by speaker",
}

Cell = Any  # str, int, float, bool or None (an empty cell)


@dataclass
class Table:
    """A header and rows; ``sortable`` tables sort by a click on a column header."""

    header: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    note: str = ""
    sortable: bool = False
    digits: int = 4  # decimals a float cell shows (the sort uses every digit)


@dataclass
class Listen:
    """Recordings to hear side by side: a title (why they are flagged) and ``(label, path)`` clips."""

    title: str
    clips: list[tuple[str, str]]


@dataclass
class Page:
    title: str
    facts: list[tuple[str, str]]  # what was evaluated: (name, value)
    summary: list[Table]
    detail: Table | None = None
    listen: list[Listen] = field(default_factory=list)
    listen_note: str = ""
    notes: list[str] = field(default_factory=list)


# --- the folder ----------------------------------------------------------------------------------------------

def _ours(folder: Path) -> list[str] | None:
    """The files our marker lists (relative paths inside ``folder``), or None when the folder is not ours."""
    try:
        listed = json.loads((folder / MARKER).read_text(encoding="utf8"))
        files = listed["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if listed.get("written_by") != "deep-speaker" or not isinstance(files, list):
        return None
    return [f for f in files if isinstance(f, str) and _inside(f)]


def _inside(relative: str) -> bool:
    parts = Path(relative).parts
    return bool(parts) and not Path(relative).is_absolute() and ".." not in parts


def check_html_dir(path: str | os.PathLike) -> Path:
    """``path`` as a Path when a page may be written there: a new or empty folder, or one an earlier page wrote
    (it holds :data:`MARKER`). Anything else is a one-line DeepSpeakerError, before any work is done."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise DeepSpeakerError(f"--html {folder}: is a file; give a folder for index.html and its plots and audio")
    if folder.is_dir() and any(folder.iterdir()) and _ours(folder) is None:
        raise DeepSpeakerError(f"--html {folder}: the folder is not empty and was not written by deep-speaker "
                               f"(no {MARKER}); give a new or empty folder")
    return folder


def _safe_name(index: int, path: str) -> str:
    """``NNN-name.ext``: the file's name with anything but letters, digits, ``.``, ``_`` and ``-`` replaced."""
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:60] or "audio"
    ext = ext.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,5}", ext) else ""
    return f"{index:03d}-{stem}{ext}"


def _copy(source: str, target: Path) -> None:
    with open(source, "rb") as src, atomic_write(target) as out:
        shutil.copyfileobj(src, out)


# --- HTML ------------------------------------------------------------------------------------------------------

def e(value: Any) -> str:
    """Text for HTML (element content and quoted attribute values)."""
    return html.escape("" if value is None else str(value), quote=True)


def _cell(value: Cell, digits: int) -> str:
    if value is None:
        return '<td data-value=""></td>'
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, (int, float)):
        shown = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        return f'<td class="num" data-value="{e(repr(value))}">{e(shown)}</td>'
    return f"<td>{e(value)}</td>"


def render_table(table: Table, table_id: str) -> str:
    classes = "sortable" if table.sortable else "summary"
    head = "".join(f'<th scope="col"{" tabindex=0" if table.sortable else ""}>{e(h)}</th>' for h in table.header)
    body = "\n".join("<tr>" + "".join(_cell(c, table.digits) for c in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{e(table.caption)}</caption>" if table.caption else ""
    note = f'<p class="note">{e(table.note)}</p>' if table.note else ""
    return (f'<div class="scroll"><table id="{e(table_id)}" class="{classes}">{caption}<thead><tr>{head}</tr>'
            f"</thead>\n<tbody>\n{body}\n</tbody></table></div>{note}")


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1200px;
 padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f4f7}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}caption{text-align:left;font-weight:600;padding:.3em 0}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
.scroll{overflow-x:auto}.sortable td{word-break:break-all}dl.facts{display:grid;grid-template-columns:max-content 1fr;
 gap:.1em 1em}dl.facts dt{font-weight:600}dl.facts dd{margin:0;word-break:break-all}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top;max-width:min(100%,560px)}
figure img{max-width:100%;height:auto;
 border:1px solid #eee}figcaption{font-size:.85em;color:#555}
.listen{border:1px solid #e3e6ea;border-radius:6px;padding:.4em .8em;margin:.5em 0}
.clip{display:flex;align-items:center;gap:1em;flex-wrap:wrap;margin:.2em 0}
.clip span{font-size:.85em;color:#333;word-break:break-all}.note{color:#555;font-size:.9em}
"""

# Click a header: sort the rows by that column, numerically when every filled cell is a number, ascending then
# descending (a stable sort: ties keep their order). Empty cells go first in ascending order.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    function sort() {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var up = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      function key(row) {
        var c = row.cells[col];
        return c.hasAttribute("data-value") ? c.getAttribute("data-value") : c.textContent;
      }
      var numeric = rows.every(function (r) { var v = key(r); return v === "" || isFinite(Number(v)); });
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), d;
        if (x === "" || y === "") { d = (x === "" ? 0 : 1) - (y === "" ? 0 : 1); }
        else if (numeric) { d = Number(x) - Number(y); }
        else { d = x < y ? -1 : (x > y ? 1 : 0); }
        return up ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { sort(); } });
  });
});
"""


def render_page(page: Page, plots: Sequence[tuple[str, str]], audio: dict[str, str]) -> str:
    """The page's HTML; ``plots`` are ``(caption, relative src)``, ``audio`` maps a source path to its copy's
    relative src (a clip whose source is not there is named, not played)."""
    parts = [f"<h1>{e(page.title)}</h1>"]
    if page.facts:
        parts.append('<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in page.facts)
                     + "</dl>")
    parts.append("<h2>Summary</h2>")
    parts += [render_table(t, f"summary-{k}") for k, t in enumerate(page.summary)]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<figure><img src="{e(src)}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>'
                  for caption, src in plots]
    if page.listen:
        parts.append("<h2>Listen</h2>")
        if page.listen_note:
            parts.append(f'<p class="note">{e(page.listen_note)}</p>')
        for group in page.listen:
            clips = []
            for label, path in group.clips:
                player = (f'<audio controls preload="metadata" src="{e(audio[path])}"></audio>' if path in audio
                          else '<em>(not a file here: nothing to play)</em>')
                clips.append(f'<div class="clip" data-source="{e(path)}">{player}<span><b>{e(label)}</b> '
                             f'{e(path)}</span></div>')
            parts.append(f'<div class="listen"><div>{e(group.title)}</div>{"".join(clips)}</div>')
    if page.detail is not None:
        parts.append(f"<h2>{e(page.detail.caption)}</h2>")
        parts.append('<p class="note">Click a column header to sort by it (again: the other way).</p>')
        detail = Table(page.detail.header, page.detail.rows, "", page.detail.note, True, page.detail.digits)
        parts.append(render_table(detail, "detail"))
    if page.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in page.notes) + "</ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"generator\" content=\"deep-speaker\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{e(page.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(parts)
            + f"\n<script>{SCRIPT}</script>\n</body>\n</html>\n")


def write_page(out_dir: str | os.PathLike, page: Page,
               make_plots: Callable[[Path], Iterable[str | os.PathLike]] | None = None) -> Path:
    """Write ``page`` to ``out_dir/index.html``: the PNGs ``make_plots(folder)`` writes (into a temporary folder)
    copied to ``plots/``, the clips' audio to ``audio/``; every file atomically, the marker first. Returns the
    page's path."""
    folder = check_html_dir(out_dir)
    before = _ours(folder) or []
    with tempfile.TemporaryDirectory(prefix="deep-speaker-html-") as tmp:
        pngs = [Path(p) for p in (make_plots(Path(tmp)) if make_plots else [])]
        captions = [_caption(p, Path(tmp)) for p in pngs]
        sources = [p for g in page.listen for _, p in g.clips]
        present = [p for p in dict.fromkeys(sources) if os.path.isfile(p)]
        # One copy per file, whatever names it goes by.
        copies: dict[str, str] = {}
        by_real: dict[str, str] = {}
        for path in present:
            real = os.path.realpath(path)
            if real not in by_real:
                by_real[real] = f"{AUDIO_DIR}/{_safe_name(len(by_real) + 1, path)}"
            copies[path] = by_real[real]
        plot_files = [f"{PLOTS_DIR}/{_safe_name(k + 1, str(p))}" for k, p in enumerate(pngs)]
        files = [*plot_files, *by_real.values(), INDEX]
        folder.mkdir(parents=True, exist_ok=True)
        # The marker claims the folder (and every file we may leave in it) before anything else is written.
        write_json(folder / MARKER, {"written_by": "deep-speaker", "files": sorted(set(before) | set(files))})
        for png, name in zip(pngs, plot_files):
            _copy(str(png), folder / name)
        for real, name in by_real.items():
            _copy(real, folder / name)
    text = render_page(page, [(c, quote(name)) for c, name in zip(captions, plot_files)],
                       {path: quote(name) for path, name in copies.items()})
    write_atomic(folder / INDEX, text.encode("utf8"))
    for stale in set(before) - set(files):  # ours from an earlier page, not part of this one
        target = folder / stale
        if target.is_file() and not target.is_symlink():
            target.unlink()
    write_json(folder / MARKER, {"written_by": "deep-speaker", "files": sorted(files)})
    return folder / INDEX


def _caption(png: Path, folder: Path) -> str:
    """A picture's caption by its name; one in a subfolder (an encoder's, with several) is prefixed with it."""
    stem = png.stem
    if stem in PLOT_CAPTIONS:
        caption = PLOT_CAPTIONS[stem]
    elif stem.startswith("projection_"):
        caption = f"2-D projection of the embeddings ({stem.split('_', 1)[1]}), coloured by speaker"
    else:
        caption = stem.replace("_", " ")
    try:
        parts = png.relative_to(folder).parts
    except ValueError:
        parts = ()
    return f"{parts[0]}: {caption}" if len(parts) > 1 else caption


# --- the pages ---------------------------------------------------------------------------------------------------

def _interval(part: dict, unit: str) -> str:
    iv = (part.get("intervals") or {}).get(unit)
    return "" if iv is None else f"{iv['low']:.4f}–{iv['high']:.4f}"


def _limited(rows: list[list[Cell]], key: Callable[[list[Cell]], float], what: str) -> tuple[list[list[Cell]], str]:
    """At most :data:`MAX_ROWS` rows: those of lowest ``key`` (the most telling), in their order; and a note."""
    if len(rows) <= MAX_ROWS:
        return rows, ""
    keep = set(sorted(range(len(rows)), key=lambda i: key(rows[i]))[:MAX_ROWS])
    return [r for i, r in enumerate(rows) if i in keep], f"{MAX_ROWS} of {len(rows)} rows shown: {what}"


def _number(value: Cell) -> float:
    return float("inf") if value is None else float(value)


def similarity_page(report: dict, header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> Page:
    """The page of a ``similarity`` report and its per-pair rows (``SimilarityResult.per_pair_rows()``)."""
    spaces = report["spaces"]
    with_real = any("real" in part for part in spaces.values())
    head = ["encoder", "pairs", "SIM", "95 % CI pairs", "95 % CI speakers", "SIM std", "SIM median"]
    if with_real:
        head += ["real same", "real diff", "position", "accept θEER", "accept θFAR"]
    body = []
    for name, part in spaces.items():
        row = [name, part["n_pairs"], part["sim"], _interval(part, "pairs"), _interval(part, "speakers"),
               part["sim_std"], part["sim_median"]]
        if with_real:
            r = part.get("real")
            row += [None] * 5 if r is None else [
                r["same_speaker"]["mean"], r["different_speaker"]["mean"], r["position"],
                f"{100 * r['accept_eer']:.1f} %", f"{100 * r['accept_far']:.1f} %"]
        body.append(row)
    boot = report["bootstrap"]
    facts = [("pair list", f"{report['pairs']} ({report['format']})"),
             ("pairs", f"{report['n_pairs']} of {report['n_pairs_listed']} listed ({report['n_pairs_skipped']} "
                       f"skipped), {report['n_files']} distinct files"),
             ("real speech", report["real"] or "none"),
             ("95 % intervals", f"percentile bootstrap, {boot['replicates']} resamples, seed {boot['seed']}"
              if boot["replicates"] else "none (--bootstrap 0)")]
    summary = Table(head, body, "SIM: mean cosine of each generated utterance with its reference, higher is closer")
    listen = [Listen(f"{name}: SIM {w['similarity']:.4f}", [("reference", w["reference"]),
                                                              ("generated", w["generated"])])
              for name, part in spaces.items() for w in part["worst"]]
    column = list(header).index("similarity")
    shown, note = _limited([list(r) for r in rows], lambda r: _number(r[column]), "the least similar pairs")
    detail = Table(list(header), shown, "Per pair and encoder", note)
    notes = [f"[{name}] {m}" for name, part in spaces.items() for m in part["messages"]]
    notes += [f"skipped {f['path']}: {f.get('reason', '')}" for f in report.get("failures", [])]
    return Page("deep-speaker similarity", facts, [summary], detail, listen,
                "The least similar pairs of each space: the reference, then the generated utterance.", notes)


def similarity_plots(report: dict, header: Sequence[str], rows: Sequence[Sequence[Cell]]
                     ) -> Callable[[Path], list[Path]]:
    """What :func:`write_page` calls for a similarity page's picture: the SIM histogram of each space."""
    def make(folder: Path) -> list[Path]:
        from . import plots  # matplotlib only when a page is written

        enc, sim = list(header).index("encoder"), list(header).index("similarity")
        values: dict[str, list[float]] = {}
        for row in rows:
            values.setdefault(str(row[enc]), []).append(float(row[sim]))
        lines = []
        for name, part in report["spaces"].items():
            real = part.get("real")
            if real is not None:
                lines += [(name, f"{name}: real same-speaker mean", real["same_speaker"]["mean"]),
                          (name, f"{name}: real different-speaker mean", real["different_speaker"]["mean"])]
        png = plots.plot_histograms(values, folder / "sim_histogram.png", xlabel="cosine similarity (SIM)",
                        title="SIM of the pairs, per encoder", lines=lines)
        return [png] if png else []
    return make


def _compare_spaces(report: dict) -> list[tuple[str, dict]]:
    if "spaces" in report:
        return [(name, report["spaces"][name]) for name in report["encoders"]]
    return [(report["settings"]["encoder"], report)]


def compare_page(report: dict, summary: tuple[Sequence[str], Sequence[Sequence[Cell]]],
                 per_file: tuple[Sequence[str], Sequence[Sequence[Cell]]],
                 *, real_files: dict[str, dict[str, list[str]]]) -> Page:
    """The page of a ``compare`` report: its table (``report_table(report)``), the per-file rows (those of
    ``--per-utterance``), and ``real_files[encoder][speaker]``, the real files of each speaker to listen to
    beside the least similar generated files."""
    spaces = _compare_spaces(report)
    facts = []
    for name, sp in spaces:
        gen, real = sp["generated"], sp["real"]
        facts += [(f"{name}: generated", f"{gen['source']} ({gen['n']} utterances, {gen['speakers']} speakers)"),
                  (f"{name}: real", f"{real['source']} ({real['n']} utterances, {real['speakers']} speakers)"),
                  (f"{name}: model", sp["settings"]["model_identity"])]
        iv = sp.get("intervals")
        if iv:
            facts.append((f"{name}: 95 % intervals", f"{iv['replicates']} resamples of the speakers, then of their "
                                                     f"utterances, seed {iv['seed']}" if "values" in iv
                          else f"none: {iv['skipped']}"))
    head, body = summary
    table = Table(list(head), [list(r) for r in body], "Generated vs real, beside the real baseline "
                  "([low, high]: 95 % bootstrap interval)")
    listen = []
    for name, sp in spaces:
        files = real_files.get(name, {})
        for w in sp.get("worst") or []:
            clips = [("generated", w["path"])]
            clips += [(f"real, speaker {w['speaker']}", p) for p in _first_file(files.get(w["speaker"], []))]
            if w["nearest_speaker"] != w["speaker"]:
                clips += [(f"real, nearest speaker {w['nearest_speaker']}", p)
                          for p in _first_file(files.get(w["nearest_speaker"], []))]
            listen.append(Listen(f"{name}: similarity {w['similarity']:.4f} to speaker {w['speaker']} (nearest "
                                 f"real speaker {w['nearest_speaker']}, {w['nearest_similarity']:.4f})", clips))
    head, body = per_file
    column = list(head).index("similarity")
    shown, note = _limited([list(r) for r in body], lambda r: _number(r[column]), "the least similar files")
    detail = Table(list(head), shown, "Per generated file and encoder", note)
    notes = [f"[{name}] {m}" for name, sp in spaces for m in sp.get("messages", [])]
    notes += report.get("messages", []) if "spaces" in report else []
    for name, sp in spaces:
        notes += [f"[{name}] skipped {f['path']}: {f.get('reason', '')}"
                  for side in ("real", "generated") for f in sp[side].get("failures", [])]
    return Page("deep-speaker compare", facts, [table], detail, listen,
                "The generated files least similar to their speaker, each with a real file of that speaker (and "
                "of the nearest real speaker when it is another).", notes)


def _first_file(paths: Sequence[str]) -> list[str]:
    """The first of ``paths`` that is a file, as a list of at most one."""
    return next(([p] for p in paths if os.path.isfile(p)), [])


def compare_plots(report: dict, per_file: tuple[Sequence[str], Sequence[Sequence[Cell]]],
                  plot_report: Callable[[dict, Path], list[Path]]) -> Callable[[Path], list[Path]]:
    """What :func:`write_page` calls for a compare page: each space's PNGs (``plot_report``, the ``--plots``
    pictures) and a histogram of the per-file similarities."""
    def make(folder: Path) -> list[Path]:
        from . import plots  # matplotlib only when a page is written

        written: list[Path] = []
        spaces = _compare_spaces(report)
        for name, sp in spaces:
            written += plot_report(sp, folder / name if len(spaces) > 1 else folder)
        head, rows = per_file
        enc, sim = list(head).index("encoder"), list(head).index("similarity")
        values: dict[str, list[float]] = {}
        for row in rows:
            if row[sim] is not None:
                values.setdefault(str(row[enc]), []).append(float(row[sim]))
        png = plots.plot_histograms(values, folder / "utterance_similarity.png", xlabel="cosine to the speaker's real centroid",
                        title="Generated files: similarity to their speaker")
        return written + ([png] if png else [])
    return make


TRIAL_COLUMNS = ("first", "second", "first_speaker", "second_speaker", "target", "score")


def verification_page(report: dict, summary_rows: Sequence[tuple[str, str]],
                      trials: Sequence[Sequence[Cell]]) -> Page:
    """The page of an ``evaluate-verification`` report: its table rows (``table_rows(report)``) and one row per
    trial (:data:`TRIAL_COLUMNS`; target 1 or 0)."""
    source = report.get("source", {})
    facts = [("evaluated", ", ".join(f"{k} {v}" for k, v in source.items())),
             ("encoder", f"{report.get('encoder')} (model {report.get('model_identity')})"),
             ("trials", f"{report['n_trials']} ({report['n_target']} target, {report['n_nontarget']} non-target)")]
    table = Table(["metric", "value"], [list(r) for r in summary_rows], "Verification report "
                  "([95 % CI]: speaker bootstrap)")
    threshold = report["eer_threshold"]
    t, s = TRIAL_COLUMNS.index("target"), TRIAL_COLUMNS.index("score")

    def margin(row: Sequence[Cell]) -> float:  # below 0: on the wrong side of the EER threshold
        return (row[s] - threshold) if row[t] else (threshold - row[s])

    misses = sorted((r for r in trials if r[t]), key=lambda r: r[s])[:WORST_TRIALS]
    false_alarms = sorted((r for r in trials if not r[t]), key=lambda r: -r[s])[:WORST_TRIALS]
    listen = [Listen(f"{'target' if r[t] else 'non-target'} trial, score {r[s]:.4f} (EER threshold "
                     f"{threshold:.4f}): speakers {r[2]} and {r[3]}", [("first", str(r[0])), ("second", str(r[1]))])
              for r in misses + false_alarms]
    shown, note = _limited([list(r) for r in trials], margin, "the trials nearest to or across the EER threshold")
    detail = Table(list(TRIAL_COLUMNS), shown, "Per trial", note)
    notes = [f"skipped {f['path']}: {f.get('reason', '')}" for f in report.get("failures", [])]
    return Page("deep-speaker evaluate-verification", facts, [table], detail, listen,
                f"The {WORST_TRIALS} lowest-scored target trials (misses) and the {WORST_TRIALS} highest-scored "
                f"non-target trials (false alarms).", notes)
