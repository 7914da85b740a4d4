"""download_vctk.sh against small archives served from file:// and from loopback HTTP servers."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "download_vctk.sh"
MEMBERS = {"VCTK-Corpus/wav48/p225/p225_001.wav": os.urandom(40000),
           "VCTK-Corpus/txt/p225/p225_001.txt": b"Please call Stella.\n"}


def make_tar(path: Path, members: dict[str, bytes]) -> str:
    """Write a tar.gz of ``members``; returns its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_script(target: Path, url: str, sha256: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "VCTK_URL": url, "VCTK_SHA256": sha256, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), str(target)], env=env, capture_output=True, text=True, timeout=120)


def assert_extracted(proc: subprocess.CompletedProcess, target: Path) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, data in MEMBERS.items():
        assert (target / name).read_bytes() == data
    assert f"VCTK is in {target / 'VCTK-Corpus'}" in proc.stdout
    assert f"cli.py --regenerate_full_cache --multi_threading --cache_output_dir {target}/cache " \
           f"--audio_dir {target / 'VCTK-Corpus'}" in proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_file_url_with_checksum(tmp_path):
    archive = tmp_path / "VCTK-Corpus.tar.gz"
    digest = make_tar(archive, MEMBERS)
    target = tmp_path / "data"
    assert_extracted(run_script(target, archive.as_uri(), digest), target)
    assert (target / "VCTK-Corpus.tar.gz").read_bytes() == archive.read_bytes()
    assert not (target / "VCTK-Corpus.tar.gz.part").exists()


def test_loopback_http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    digest = make_tar(served / "VCTK-Corpus.tar.gz", MEMBERS)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(served)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "http.server did not start"
                time.sleep(0.05)
        target = tmp_path / "data"
        target.mkdir()
        # http.server ignores byte ranges: a partial left by an earlier run must be fetched again, whole.
        (target / "VCTK-Corpus.tar.gz.part").write_bytes(b"stale bytes of an earlier attempt")
        proc = run_script(target, f"http://127.0.0.1:{port}/VCTK-Corpus.tar.gz", digest)
        assert_extracted(proc, target)
        assert "cannot resume" in proc.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one file and honours ``Range: bytes=N-``, recording the ranges asked for."""

    payload = b""
    ranges: list[str] = []

    def do_GET(self):
        start = 0
        if self.headers.get("Range"):
            self.ranges.append(self.headers["Range"])
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload) - start))
        self.end_headers()
        self.wfile.write(self.payload[start:])

    def log_message(self, *args):
        pass


def test_resumes_a_truncated_partial_download(tmp_path):
    archive = tmp_path / "VCTK-Corpus.tar.gz"
    digest = make_tar(archive, MEMBERS)
    payload = archive.read_bytes()
    target = tmp_path / "data"
    target.mkdir()
    half = len(payload) // 2
    (target / "VCTK-Corpus.tar.gz.part").write_bytes(payload[:half])
    handler = type("Handler", (RangeHandler,), {"payload": payload, "ranges": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        proc = run_script(target, f"http://127.0.0.1:{server.server_port}/VCTK-Corpus.tar.gz", digest)
    finally:
        server.shutdown()
        server.server_close()
    assert_extracted(proc, target)
    assert handler.ranges == [f"bytes={half}-"]  # only the missing half was fetched
    assert "resuming" in proc.stdout


def test_bad_checksum_is_refused_and_nothing_extracted(tmp_path):
    archive = tmp_path / "VCTK-Corpus.tar.gz"
    make_tar(archive, MEMBERS)
    target = tmp_path / "data"
    proc = run_script(target, archive.as_uri(), "0" * 64)
    assert proc.returncode != 0 and "checksum mismatch" in proc.stderr
    assert not (target / "VCTK-Corpus").exists() and not (target / "VCTK-Corpus.tar.gz").exists()


def make_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.mark.parametrize("kind, evil", [("tar", "../evil.txt"), ("tar", "VCTK-Corpus/../../evil.txt"),
                                        ("tar", "/tmp/deep-speaker-evil.txt"), ("zip", "../evil.txt")])
def test_archive_escaping_the_target_is_refused(tmp_path, kind, evil):
    archive = tmp_path / f"VCTK-Corpus.{'tar.gz' if kind == 'tar' else 'zip'}"
    members = {**MEMBERS, evil: b"owned"}
    make_tar(archive, members) if kind == "tar" else make_zip(archive, members)
    target = tmp_path / "deep" / "data"
    before = {p for p in tmp_path.rglob("*")}
    proc = run_script(target, archive.as_uri())
    assert proc.returncode != 0 and "refusing to extract" in proc.stderr and evil in proc.stderr
    assert not Path("/tmp/deep-speaker-evil.txt").exists()
    written = {p for p in tmp_path.rglob("*")} - before
    assert written <= {target.parent, target, target / archive.name}  # the download itself, nothing extracted


def add_links(path: Path, members: dict[str, bytes], links: list[tuple[str, str]]) -> None:
    """A tar.gz of ``members`` plus symlinks (name, target), in that order."""
    with tarfile.open(path, "w:gz") as tar:
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("links, payload", [
    # Each link looks harmless alone (it resolves inside the folder it is in); chained, a/b/c is two levels up.
    ([("VCTK-Corpus/a", "."), ("VCTK-Corpus/a/b", ".."), ("VCTK-Corpus/a/b/c", "..")], "VCTK-Corpus/a/b/c/evil.txt"),
    ([("VCTK-Corpus/up", "../..")], "VCTK-Corpus/up/evil.txt"),
    ([("VCTK-Corpus/abs", "/tmp")], "VCTK-Corpus/abs/deep-speaker-evil.txt"),
])
def test_symlink_chains_are_refused_before_anything_is_written(tmp_path, links, payload):
    archive = tmp_path / "VCTK-Corpus.tar.gz"
    add_links(archive, {**MEMBERS, payload: b"owned"}, links)
    target = tmp_path / "deep" / "data"
    before = set(tmp_path.rglob("*"))
    proc = run_script(target, archive.as_uri())
    assert proc.returncode != 0 and "refusing to extract" in proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/deep-speaker-evil.txt").exists()
    written = set(tmp_path.rglob("*")) - before
    assert written <= {target.parent, target, target / archive.name}


def test_a_second_run_finds_the_corpus_already_extracted(tmp_path):
    archive = tmp_path / "VCTK-Corpus.tar.gz"
    make_tar(archive, MEMBERS)
    target = tmp_path / "data"
    assert_extracted(run_script(target, archive.as_uri()), target)
    again = run_script(target, archive.as_uri())
    assert_extracted(again, target)
    assert "already extracted" in again.stderr
