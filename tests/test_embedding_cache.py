"""The embedding cache (per file content hash and encoder): a second run embeds nothing and returns exactly the
rows of an uncached run; a changed file, another encoder identity or precision, and a corrupt row miss; two
processes share a cache; a process killed while writing leaves it valid; ``--embedding-cache`` on embed and stats.

Embeddings are counted with a wrapping toy encoder (the MeanFbank of test_encoders, counting its inputs) and
checked against uncached runs and the toy's plain-numpy formula; stored keys against sha256sum-style hashes of
the files; stored rows through SQLite itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deep_speaker.cli import main
from deep_speaker.encoders import register_encoder
from deep_speaker.encoders import embedding_cache as ec
from deep_speaker.errors import DeepSpeakerError, Failure

from test_encoders import HELD_OUT, TOY, MeanFbank, by_hand, tiny_rescnn

TESTS = Path(__file__).resolve().parent
FILES = sorted(str(p) for p in HELD_OUT.rglob("*.flac"))  # 100 real utterances, checked out long ago (settled)


class Counting(MeanFbank):
    """The toy encoder, counting the inputs it embeds (class-wide: the CLI builds its own instances)."""

    embedded: list[int] = []

    def embed_prepared(self, inputs):
        Counting.embedded.append(len(inputs))
        return super().embed_prepared(inputs)


def embedded() -> int:
    """Inputs embedded since the last call."""
    count = sum(Counting.embedded)
    Counting.embedded.clear()
    return count


@pytest.fixture(autouse=True)
def counting_toy():
    register_encoder(TOY, Counting, replace=True)
    embedded()
    yield
    register_encoder(TOY, MeanFbank, replace=True)


def run(paths, cache=None, **options):
    """embed_files_with_failures of a fresh Counting encoder (a new process would build a new one too)."""
    return ec.with_embedding_cache(Counting(**options), cache).embed_files_with_failures(paths)


def database(folder: Path) -> Path:
    (path,) = folder.glob("*.sqlite")
    return path


def stored(folder: Path) -> dict[str, np.ndarray]:
    """{content hash: row} read with plain sqlite3, each row's digest recomputed here."""
    with sqlite3.connect(database(folder)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT content, dtype, dim, vector, digest FROM embeddings").fetchall()
    for content, dtype, dim, vector, digest in rows:
        assert (dtype, len(vector)) == ("<f4", 4 * dim)
        assert digest == hashlib.sha256(f"{content}/<f4/{dim}/".encode() + vector).digest()[:16]
    return {content: np.frombuffer(vector, "<f4") for content, _, _, vector, _ in rows}


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_second_run_embeds_nothing_and_equals_an_uncached_run(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF, but no audio")
    paths = FILES + [str(bad)]
    plain = run(paths)
    assert embedded() == 100 and plain.failures == [Failure(str(bad), plain.failures[0].reason)]
    cache = tmp_path / "cache"
    first = run(paths, cache)
    assert embedded() == 100
    second = run(paths, cache)
    assert embedded() == 0
    for result in (first, second):
        assert result.paths == plain.paths == FILES and result.failures == plain.failures
        assert np.array_equal(result.embeddings, plain.embeddings)
    np.testing.assert_allclose(second.embeddings, np.stack([by_hand(p) for p in FILES]), atol=1e-5)
    # Keyed by the bytes: every key is the file's sha256, every row the uncached one.
    rows = stored(cache)
    assert sorted(rows) == sorted(sha256(p) for p in FILES)
    for path, row in zip(FILES, plain.embeddings):
        assert np.array_equal(rows[sha256(path)], row)
    # Failures are not kept: the bad file, now repaired, is embedded; the same bytes under another name are not.
    wav(bad, sf.read(FILES[5], dtype="float32")[0])
    shutil.copy(FILES[7], tmp_path / "renamed.flac")
    again = run(FILES[:10] + [str(bad), str(tmp_path / "renamed.flac")], cache)
    assert embedded() == 1 and not again.failures
    assert np.array_equal(again.embeddings[:10], plain.embeddings[:10])
    assert np.array_equal(again.embeddings[11], plain.embeddings[7])
    assert np.array_equal(again.embeddings[10], run([bad]).embeddings[0])


def wav(path: Path, signal: np.ndarray) -> Path:
    sf.write(path, signal, 16000, subtype="PCM_16")
    return path


def test_changed_files_miss_and_files_being_written_are_not_kept(tmp_path):
    signals = [sf.read(f, dtype="float32")[0] for f in FILES[:4]]
    a, b, c = (wav(tmp_path / f"{name}.wav", s) for name, s in zip("abc", signals))
    cache = tmp_path / "cache"
    for _ in range(2):  # just written: embedded, not kept (a second write could share their timestamps)
        run([a, b, c], cache)
        assert embedded() == 3 and stored(cache) == {}
    time.sleep(ec.SETTLED_SECONDS + 0.2)
    run([a, b, c], cache)
    assert embedded() == 3 and len(stored(cache)) == 3
    run([a, b, c], cache)
    assert embedded() == 0
    wav(a, signals[3])  # another recording
    before = b.stat()
    wav(b, 0.5 * signals[1])  # same size, and the mtime set back: only ctime tells
    os.utime(b, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (b.stat().st_size, b.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    d = c.rename(tmp_path / "d.wav")  # same bytes, new name: found by content
    cached = run([a, b, d], cache)
    assert embedded() == 2
    plain = run([a, b, d])
    assert np.array_equal(cached.embeddings, plain.embeddings)
    np.testing.assert_allclose(cached.embeddings, np.stack([by_hand(p) for p in (a, b, d)]), atol=1e-5)


def test_another_identity_misses(tmp_path):
    cache = tmp_path / "cache"
    percentile = run(FILES[:5], cache)
    untrimmed = run(FILES[:5], cache, trim="none")
    assert embedded() == 10 and len(list(cache.glob("*.sqlite"))) == 2
    assert np.array_equal(untrimmed.embeddings, run(FILES[:5], trim="none").embeddings)
    assert not np.allclose(untrimmed.embeddings, percentile.embeddings)
    embedded()
    # Deep Speaker: window, hop and precision open other databases. mixed_bfloat16 keeps the weights and so
    # the identity, but not the embeddings: the key records the compute precision.
    from deep_speaker.encoders.deepspeaker import Embedder

    from deep_speaker.model.rescnn import load_model

    model = load_model(tiny_rescnn(tmp_path / "tiny.keras"))
    base, bf16, hop = Embedder(model), Embedder(model, precision="mixed_bfloat16"), Embedder(model, hop_seconds=1.6)
    assert base.identity == bf16.identity == hop.identity
    names = set()
    for encoder in (base, bf16, hop):
        with ec.EmbeddingCache(cache, encoder) as opened:
            names.add(opened.path.name)
    assert len(names) == 3 and ec.cache_key(base)["precision"] == ["float32"]
    assert {"keras", "tensorflow"} <= set(ec.cache_key(base)["runtime"])
    first, second = (ec.with_embedding_cache(base, cache).embed_files(FILES[:3]) for _ in range(2))
    assert np.array_equal(first, Embedder(model).embed_files(FILES[:3])) and np.array_equal(first, second)
    with sqlite3.connect(ec.EmbeddingCache(cache, base).path) as db:
        assert db.execute("SELECT count(*) FROM embeddings").fetchone() == (3,)


def test_corrupt_rows_are_recomputed_never_returned(tmp_path, caplog):
    cache = tmp_path / "cache"
    plain = run(FILES[:6])
    run(FILES[:6], cache)
    embedded()
    keys = [sha256(p) for p in FILES[:6]]
    with sqlite3.connect(database(cache)) as db:
        vector = lambda k: db.execute("SELECT vector FROM embeddings WHERE content = ?", (k,)).fetchone()[0]
        v0, v1, v2 = vector(keys[0]), vector(keys[1]), vector(keys[2])
        db.execute("UPDATE embeddings SET vector = ? WHERE content = ?", (v0[:-4], keys[0]))  # truncated
        flipped = bytes([v1[0] ^ 1]) + v1[1:]
        db.execute("UPDATE embeddings SET vector = ? WHERE content = ?", (flipped, keys[1]))  # one bit
        db.execute("UPDATE embeddings SET vector = ?, digest = (SELECT digest FROM embeddings WHERE content = ?) "
                   "WHERE content = ?", (v2, keys[2], keys[3]))  # another file's row, digest and all
        db.execute("UPDATE embeddings SET dtype = '<f8', dim = 32 WHERE content = ?", (keys[4],))
    result = run(FILES[:6], cache)
    assert embedded() == 4 and np.array_equal(result.embeddings, plain.embeddings)
    assert "4 corrupt entr(ies) recomputed" in caplog.text
    run(FILES[:6], cache)
    assert embedded() == 0 and all(np.array_equal(stored(cache)[k], r) for k, r in zip(keys, plain.embeddings))
    # A database that is not one: a one-line error naming it, not a crash and not a silent fallback.
    database(cache).write_bytes(b"not a database" * 100)
    with pytest.raises(DeepSpeakerError, match=f"^{database(cache)}: embedding cache unusable"):
        run(FILES[:1], cache)


CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from deep_speaker.encoders import base
from deep_speaker.encoders.embedding_cache import with_embedding_cache
from test_embedding_cache import Counting, embedded
base.FILES_PER_CHUNK = 4  # a commit every 4 files: the two processes interleave their writes
cache, out, ready, go, *paths = sys.argv[1:]
encoder = with_embedding_cache(Counting(), cache)
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
result = encoder.embed_files_with_failures(paths)
np = __import__("numpy")
np.save(out, result.embeddings)
print(json.dumps({{"embedded": embedded(), "paths": result.paths == paths}}))
"""


def test_two_processes_share_one_cache(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(TESTS)))
    cache, go = tmp_path / "cache", tmp_path / "go"
    parts = {"a": FILES[:70], "b": FILES[30:]}
    children = {k: subprocess.Popen([sys.executable, str(script), str(cache), str(tmp_path / f"{k}.npy"),
                                     str(tmp_path / f"ready-{k}"), str(go), *paths], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for k, paths in parts.items()}
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{k}").exists() for k in parts) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both start embedding at once
    reports = {}
    for k, child in children.items():
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        reports[k] = json.loads(out.strip().splitlines()[-1])
    plain = run(FILES).embeddings
    embedded()
    assert np.array_equal(np.load(tmp_path / "a.npy"), plain[:70])
    assert np.array_equal(np.load(tmp_path / "b.npy"), plain[30:])
    assert all(r["paths"] for r in reports.values()) and 100 <= sum(r["embedded"] for r in reports.values()) <= 140
    rows = stored(cache)
    assert sorted(rows) == sorted(sha256(p) for p in FILES)
    assert np.array_equal(run(FILES, cache).embeddings, plain) and embedded() == 0


CREATOR = """
import os, sys
sys.path.insert(0, {tests!r})
from deep_speaker.encoders.embedding_cache import EmbeddingCache
from test_embedding_cache import Counting
encoder = Counting()
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    pass
for k in range({folders}):  # the processes create the same new caches in the same order, all at once
    EmbeddingCache(os.path.join(sys.argv[1], str(k)), encoder).close()
"""


def test_processes_creating_one_cache_at_once_all_open_it(tmp_path):
    # SQLite's busy timeout does not cover the switch of a new database to WAL: before the retry, about one
    # creation in thirty failed here with "database is locked".
    script = tmp_path / "creator.py"
    script.write_text(CREATOR.format(tests=str(TESTS), folders=100))
    go = tmp_path / "go"
    children = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "caches"), str(tmp_path / f"ready-{i}"),
                                  str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(3)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(3)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    for child in children:
        try:
            _, err = child.communicate(timeout=120)
        finally:
            child.kill()
        assert child.returncode == 0, err.strip().splitlines()[-1]


WRITER = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from deep_speaker.encoders.embedding_cache import EmbeddingCache, Miss
from test_embedding_cache import Counting
cache = EmbeddingCache(sys.argv[1], Counting())
rng = np.random.default_rng(int(sys.argv[2]))
for i in range(int(sys.argv[2]) * 10**6, 10**9):
    items = [Miss(None, f"/synthetic/{{i}}/{{k}}", (0, 0, 0, 0, 0), f"{{i:032x}}{{k:032x}}") for k in range({batch})]
    cache.complete(items, lambda inputs: rng.standard_normal((len(inputs), 64)).astype(np.float32))
    print(i, flush=True)
"""


def test_a_process_killed_while_writing_leaves_a_valid_cache(tmp_path):
    batch = 3000  # rows per transaction: most of the writer's time is inside one
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(TESTS), batch=batch))
    cache = tmp_path / "cache"
    rng = np.random.default_rng(0)
    committed = 0
    for round_ in range(1, 3):
        writer = subprocess.Popen([sys.executable, str(script), str(cache), str(round_)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        for _ in range(3):  # three transactions committed, then a kill at a random moment of the next ones
            assert writer.stdout.readline(), writer.stderr.read()
        time.sleep(rng.uniform(0, 0.05))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        writer.stdout.close()
        writer.stderr.close()
        assert writer.returncode == -signal.SIGKILL
        rows = stored(cache)  # integrity_check ok; every row's length and digest check out
        assert len(rows) % batch == 0 and len(rows) >= committed + 3 * batch  # whole transactions only
        committed = len(rows)
        with sqlite3.connect(database(cache)) as db:
            assert db.execute("SELECT count(*) FROM files").fetchone() == (committed,)
    # The killed writers' cache serves a real run as any other.
    plain = run(FILES[:8]).embeddings
    assert np.array_equal(run(FILES[:8], cache).embeddings, plain) and embedded() == 16
    assert np.array_equal(run(FILES[:8], cache).embeddings, plain) and embedded() == 0


def test_cli_option_on_embed_and_stats_and_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ec.EMBEDDING_CACHE_ENV, raising=False)
    folder, cache = str(HELD_OUT / "1688"), tmp_path / "cache"
    assert main(["embed", folder, "-o", str(tmp_path / "plain.npz"), "--encoder", TOY]) == 0
    assert embedded() == 10 and not cache.exists()
    for k in range(2):
        assert main(["embed", folder, "-o", str(tmp_path / f"e{k}.npz"), "--encoder", TOY,
                     "--embedding-cache", str(cache)]) == 0
        assert embedded() == (10 if k == 0 else 0)
    assert "10 file(s) found, 0 embedded" in capsys.readouterr().err
    assert main(["stats", folder, "-o", str(tmp_path / "stats.npz"), "--encoder", TOY,
                 "--embedding-cache", str(cache)]) == 0
    assert embedded() == 0  # stats shares embed's cache: same encoder, same files
    with np.load(tmp_path / "plain.npz") as plain, np.load(tmp_path / "e1.npz") as cached, \
            np.load(tmp_path / "stats.npz") as stats:
        assert np.array_equal(cached["embeddings"], plain["embeddings"])
        order = {p: i for i, p in enumerate(plain["paths"].tolist())}
        assert np.array_equal(stats["embeddings"], plain["embeddings"][[order[p] for p in stats["paths"].tolist()]])
    # DEEP_SPEAKER_EMBEDDING_CACHE is the default; '' turns it off.
    monkeypatch.setenv(ec.EMBEDDING_CACHE_ENV, str(tmp_path / "env"))
    assert main(["stats", folder, "-o", str(tmp_path / "s2.npz"), "--encoder", TOY]) == 0
    assert embedded() == 10 and len(list((tmp_path / "env").glob("*.sqlite"))) == 1
    assert main(["stats", folder, "-o", str(tmp_path / "s3.npz"), "--encoder", TOY]) == 0
    assert embedded() == 0
    assert main(["embed", folder, "-o", str(tmp_path / "e3.npz"), "--encoder", TOY, "--embedding-cache", ""]) == 0
    assert embedded() == 10
