"""GPU check: softmax training of the ResCNN on the JAX backend, with samples/s, utilisation and input-pipeline wait.

    KERAS_BACKEND=jax python benchmarks/gpu_check.py --steps 300        (benchmarks/gpu_check.sh sets it up)

The features of the bundled speech (samples/librispeech/train-clean-100) are cached first (not timed); then
the run trains on fresh random 160-frame crops of them as `deep-speaker train softmax --random_crops` does
(batching.RandomCropBatches), in mixed_bfloat16 at full width by default. Batches are cut by a pool of
threads, `--prefetch` ahead of the step that needs them. Per timed step (after `--warmup` compile steps):
wait = time blocked on the next batch, step = time in `train_on_batch` (which returns the loss, so the device
has finished). samples/s = batch x timed steps / (wait + step); the pipeline kept up when wait < 5 % of it.
Utilisation: nvidia-smi sampled every 200 ms during the timed steps, when it is on the PATH.
Training FLOP/s count 3x the forward FLOPs of the convolutions and the affine layer (rescnn.conv_flops).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from deep_speaker.atomic import write_json  # noqa: E402
from deep_speaker.data.cache import FeatureCache, build_cache  # noqa: E402
from deep_speaker.errors import DeepSpeakerError  # noqa: E402
from deep_speaker.model.rescnn import PRECISIONS, build_rescnn, conv_flops  # noqa: E402
from deep_speaker.train import batching  # noqa: E402

KEPT_UP = 0.05  # the input pipeline kept up when the steps waited for batches less than this share of the time
SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "librispeech" / "train-clean-100"


class GpuSampler:
    """nvidia-smi in the background (utilisation % and memory MiB of every GPU every 200 ms); inert without it."""

    def __init__(self) -> None:
        self.available = shutil.which("nvidia-smi") is not None
        self._process: subprocess.Popen | None = None
        self.lines: list[str] = []

    def start(self) -> None:
        if self.available:
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-lms", "200"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self.lines = self._process.communicate(timeout=10)[0].splitlines()
            self._process = None

    def summary(self) -> dict | None:
        """Mean and max utilisation (%) and max memory (MiB) over the samples of all GPUs; None without a GPU."""
        rows = [[float(v) for v in line.split(",")] for line in self.lines if line.count(",") == 1]
        if not rows:
            return None
        util, memory = np.array(rows).T
        return {"mean_util": float(util.mean()), "max_util": float(util.max()), "max_memory_mib": float(memory.max()),
                "samples": len(rows)}


def prefetched(dataset: keras.utils.PyDataset, workers: int, ahead: int):
    """The batches of a PyDataset in order, each cut by a thread pool up to `ahead` batches before it is asked for."""
    with ThreadPoolExecutor(workers) as pool:
        pending = deque(pool.submit(dataset.__getitem__, i) for i in range(min(ahead, len(dataset))))
        for index in range(len(dataset)):
            if index + len(pending) < len(dataset):
                pending.append(pool.submit(dataset.__getitem__, index + len(pending)))
            yield pending.popleft()


def train_timed(model: keras.Model, dataset, warmup: int, workers: int, ahead: int, sampler: GpuSampler) -> dict:
    """Train over every batch of `dataset`; per step after `warmup`, the seconds waiting for it and in the step."""
    waits, steps, losses = [], [], []
    batches = prefetched(dataset, workers, ahead)
    for index in range(len(dataset)):
        if index == warmup:
            sampler.start()
        start = time.perf_counter()
        x, y = next(batches).result()
        ready = time.perf_counter()
        loss = float(np.ravel(model.train_on_batch(x, y))[0])  # a Python float: the device has finished the step
        done = time.perf_counter()
        losses.append(loss)
        if index >= warmup:
            waits.append(ready - start)
            steps.append(done - ready)
    sampler.stop()
    return {"wait_s": float(np.sum(waits)), "step_s": float(np.sum(steps)), "median_step_s": statistics.median(steps),
            "first_loss": losses[0], "last_loss": losses[-1], "finite": bool(np.isfinite(losses).all())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (XLA compilation)")
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--frames", type=int, default=160)
    parser.add_argument("--precision", default="mixed_bfloat16", choices=PRECISIONS)
    parser.add_argument("--audio", type=Path, default=SAMPLES, help="speech folder (LibriSpeech layout)")
    parser.add_argument("--cache", type=Path, help="feature cache folder (kept; default: a temporary one)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="threads cutting batches")
    parser.add_argument("--prefetch", type=int, default=8, help="batches cut ahead of the step")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.workers < 1 or args.prefetch < 1:
        raise DeepSpeakerError("steps, batch, workers and prefetch must be positive and warmup not negative")

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        cache_dir = args.cache or Path(scratch) / "cache"
        started = time.perf_counter()
        if not (cache_dir / "manifest.json").is_file():
            build_cache(args.audio, cache_dir, workers=min(8, os.cpu_count() or 1), progress=False)
        cache = FeatureCache(cache_dir)
        segments, _ = batching.speaker_segments(cache, holdout=0.0)
        print(f"features: {len(cache)} utterances of {len(segments)} speakers ({cache.hours:.2f} h) in "
              f"{time.perf_counter() - started:.0f} s (not timed)", flush=True)
        import jax  # its runtime starts threads: only after the cache build's worker processes are forked

        devices = jax.devices()
        print(f"Keras {keras.__version__} on {keras.backend.backend()} (jax {jax.__version__}), devices: "
              f"{', '.join(f'{d.platform}:{d.device_kind}' for d in devices)}", flush=True)
        keras.utils.set_random_seed(0)
        model = build_rescnn(width=args.width, num_speakers=len(segments), precision=args.precision)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        dataset = batching.RandomCropBatches(cache, segments, args.frames, args.batch, args.warmup + args.steps)
        sampler = GpuSampler()
        timing = train_timed(model, dataset, args.warmup, args.workers, args.prefetch, sampler)
    total = timing["wait_s"] + timing["step_s"]
    forward = conv_flops(model, args.frames)
    figures = {
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices], "width": args.width, "batch": args.batch,
        "frames": args.frames, "precision": args.precision, "steps": args.steps, "warmup": args.warmup, **timing,
        "samples_per_s": args.batch * args.steps / total,
        "step_samples_per_s": args.batch * args.steps / timing["step_s"],
        "wait_share": timing["wait_s"] / total, "kept_up": timing["wait_s"] / total < KEPT_UP,
        "train_tflops": 3 * forward * args.batch * args.steps / total / 1e12, "gpu": sampler.summary(),
        # A GPU host of the common kind has no TensorFlow: the check must not need it.
        "frameworks": [m for m in ("tensorflow", "torch") if m in sys.modules],
    }
    gpu = figures["gpu"]
    print(f"ResCNN width {args.width:g} {args.precision}, batch {args.batch} x {args.frames}x64, {args.steps} timed "
          f"steps after {args.warmup}: loss {timing['first_loss']:.3f} -> {timing['last_loss']:.3f}")
    print(f"samples/s {figures['samples_per_s']:.1f} ({figures['step_samples_per_s']:.1f} counting steps only), "
          f"median step {1e3 * timing['median_step_s']:.1f} ms, training {figures['train_tflops']:.2f} TFLOP/s")
    print("accelerator: " + (f"utilisation mean {gpu['mean_util']:.0f} %, max {gpu['max_util']:.0f} %, memory "
                             f"{gpu['max_memory_mib']:.0f} MiB ({gpu['samples']} samples)" if gpu else "no GPU"))
    print(f"input pipeline: waited {timing['wait_s']:.2f} s of {total:.2f} s ({100 * figures['wait_share']:.1f} %): "
          + ("kept up" if figures["kept_up"] else "did NOT keep up (more --workers, or a faster disk)"))
    if args.json:
        write_json(args.json, figures)
    if not timing["finite"]:
        print("error: the loss was not finite", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DeepSpeakerError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        sys.exit(2)
