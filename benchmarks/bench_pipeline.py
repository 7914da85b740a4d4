"""Input pipeline speed: random-crop softmax batches of today's RandomCropBatches beside the pipeline
(deep_speaker.train.pipeline) on the same cache, per core, and what a 16-core GPU host would reach.

    python benchmarks/bench_pipeline.py [--cache CACHE_DIR | --audio AUDIO_DIR] [--batch-size 96] [--batches 40]

Without --cache, a cache of --audio (default librispeech-mini of ../shared/data, 351 utterances of 261
speakers, else the bundled samples/librispeech) is built in a temporary folder. Measured, one thread each
unless said: today's batcher (a crop at a time, each array opened per crop), the sampler (the same batches,
arrays opened once and the draws taken from one raw block: checked equal here first), tf.data over the sampler
(parallel map calls, AUTOTUNE, prefetch; all cores of this machine) and the sampler in worker processes (one
per core), its batches sent back through pipes (as Keras' PyDataset workers with use_multiprocessing do) or cut
into shared memory the workers reuse (ProcessBatches, --input_pipeline processes). Each
pipeline's batches are consumed as training consumes them: the newest --in-flight batches are kept (a queue of
10 by default, Keras' PyDataset max_queue_size), older ones dropped, so their memory is reused as in a training
loop; keeping every batch of a round instead makes each one fault in 4 MB of fresh pages (shown per batch with
--in-flight 0, which keeps them all). Rounds are interleaved, so load from other processes affects all alike;
the median round is reported. The crops are cut in Python (tf.numpy_function holds the GIL), so a host's cores
serve through processes, not threads: the 16-core figure is 15 ProcessBatches workers at the rate of one (which
has a core of its own here, the consumer the other), a core left to the training process. ProcessBatches'
rounds start their clock once each worker has cut as many batches as the sampler's warm-up (started before, as
the pipes' pool is).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from deep_speaker.data.cache import build_cache  # noqa: E402
from deep_speaker.data.sources import open_features  # noqa: E402
from deep_speaker.train import batching  # noqa: E402
from deep_speaker.train.pipeline import ProcessBatches, RandomCropSampler, tf_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LIBRI_MINI = REPO.parent / "shared" / "data" / "librispeech-mini"
AUDIO = LIBRI_MINI if LIBRI_MINI.is_dir() else REPO / "samples" / "librispeech"
HOST_CORES = 16
_SAMPLER: RandomCropSampler | None = None  # the worker processes' sampler (inherited by fork)


def _batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    return _SAMPLER.batch(step)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def rate(batches, batch_size: int, in_flight: int, faults: list[float], skip: int = 0) -> float:
    """samples/s of consuming the iterable ``batches()`` returns (started in the timing: tf.data and a pool begin
    work when their iterator is made, unless ``skip`` batches are taken before the clock starts) while keeping the
    newest ``in_flight`` batches (all if 0); the minor page faults per batch are appended to ``faults``."""
    kept = collections.deque(maxlen=in_flight or None)
    stream = iter(batches())
    for _ in range(skip):
        kept.append(next(stream))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    count = 0
    for batch in stream:
        kept.append(batch)
        count += 1
    seconds = time.perf_counter() - start
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / count)
    return count * batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="a built feature cache (default: librispeech-mini, built now)")
    parser.add_argument("--audio", type=Path, default=AUDIO, help=f"audio to build a cache of (default {AUDIO})")
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--crop-frames", type=int, default=160)
    parser.add_argument("--batches", type=int, default=100, help="batches per round and pipeline")
    parser.add_argument("--in-flight", type=int, default=10, help="batches kept alive while consuming (0: all)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.cache is None:
            build_cache(args.audio, Path(tmp) / "cache", workers=cores(), progress=False)
            args.cache = Path(tmp) / "cache"
        cache = open_features(args.cache)
        segments = batching.speaker_segments(cache)[0]
        b, n = args.batch_size, args.batches
        today = batching.RandomCropBatches(cache, segments, args.crop_frames, b, 10**9)
        sampler = RandomCropSampler(cache, segments, args.crop_frames, b)
        for step in (0, 1, 12345):  # the same batches, or the figures compare different work
            assert all(np.array_equal(u, v) for u, v in zip(today[step], sampler.batch(step)))
        print(f"cache {args.cache}: {len(cache)} utterances, {len(segments)} training speakers; batches of {b} "
              f"crops of {args.crop_frames} frames; {cores()} cores here")
        for step in range(len(cache)):  # steady state: every array opened once, as after the first pass
            sampler.batch(10**6 + step)
        global _SAMPLER
        _SAMPLER = sampler
        pool = multiprocessing.get_context("fork").Pool(cores())
        pool.map(_batch, range(cores()))  # started outside the timing
        names = ("today", "sampler", "tfdata", "pipes", "shared1", "shared")
        # ProcessBatches' workers start, and each cuts as many batches as the sampler did above (touching the
        # pages of the arrays it maps, as a training run's workers soon have), before the clock.
        warm = len(cache)
        base = warm * cores()  # the timed steps of round r: base + r * n ..., each pipeline the same
        figures: dict[str, list[float]] = {k: [] for k in names}
        faults: dict[str, list[float]] = {k: [] for k in names}
        # Built before the timing, as training builds its dataset once; its iterator starts in the timing.
        datasets = [tf_dataset(sampler, first_step=base + r * n, num_batches=n) for r in range(args.rounds)]
        for r in range(args.rounds):
            steps = range(base + r * n, base + (r + 1) * n)
            batches = {"today": lambda steps=steps: (today[step] for step in steps),
                       "sampler": lambda steps=steps: (sampler.batch(step) for step in steps),
                       "tfdata": datasets[r].as_numpy_iterator,
                       "pipes": lambda steps=steps: pool.imap(_batch, steps),
                       "shared1": lambda r=r: ProcessBatches(sampler, warm + n, base - warm + r * n, workers=1),
                       "shared": lambda r=r: ProcessBatches(sampler, base + n, r * n, workers=cores())}
            for name in names:
                skip = {"shared1": warm, "shared": warm * cores()}.get(name, 0)
                figures[name].append(rate(batches[name], b, args.in_flight, faults[name], skip=skip))
        pool.close()
        median = {k: statistics.median(v) for k, v in figures.items()}
        kept = f"the newest {args.in_flight} batches" if args.in_flight else "every batch"
        print(f"consumed keeping {kept}; minor page faults per batch in this process: "
              + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in faults.items()))
        base = median["today"]
        print(f"{'pipeline':<44} {'samples/s':>10} {'per core':>10} {'x today':>8}")
        rows = [("today: RandomCropBatches, 1 thread", median["today"], 1),
                ("sampler, 1 thread", median["sampler"], 1),
                (f"tf.data over the sampler, AUTOTUNE ({cores()} cores)", median["tfdata"], cores()),
                (f"{cores()} processes, batches over pipes", median["pipes"], cores()),
                ("1 process, shared memory (ProcessBatches)", median["shared1"], 1),
                (f"{cores()} processes, shared memory (ProcessBatches)", median["shared"], cores())]
        for name, value, used in rows:
            print(f"{name:<44} {value:>10.0f} {value / used:>10.0f} {value / used / base:>8.1f}")
        # One worker has a core of its own here (the consumer has the other): its rate is a worker's, and a
        # 16-core host runs 15 of them beside the training process, whose copy of each batch out of its slot
        # bounds them all.
        slot = sampler.batch(0)[0]
        copies = [time.perf_counter()]
        for _ in range(n):
            np.copyto(np.empty_like(slot), slot)  # as np.array(view) does: a new array each time
            copies.append(time.perf_counter())
        ceiling = b / statistics.median(np.diff(copies))
        host = min(median["shared1"] * (HOST_CORES - 1), ceiling)
        print(f"the consumer's copy of a batch out of its slot alone: {ceiling:.0f} samples/s")
        print(f"16-core host ({HOST_CORES - 1} ProcessBatches workers at the 1-worker rate, a core left to training, "
              f"at most the consumer's copy rate): {host:.0f} samples/s, {host / base:.0f}x today's per-thread rate "
              f"(1 thread of the sampler x {HOST_CORES}: {median['sampler'] * HOST_CORES:.0f})")


if __name__ == "__main__":
    main()
