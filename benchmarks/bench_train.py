"""Training and inference speed of the ResCNN on CPU: ours in float32 and mixed_bfloat16 beside the original formulation.

    python benchmarks/bench_train.py --width 1.0 --steps 5
    python benchmarks/bench_train.py --multiworker --width 0.25 --steps 30     (1 vs 2 local worker processes)

Batch 96 of 160x64 crops (the original's triplet batch). The original formulation is a float32 Keras
model built as the original builds it (Lambda clipped ReLUs, Lambda average and l2_normalize); it is
only timed, never saved. All models are timed in the same process, in interleaved rounds, so that load
from other processes on a shared machine affects them alike; the median step time is reported.
Training FLOPs are taken as 3x the forward FLOPs (forward, input gradients, weight gradients).

--multiworker instead times `deep-speaker train softmax --strategy multiworker` (JAX backend, float32) on the
crops of samples/librispeech: one worker process, then two on 127.0.0.1 sharing the same global batch of --batch; each
reports the global samples/s of its steps after the first (compilation). Both runs use all CPUs of this machine,
so the ratio shows the cost of the cross-process all-reduces and of two processes sharing them, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deep_speaker.model.losses import triplet_loss  # noqa: E402
from deep_speaker.model.rescnn import STAGE_FILTERS, build_rescnn, conv_flops, scaled_filters  # noqa: E402


def build_original(width: float) -> keras.Model:
    """The original DeepSpeakerModel (include_softmax=False) in Keras 3, Lambdas as the original has them."""
    relu_count = [0]

    def clipped_relu(x):
        relu_count[0] += 1
        return keras.layers.Lambda(lambda y: tf.minimum(tf.maximum(y, 0.0), 20.0), name=f"clipped_relu_{relu_count[0]}")(x)

    def conv(x, filters, kernel, strides, name):
        x = keras.layers.Conv2D(
            filters, kernel, strides=strides, padding="same",
            kernel_regularizer=keras.regularizers.L2(1e-4), name=name,
        )(x)
        return keras.layers.BatchNormalization(name=name + "_bn")(x)

    inputs = keras.Input(shape=(None, 64, 1), name="input")
    x = inputs
    for stage, base in enumerate(STAGE_FILTERS, start=1):
        filters = scaled_filters(base, width)
        x = clipped_relu(conv(x, filters, 5, 2, f"conv{base}-s"))
        for block in range(3):
            name = f"res{stage}_{block}_branch"
            y = clipped_relu(conv(x, filters, 3, 1, name + "_2a"))
            y = clipped_relu(conv(y, filters, 3, 1, name + "_2b"))
            x = clipped_relu(keras.layers.add([y, x]))
    x = keras.layers.Reshape((-1, 4 * filters), name="reshape")(x)
    x = keras.layers.Lambda(lambda y: tf.reduce_mean(y, axis=1), name="average")(x)
    x = keras.layers.Dense(512, name="affine")(x)
    x = keras.layers.Lambda(lambda y: tf.math.l2_normalize(y, axis=1), name="ln")(x)
    return keras.Model(inputs, x, name="ResCNN_original")


def matmul_gflops(dtype: tf.DType, n: int, repeats: int) -> float:
    """Best-of-repeats GFLOP/s of an n x n matmul (2 n^3 FLOPs) in dtype."""
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda x: tf.linalg.matmul(x, x))
    matmul(a).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def step_timers(model: keras.Model, x: np.ndarray, y: np.ndarray, jit_compile: bool) -> dict:
    """Callables running one training step and one inference batch, compiled and warmed up."""
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=triplet_loss, jit_compile=jit_compile)
    train = lambda: float(model.train_on_batch(x, y))  # noqa: E731  (float() waits for the step)
    infer = lambda: np.asarray(model.predict_on_batch(x))  # noqa: E731
    train()
    infer()
    return {"train": train, "infer": infer}


def median_time(fn, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


REPO = Path(__file__).resolve().parent.parent


def multiworker_rates(width: float, batch: int, frames: int, steps: int, counts=(1, 2)) -> dict[int, float]:
    """Global training samples/s of `deep-speaker train softmax --strategy multiworker`, per number of local
    worker processes."""
    from deep_speaker.data.cache import FeatureCache, build_cache
    from deep_speaker.data.inputs import generate_training_inputs

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    rates = {}
    with tempfile.TemporaryDirectory(prefix="bench_multiworker_") as scratch:
        cache = Path(scratch) / "cache"
        build_cache(REPO / "samples" / "librispeech", cache, progress=False)
        data = generate_training_inputs(FeatureCache(cache), Path(scratch) / "inputs.npz", crop_frames=frames)
        for count in counts:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            command = [sys.executable, "-m", "deep_speaker", "train", "softmax", "--strategy", "multiworker",
                       "--coordinator", f"127.0.0.1:{port}", "--workers", str(count), "--fit_verbose", "0",
                       "--data_filename", str(data), "--steps", str(steps + 1),
                       "--save_every", str(steps + 1), "--batch_size", str(batch), "--width", str(width),
                       "--crop_frames", str(frames), "--output_dir", str(Path(scratch) / f"run{count}")]
            workers = [subprocess.Popen([*command, "--worker", str(w)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for w in range(count)]
            outputs = [w.communicate(timeout=3600) for w in workers]
            for w, (out, err) in zip(workers, outputs):
                if w.returncode != 0:
                    raise SystemExit(f"bench_train: {count} worker(s) failed:\n{out}{err[-2000:]}")
            rates[count] = float(re.search(r"([0-9.]+) samples/s", outputs[0][0]).group(1))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model and mode (in rounds)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of --steps steps each")
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--frames", type=int, default=160)
    # 2048: on this CPU (oneDNN brgemm avx512_core_bf16, no AMX) a 4096 bfloat16 matmul measured only ~1.1x float32.
    parser.add_argument("--matmul", type=int, default=2048, help="size of the peak-rate matmul")
    parser.add_argument("--jit", action="store_true", help="XLA-compile our models (Keras leaves XLA off on CPU)")
    parser.add_argument("--multiworker", action="store_true",
                        help="time multi-worker training instead: 1 vs 2 local worker processes (JAX)")
    args = parser.parse_args()
    if args.multiworker:
        rates = multiworker_rates(args.width, args.batch, args.frames, args.steps * args.rounds)
        print(f"multi-worker softmax training (JAX CPU, float32), width {args.width:g}, global batch {args.batch} x "
              f"{args.frames}x64, {args.steps * args.rounds} timed steps, {os.cpu_count()} CPUs")
        print(f"1 worker: {rates[1]:.1f} samples/s; 2 workers on 127.0.0.1: {rates[2]:.1f} samples/s; "
              f"ratio {rates[2] / rates[1]:.2f}")
        return

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.frames, 64, 1)).astype(np.float32)
    y = np.zeros((args.batch, 1), np.float32)

    peak32 = matmul_gflops(tf.float32, args.matmul, 5)
    peak16 = matmul_gflops(tf.bfloat16, args.matmul, 5)

    models = {
        "original float32": build_original(args.width),
        "ours float32": build_rescnn(width=args.width),
        "ours mixed_bfloat16": build_rescnn(width=args.width, precision="mixed_bfloat16"),
    }
    forward = conv_flops(models["ours float32"], args.frames)
    # The original never used XLA; --jit applies to our models only.
    timers = {name: step_timers(model, x, y, args.jit and name.startswith("ours")) for name, model in models.items()}
    times = {(name, mode): [] for name in models for mode in ("train", "infer")}
    for _ in range(args.rounds):
        for mode in ("train", "infer"):
            for name in models:
                times[name, mode] += median_time(timers[name][mode], args.steps)

    print(
        f"ResCNN width {args.width:g}, batch {args.batch} x {args.frames}x64, {args.steps * args.rounds} timed steps, "
        f"{os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__}, "
        f"oneDNN {os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}, XLA for ours: {args.jit}"
    )
    print(f"forward {forward / 1e9:.2f} GFLOP per crop; matmul {args.matmul}: float32 {peak32:.0f} GFLOP/s, "
          f"bfloat16 {peak16:.0f} GFLOP/s ({peak16 / peak32:.2f}x)")
    header = f"{'model':<22}{'train/s':>9}{'ratio':>7}{'GFLOP/s':>9}{'%f32pk':>8}{'embed/s':>9}{'ratio':>7}{'GFLOP/s':>9}"
    print(header)
    print("-" * len(header))
    base = {mode: statistics.median(times["original float32", mode]) for mode in ("train", "infer")}
    for name in models:
        train = statistics.median(times[name, "train"])
        infer = statistics.median(times[name, "infer"])
        train_gflops = 3 * forward * args.batch / train / 1e9
        print(
            f"{name:<22}{args.batch / train:>9.1f}{base['train'] / train:>7.2f}{train_gflops:>9.0f}"
            f"{100 * train_gflops / peak32:>7.0f}%{args.batch / infer:>9.1f}{base['infer'] / infer:>7.2f}"
            f"{forward * args.batch / infer / 1e9:>9.0f}"
        )


if __name__ == "__main__":
    main()
