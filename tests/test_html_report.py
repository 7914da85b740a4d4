"""``--html DIR`` of ``similarity``, ``compare`` and ``evaluate-verification``, opened in a real browser.

Each command runs in-process on bundled speech with the toy encoders of test_encoders (fast, no model framework),
writing its JSON and CSV reports too; the page is then opened from ``file://`` in headless Chromium (Debian's
``/usr/bin/chromium``, driven by Playwright) and checked against those files, an independent count: no console
error, uncaught exception or failed request; the summary and per-item tables have the reports' numbers of rows;
every picture decoded (naturalWidth > 0); every audio player's source is a copy in DIR/audio/ of the file it
names, and the browser read its duration; a click on a column header sorts the rows as Python's ``sorted`` does,
a second click the other way; strings from data (a file name and a carried column with HTML in them) are shown
as text, never markup. A screenshot of each page is written to /tmp/html_report_<command>.png. A folder that is
not ours is refused before any work (exit 2, one line), one we wrote is written again.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from test_encoders import HELD_OUT, TOY, MeanFbank, link_speakers

from deep_speaker.cli import main
from deep_speaker.encoders import register_encoder
from deep_speaker.eval.degrade import degrade_folder
from deep_speaker.eval.html import MARKER

CHROMIUM = "/usr/bin/chromium"
UNTRIMMED = "toy-mean-fbank-untrimmed"
SPEAKERS = ("1688", "1998", "2033", "2414")
# The HTML-looking strings a page must show as text: in a file name (a link to a bundled file) and a CSV column.
ODD_NAME = 'odd <b>name &amp; "quote\'.flac'
ODD_NOTE = '<img src=x onerror="window.hacked=1">&amp; <b>bold</b>'
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs Playwright for Python: pip install -r requirements.txt (playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"needs Chromium at {CHROMIUM}: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module", autouse=True)
def toys_registered():
    register_encoder(TOY, MeanFbank, replace=True)
    register_encoder(UNTRIMMED, lambda: MeanFbank("none"), replace=True)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class Opened:
    """A page opened in the browser with what went wrong while it loaded and played."""

    def __init__(self, browser, index: Path, screenshot: str):
        self.problems: list[str] = []
        self.aborted_media: set[str] = set()
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        self.page.on("requestfailed", self._failed)
        self.page.goto(index.as_uri())
        self.page.wait_for_load_state("load")
        # Every player has read its file's header (readyState >= 1: HAVE_METADATA) and knows its duration.
        self.page.wait_for_function("Array.from(document.querySelectorAll('audio')).every(a => a.readyState >= 1)",
                                    timeout=15000)
        height = self.page.evaluate("document.documentElement.scrollHeight")  # the top of a long page is enough
        self.page.screenshot(path=screenshot, full_page=True, clip={"x": 0, "y": 0, "width": 1280,
                                                                    "height": min(height, 6000)})

    def _failed(self, request) -> None:
        # A media element cancels its own range requests once it has what it wants (preload="metadata") and
        # reissues them when played: Chromium reports those as ERR_ABORTED. Such a URL is checked below to be a
        # player's source that did load; any other failure (a missing file: ERR_FILE_NOT_FOUND) is a problem.
        if request.resource_type == "media" and request.failure == "net::ERR_ABORTED":
            self.aborted_media.add(request.url)
        else:
            self.problems.append(f"request failed: {request.url} {request.failure}")

    def rows(self, table: str) -> int:
        return self.page.locator(f"#{table} tbody tr").count()

    def column(self, header: str) -> list:
        """The detail table's cells of one column, in the order shown: numbers where the cells hold them."""
        return self.page.evaluate(
            """(header) => {
                const table = document.getElementById('detail');
                const col = Array.from(table.tHead.rows[0].cells).findIndex(th => th.textContent === header);
                return Array.from(table.tBodies[0].rows).map(r => {
                    const c = r.cells[col];
                    if (!c.hasAttribute('data-value')) return c.textContent;
                    const v = c.getAttribute('data-value');
                    return v === '' ? null : Number(v);
                });
            }""", header)

    def sort_by(self, header: str) -> list:
        self.page.locator("#detail thead th", has_text=header).first.click()
        return self.column(header)

    def check(self, folder: Path, n_images: int, clip_sources: int) -> None:
        """The loading, the pictures and the audio players (``clip_sources`` at least)."""
        images = self.page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert len(images) == n_images == len(list((folder / "plots").glob("*.png")))
        assert all(width > 0 for _, width in images), images
        players = self.page.evaluate("""Array.from(document.querySelectorAll('audio')).map(a => [
            a.currentSrc, a.readyState, a.duration, a.closest('.clip').dataset.source])""")
        assert len(players) >= clip_sources
        for src, state, duration, source in players:
            url = urlparse(src)
            copy = Path(unquote(url.path))
            assert url.scheme == "file" and copy.parent == folder / "audio" and copy.is_file(), src
            assert state >= 1 and duration > 0, (src, state, duration)
            assert copy.read_bytes() == Path(source).read_bytes(), (copy, source)
        assert self.aborted_media <= {src for src, *_ in players}, self.aborted_media
        # Relative links only: the page works wherever the folder is copied.
        html = (folder / "index.html").read_text()
        assert 'src="/' not in html and "file:" not in html and "http" not in html.replace("http-equiv", "")
        assert not self.problems, self.problems


def check_sorting(opened: Opened, numeric: str, text: str) -> None:
    shown = opened.sort_by(numeric)
    assert shown == sorted(shown, key=lambda v: (v is not None, v))
    assert opened.sort_by(numeric) == sorted(shown, key=lambda v: (v is not None, v), reverse=True)
    shown = opened.sort_by(text)
    assert shown == sorted(shown)


def test_similarity_page(browser, tmp_path, capsys):
    odd = tmp_path / ODD_NAME
    odd.symlink_to(sorted(HELD_OUT.rglob("*.flac"))[-1])
    listed = [row for row in read_csv(HELD_OUT.parents[1] / "test-other-pairs.csv")][:12]
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["reference", "generated", "speaker", "note"])
        for k, row in enumerate(listed):
            writer.writerow([HELD_OUT.parents[1] / row["reference"], HELD_OUT.parents[1] / row["generated"],
                             row["speaker"], f"n{k}"])
        writer.writerow([HELD_OUT.parents[1] / listed[0]["reference"], odd.name, listed[0]["speaker"], ODD_NOTE])
    out = tmp_path / "page"
    real = link_speakers(tmp_path / "real", list(SPEAKERS[:2]))
    code = main(["similarity", str(pairs), "--encoder", f"{TOY},{UNTRIMMED}", "--real", str(real),
                 "--bootstrap", "100", "--worst", "3", "-o", str(tmp_path / "sim.json"), "--per-pair",
                 str(tmp_path / "pairs_out.csv"), "--html", str(out)])
    printed = capsys.readouterr()
    assert code == 0 and f"html report: {out / 'index.html'}" in printed.out, printed.err
    report, per_pair = json.loads((tmp_path / "sim.json").read_text()), read_csv(tmp_path / "pairs_out.csv")

    opened = Opened(browser, out / "index.html", "/tmp/html_report_similarity.png")
    opened.check(out, 1, 2 * 3 * 2)
    assert opened.rows("summary-0") == len(report["spaces"]) == 2
    assert opened.rows("detail") == len(per_pair) == 2 * 13
    cells = opened.page.locator("#summary-0 tbody tr").first.locator("td").all_inner_texts()
    pairs_iv = report["spaces"][TOY]["intervals"]["pairs"]
    assert cells[0] == TOY and f"{pairs_iv['low']:.4f}–{pairs_iv['high']:.4f}" in cells
    assert sorted(opened.column("similarity")) == pytest.approx(sorted(float(r["similarity"]) for r in per_pair))
    check_sorting(opened, "similarity", "generated")
    # Data is text: the odd file name and note are shown as written, no element or script came from them.
    assert opened.page.locator("#detail b, #detail img").count() == 0
    assert not opened.page.evaluate("window.hacked === 1")
    assert ODD_NOTE in opened.column("note") and str(odd) in opened.column("generated")
    opened.page.close()


def test_compare_page(browser, tmp_path, capsys):
    real = link_speakers(tmp_path / "real", list(SPEAKERS))
    degrade_folder(real, tmp_path / "gen", kind="noise", level=5.0, seed=1)
    for extra in SPEAKERS[2:]:  # generated speech of two speakers only
        shutil.rmtree(tmp_path / "gen" / extra)
    out = tmp_path / "page"
    code = main(["compare", str(real), str(tmp_path / "gen"), "--encoder", TOY, "--worst", "3", "--bootstrap", "100",
                 "--num-subsets", "10", "--ndb-bins", "5", "--fd-inf-points", "5", "-o", str(tmp_path / "c.json"),
                 "--table", str(tmp_path / "table.csv"), "--per-utterance", str(tmp_path / "files.csv"),
                 "--html", str(out)])
    printed = capsys.readouterr()
    assert code == 0 and f"html report: {out / 'index.html'}" in printed.out, printed.err
    report = json.loads((tmp_path / "c.json").read_text())
    table, files = read_csv(tmp_path / "table.csv"), read_csv(tmp_path / "files.csv")

    opened = Opened(browser, out / "index.html", "/tmp/html_report_compare.png")
    pngs = len(list((out / "plots").glob("*.png")))
    assert pngs >= 2  # the --plots pictures and the per-file histogram
    opened.check(out, pngs, 3 * 2)
    assert opened.rows("summary-0") == len(table)
    assert opened.rows("detail") == len(files) == report["generated"]["n"] == 20
    secs = opened.page.locator("#summary-0 tbody tr", has_text="SECS, cosine").first.inner_text()
    assert "[" in secs  # its 95 % interval
    check_sorting(opened, "similarity", "path")
    assert sorted(opened.column("similarity")) == pytest.approx(sorted(float(r["similarity"]) for r in files))
    opened.page.close()


def test_verification_page(browser, tmp_path, capsys):
    folder = link_speakers(tmp_path / "speech", list(SPEAKERS))
    out = tmp_path / "page"
    code = main(["evaluate-verification", str(folder), "--encoder", TOY, "--projection", "pca", "--bootstrap", "100",
                 "-o", str(tmp_path / "v.json"), "--table", str(tmp_path / "v.csv"), "--html", str(out)])
    printed = capsys.readouterr()
    assert code == 0 and f"html report: {out / 'index.html'}" in printed.out, printed.err
    report, table = json.loads((tmp_path / "v.json").read_text()), read_csv(tmp_path / "v.csv")

    opened = Opened(browser, out / "index.html", "/tmp/html_report_verification.png")
    opened.check(out, 3, 2 * 5 * 2)  # det, similarity matrix, projection; 5 misses and 5 false alarms
    assert opened.rows("summary-0") == len(table)
    assert opened.rows("detail") == report["n_trials"] == 40 * 39 // 2
    assert sum(opened.column("target")) == report["n_target"]
    eer = opened.page.locator("#summary-0 tbody tr", has_text="EER").first.inner_text()
    assert "95 % CI" in eer
    check_sorting(opened, "score", "first")
    opened.page.close()


def test_a_folder_not_ours_is_refused_before_any_work(tmp_path, capsys):
    pairs = HELD_OUT.parents[1] / "test-other-pairs.csv"
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    code = main(["similarity", str(pairs), "--encoder", "no-such-encoder", "-o", str(tmp_path / "r.json"),
                 "--html", str(taken)])
    err = capsys.readouterr().err
    # Refused before the encoder is even looked up, and nothing written.
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not empty and was not written by" in err
    assert [p.name for p in taken.iterdir()] == ["notes.txt"] and not (tmp_path / "r.json").exists()
    for argv in (["compare", str(HELD_OUT), str(HELD_OUT)], ["evaluate-verification", str(HELD_OUT)]):
        assert main([*argv, "--encoder", TOY, "--html", str(taken)]) == 2
        assert "not empty and was not written by" in capsys.readouterr().err
    assert main(["similarity", str(pairs), "--encoder", TOY, "--html", str(taken / "notes.txt")]) == 2
    assert "is a file" in capsys.readouterr().err

    # Our own folder is written again: the old page's files replaced, nothing else touched.
    ours = tmp_path / "ours"
    argv = ["similarity", str(pairs), "--encoder", TOY, "--bootstrap", "0", "--html", str(ours)]
    assert main(argv) == 0
    (ours / "mine.txt").write_text("mine")
    first = len(list((ours / "audio").iterdir()))
    assert main([*argv, "--worst", "1"]) == 0
    assert (ours / "mine.txt").read_text() == "mine" and len(list((ours / "audio").iterdir())) == 2 < first
    assert set(json.loads((ours / MARKER).read_text())["files"]) == {
        str(p.relative_to(ours)) for p in ours.rglob("*") if p.is_file() and p.name not in (MARKER, "mine.txt")}
