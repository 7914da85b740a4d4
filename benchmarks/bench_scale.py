"""Scale: the sharded feature store at 10^3..10^5 utterances beside today's per-file cache, its 10^6-entry index,
and a Dask LocalCluster build beside one process.

    python benchmarks/bench_scale.py [--sizes 1000,10000,100000] [--files-max 10000] [--dask-size 10000]
                                     [--index-entries 1000000] [--workdir DIR] [--pipeline]

Synthetic corpora are cut from the bundled speech once (samples/librispeech: 1 s clips, written as FLAC), then
linked (hard links) into corpora of N utterances, 100 per speaker folder, so every size decodes the same audio.
Measured, one run each:

- build cost per utterance of a store (one process, shards of 1,000) at each size, and largest/smallest
  (goal <= 1.3); the per-file cache beside it up to --files-max utterances;
- a no-op update and opening the store at each size (goal <= 1 s at 10^5), the per-file cache's beside them:
  the first update after the build scans the corpus and records the scan, the next three (median) reuse it;
- resident memory after opening an index of --index-entries tiny synthetic entries (goal <= 300 MB), in a fresh
  process, with the random-access time of entry() and load();
- a store build on a Dask LocalCluster of 2 worker processes (127.0.0.1) against one process, and the ratio;
- with --pipeline, benchmarks/bench_pipeline.py (the input pipeline's figures) on the 10^4 store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from deep_speaker.data.audio import AudioError, read_audio
from deep_speaker.data.cache import FeatureCache, build_cache
from deep_speaker.data.corpus import RACY_NS, scan_corpus
from deep_speaker.data.store import FeatureStore, build_store, shard_name, write_shard

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "librispeech"
PER_SPEAKER = 100
CLIP_SECONDS = 1.0


def make_pool(folder: Path, clips: int = 3000) -> list[Path]:
    """Up to ``clips`` 1 s FLAC clips cut from the bundled speech, each keeping >= 0.5 s after the cache's trim."""
    if folder.is_dir():  # made by an earlier run (--workdir): the corpora's hard links share its files
        return sorted(folder.glob("clip*.flac"))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pool: list[Path] = []
    step = int(16000 * CLIP_SECONDS)
    for source in sorted(SAMPLES.rglob("*.flac")):
        signal = read_audio(source)
        for start in range(0, len(signal) - step + 1, step):
            path = tmp / f"clip{len(pool):05d}.flac"
            sf.write(path, signal[start:start + step], 16000)
            try:
                kept = len(read_audio(path))
            except AudioError:  # a silent second (a pause of the recording)
                kept = 0
            if kept < step // 2:  # mostly silence: the cache's trim would leave too little
                path.unlink()
                continue
            pool.append(folder / path.name)
            if len(pool) == clips:
                break
        if len(pool) == clips:
            break
    tmp.rename(folder)
    return pool


def make_corpus(folder: Path, pool: list[Path], n: int) -> Path:
    """``n`` utterances in speaker folders of PER_SPEAKER, each a hard link to a clip of the pool."""
    if folder.is_dir():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for k in range(n):
        speaker = tmp / f"spk{k // PER_SPEAKER:05d}"
        if k % PER_SPEAKER == 0:
            speaker.mkdir(parents=True)
        os.link(pool[k % len(pool)], speaker / f"utt{k:07d}.flac")
    tmp.rename(folder)
    return folder


def timed(func) -> tuple[float, object]:
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_index(folder: Path, entries: int, shard_size: int = 1000) -> Path:
    """A store of ``entries`` tiny entries (1 frame each, float16), ids and paths shaped like LibriSpeech's."""
    if (folder / "store.json").is_file():
        return folder
    settings = {"synthetic": True}
    shards = []
    frame = np.zeros((1, 64), np.float16)
    for first in range(0, entries, shard_size):
        items = []
        for k in range(first, min(entries, first + shard_size)):
            speaker = f"{k // 400:05d}"
            chapter = f"{k // 40 % 10:06d}"
            utt = f"{speaker}-{chapter}-{k % 40:04d}"
            items.append((frame, {"speaker": speaker, "utterance": utt, "seconds": 1.0, "size": 30000 + k,
                                  "mtime_ns": 1_700_000_000_000_000_000 + k,
                                  "source": f"/data/LibriSpeech/train-other-500/{speaker}/{chapter}/{utt}.flac"}))
        name = shard_name(1, [e for _, e in items], "float16")
        shards.append(write_shard(folder, name, items, dtype="float16", settings=settings))
    listing = {"format": "deep-speaker-feature-store", "format_version": 1, "settings": settings, "dtype": "float16",
               "generation": 1, "shards": shards, "failures": []}
    (folder / "store.json").write_text(json.dumps(listing))
    return folder


def measure_index(folder: str) -> None:
    """In a fresh process: resident memory before/after opening the store, open time, random access times."""
    import deep_speaker.data.store  # noqa: F401  (imports counted in the baseline)

    before = resident_mb()
    seconds, store = timed(lambda: FeatureStore(folder))
    after = resident_mb()
    keys = store.utterances()
    picks = [keys[i] for i in np.random.default_rng(0).integers(0, len(keys), 2000)]
    del keys
    entry_s, _ = timed(lambda: [store.entry(*k) for k in picks])
    load_s, _ = timed(lambda: [store.load(*k) for k in picks])
    print(json.dumps({"entries": len(store), "open_s": seconds, "rss_before_mb": before, "rss_after_mb": after,
                      "entry_us": entry_s / len(picks) * 1e6, "load_us": load_s / len(picks) * 1e6}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="corpus sizes (utterances), comma-separated")
    parser.add_argument("--files-max", type=int, default=10000, help="largest size also built as a per-file cache")
    parser.add_argument("--dask-size", type=int, default=10000, help="corpus size of the Dask vs 1-process build")
    parser.add_argument("--index-entries", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=None, help="keep corpora and stores here (default: temp)")
    parser.add_argument("--pipeline", action="store_true", help="also run bench_pipeline.py on the 10^4 store")
    parser.add_argument("--measure-index", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_index:
        measure_index(args.measure_index)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory()
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    pool = make_pool(work / "pool")
    print(f"pool: {len(pool)} clips of {CLIP_SECONDS:.0f} s from {SAMPLES.relative_to(REPO)}; shards of "
          f"{args.shard_size}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")

    index = synthetic_index(work / f"index-{args.index_entries}", args.index_entries)
    out = subprocess.run([sys.executable, __file__, "--measure-index", str(index)], capture_output=True, text=True,
                         check=True).stdout
    m = json.loads(out.strip().splitlines()[-1])
    print(f"index of {m['entries']:,} entries: opened in {m['open_s']:.2f} s; resident {m['rss_after_mb']:.0f} MB "
          f"after opening ({m['rss_after_mb'] - m['rss_before_mb']:.0f} MB for the index, "
          f"{m['rss_before_mb']:.0f} MB of Python + numpy + pyarrow before; goal <= 300 MB); "
          f"entry() {m['entry_us']:.1f} us, load() {m['load_us']:.1f} us at random")

    rows = []
    for n in sizes:
        corpus = make_corpus(work / f"corpus-{n}", pool, n)
        made = time.time()
        store = work / f"store-{n}"
        shutil.rmtree(store, ignore_errors=True)
        build_s, _ = timed(lambda: build_store(corpus, store, shard_size=args.shard_size, progress=False))
        # The first update scans the corpus in full and records the scan; the later ones reuse it (no folder
        # changed). Folders changed within RACY_NS of a scan are not trusted: a small corpus, made just before its
        # build, is left that long first, as a corpus that is updated would be.
        time.sleep(max(0.0, RACY_NS / 1e9 - (time.time() - made)))
        noops = [timed(lambda: build_store(corpus, store, update=True, progress=False)) for _ in range(4)]
        assert all(s.cached == 0 and s.skipped == n for _, s in noops), noops[-1][1].lines()[-1]
        full_noop_s = noops[0][0]
        noop_s = statistics.median(t for t, _ in noops[1:])  # of three: one is at the mercy of other processes
        open_s, opened = timed(lambda: FeatureCache(store))
        assert len(opened) == n
        scan_s, _ = timed(lambda: scan_corpus(corpus))  # the corpus walk alone, which every update does first
        row = {"n": n, "build_ms": build_s / n * 1e3, "noop_s": noop_s, "full_noop_s": full_noop_s, "scan_s": scan_s,
               "open_s": open_s}
        if n <= args.files_max:
            cache = work / f"cache-{n}"
            shutil.rmtree(cache, ignore_errors=True)
            files_s, _ = timed(lambda: build_cache(corpus, cache, progress=False))
            row["files_build_ms"] = files_s / n * 1e3
            row["files_noop_s"], _ = timed(lambda: build_cache(corpus, cache, update=True, progress=False))
            row["files_open_s"], _ = timed(lambda: FeatureCache(cache))
            shutil.rmtree(cache)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print("\n| utterances | store build ms/utt | per-file build ms/utt | store no-op update s (scan reused) | "
          "first no-op update s (full corpus scan, of which the scan) | per-file no-op update s | store open s | "
          "per-file open s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        def f(key: str, fmt: str) -> str:
            return format(r[key], fmt) if key in r else "-"
        print(f"| {r['n']:,} | {r['build_ms']:.2f} | {f('files_build_ms', '.2f')} | {r['noop_s']:.2f} | "
              f"{r['full_noop_s']:.2f} ({r['scan_s']:.2f}) | "
              f"{f('files_noop_s', '.2f')} | {r['open_s']:.3f} | {f('files_open_s', '.3f')} |")
    costs = [r["build_ms"] for r in rows]
    print(f"build cost per utterance, largest/smallest size: {costs[-1] / costs[0]:.2f} (goal <= 1.3)")

    if args.dask_size:
        from distributed import LocalCluster

        corpus = make_corpus(work / f"corpus-{args.dask_size}", pool, args.dask_size)
        one = next((r["build_ms"] * args.dask_size / 1e3 for r in rows if r["n"] == args.dask_size), None)
        if one is None:
            shutil.rmtree(work / "dask-one", ignore_errors=True)
            one, _ = timed(lambda: build_store(corpus, work / "dask-one", shard_size=args.shard_size, progress=False))
        with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                          host="127.0.0.1") as cluster:
            shutil.rmtree(work / "dask", ignore_errors=True)
            dask_s, _ = timed(lambda: build_store(corpus, work / "dask", shard_size=args.shard_size, progress=False,
                                                  scheduler=cluster.scheduler_address))
        print(f"store build of {args.dask_size:,} utterances: 1 process {one:.1f} s, Dask LocalCluster of 2 workers "
              f"{dask_s:.1f} s: {one / dask_s:.2f}x")

    if args.pipeline:  # task hook: the input pipeline's own benchmark, reading a store
        store = work / "store-10000"
        if not store.is_dir():
            build_store(make_corpus(work / "corpus-10000", pool, 10000), store, progress=False)
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_pipeline.py"), "--cache", str(store)],
                       check=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
