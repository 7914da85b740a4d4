"""Embedding speed: ``Embedder.embed_files`` (float32, mixed_bfloat16) vs the original's one ``predict`` per file.

    python benchmarks/bench_embed.py [AUDIO_DIR] [--model H5] [--repeats N] [--embedding-cache]
    (defaults: ../shared/data/librispeech-mini/test-other, 100 files; the width-1 reference checkpoint)

The original embeds a file with ``model.predict(features[None, ..., None])`` on its full features, one
call per file. Both paths start from the audio files and compute the same features (this package's
``extract_features``, so the ratio measures the embedding strategy, not the feature code). Each is
warmed up once (graph tracing excluded) and timed ``--repeats`` times in the same run; the median is
reported. Real-time factor = processing time / audio duration (lower is faster). Target: >= 3x.
The Embedder's default 50 % window overlap sends about twice the frames through the model that the
original does; the no-overlap rows show the speed-up at about equal work, and the ``--pooling utterance`` rows the
original's own strategy (each file whole, once) batched across files of equal padded length.

``--embedding-cache`` times the embedding cache instead: ``Embedder.embed_files`` of the files without it, filling
an empty cache, and again from the filled cache; then ``deep-speaker embed AUDIO_DIR`` as a new process each time
(start-up and model loading included), the same three ways. Cached rows must equal uncached ones exactly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from deep_speaker.data.features import extract_features  # noqa: E402
from deep_speaker.encoders.deepspeaker import DEFAULT_HOP_SECONDS, DEFAULT_WINDOW_SECONDS, Embedder  # noqa: E402
from deep_speaker.model.rescnn import load_model  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_AUDIO = DATA / "librispeech-mini" / "test-other"
DEFAULT_MODEL = DATA / "reference-checkpoint" / "ResCNN_random_triplet.h5"


def original_embed(model, paths: list[str]) -> np.ndarray:
    """The original's way: features of each file, then one ``model.predict`` call on all its frames."""
    return np.stack([model.predict(extract_features(p)[None, :, :, None], verbose=0)[0] for p in paths])


def timed(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_cache(paths: list[str], audio_dir: str, model_path: str, repeats: int) -> None:
    """Seconds of embed_files and of a ``deep-speaker embed`` process: uncached, cold cache, warm cache."""
    embedder = Embedder(load_model(model_path))
    embedder.embed_files(paths[:2])  # warm-up: graph tracing excluded
    with tempfile.TemporaryDirectory() as tmp:
        plain = embedder.embed_files(paths)
        uncached = timed(lambda: embedder.embed_files(paths), repeats)
        embedder.embedding_cache = Path(tmp) / "in-process"
        cold = timed(lambda: embedder.embed_files(paths), 1)
        cached = embedder.embed_files(paths)
        warm = timed(lambda: embedder.embed_files(paths), repeats)
        print(f"cached rows equal uncached ones exactly: {np.array_equal(cached, plain)}")
        cli = {}
        for name, cache in (("uncached", None), ("cold cache", "cli"), ("warm cache", "cli")):
            command = [sys.executable, "-m", "deep_speaker", "embed", audio_dir, "-o", str(Path(tmp) / f"{name}.npz"),
                       "--model", model_path] + ([] if cache is None else ["--embedding-cache", str(Path(tmp) / cache)])
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            cli[name] = time.perf_counter() - start
        with np.load(Path(tmp) / "uncached.npz") as a, np.load(Path(tmp) / "warm cache.npz") as b:
            print(f"'embed' output from the warm cache equals the uncached one: "
                  f"{np.array_equal(a['embeddings'], b['embeddings'])}")
    print(f"{'':<34} {'uncached':>9} {'cold cache':>11} {'warm cache':>11} {'speed-up':>9}")
    print(f"{'Embedder.embed_files (s)':<34} {uncached:9.2f} {cold:11.2f} {warm:11.3f} {uncached / warm:8.0f}x")
    print(f"{'deep-speaker embed process (s)':<34} {cli['uncached']:9.2f} {cli['cold cache']:11.2f} "
          f"{cli['warm cache']:11.2f} {cli['uncached'] / cli['warm cache']:8.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio_dir", nargs="?", default=str(DEFAULT_AUDIO))
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--hops", default=f"{DEFAULT_HOP_SECONDS:g},{DEFAULT_WINDOW_SECONDS:g}",
                        help="window hops to time, seconds (default: the Embedder's 50 %% overlap, and no overlap)")
    parser.add_argument("--embedding-cache", action="store_true",
                        help="time the embedding cache (a temporary folder) instead: uncached, cold and warm")
    args = parser.parse_args()

    paths = sorted(str(p) for p in Path(args.audio_dir).rglob("*.flac")) + sorted(
        str(p) for p in Path(args.audio_dir).rglob("*.wav"))
    audio_seconds = sum(sf.info(p).duration for p in paths)
    if args.embedding_cache:
        print(f"{len(paths)} files, {audio_seconds / 60:.1f} min of audio, model {args.model}, "
              f"{os.cpu_count()} CPU cores")
        return bench_cache(paths, args.audio_dir, args.model, args.repeats)
    model = load_model(args.model)
    print(f"{len(paths)} files, {audio_seconds / 60:.1f} min of audio, model {args.model}, "
          f"{os.cpu_count()} CPU cores")

    embedders = {f"Embedder {precision}, hop {hop:g} s": Embedder(model, hop_seconds=hop, precision=precision)
                 for hop in map(float, args.hops.split(",")) for precision in ("float32", "mixed_bfloat16")}
    embedders.update({f"Embedder {precision}, pooling utterance": Embedder(model, pooling="utterance",
                                                                           precision=precision)
                      for precision in ("float32", "mixed_bfloat16")})
    features = [extract_features(p) for p in paths]
    print(f"frames through the model: original {sum(len(f) for f in features)} (each file once, whole)")
    for name, e in embedders.items():
        frames = sum(w.shape[0] for f in features for w in e.model_inputs(f))
        shape = f"{e.window}-frame windows every {e.hop} frames" if e.pooling == "windows" else "whole, padded to 16"
        print(f"  {name}: {frames} ({shape})")

    original_embed(model, paths[:2])  # warm-up: the first predict traces the graph
    for embedder in embedders.values():
        embedder.embed_files(paths[:2])
    results = {"original (predict per file)": timed(lambda: original_embed(model, paths), args.repeats)}
    for name, embedder in embedders.items():
        results[name] = timed(lambda: embedder.embed_files(paths), args.repeats)

    base = results["original (predict per file)"]
    print(f"{'method':<40} {'seconds':>8} {'emb/s':>8} {'RTF':>8} {'speed-up':>9}")
    for name, seconds in results.items():
        print(f"{name:<40} {seconds:8.2f} {len(paths) / seconds:8.1f} {seconds / audio_seconds:8.4f} "
              f"{base / seconds:8.2f}x")
    for precision in ("float32", "mixed_bfloat16"):
        default = results[f"Embedder {precision}, hop {DEFAULT_HOP_SECONDS:g} s"]
        ratio = base / default
        print(f"default settings, {precision}: {ratio:.2f}x (target >= 3x: {'met' if ratio >= 3 else 'NOT met'})")


if __name__ == "__main__":
    main()
