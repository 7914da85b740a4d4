"""Multi-worker training (deep-speaker train --strategy multiworker): 2 worker processes on 127.0.0.1, one of them
SIGKILLed mid-run and both restarted by the same command, against one process trained by plain Keras fit on the same
global batches; the triplet phase after it (a pool per worker), stopped and resumed, against one process fitting the
two workers' batches; the softmax recipe of the shipped model (AAM head, SpecAugment, random crops cut by worker
processes) against one process; a worker that cannot reach the others; and the options refused across workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest

from conftest import REPO
from deep_speaker.cli import main
from deep_speaker.data.cache import FeatureCache, build_cache
from deep_speaker.data.inputs import generate_training_inputs

WIDTH, CROP, BATCH, STEPS, SAVE_EVERY, SEED = 0.0625, 64, 24, 6, 2, 3
HEARTBEAT = 20  # --timeout: seconds to join, and the heartbeat after which the survivors of a kill give up
JAX_ENV = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
JAX_ENV.pop("XLA_FLAGS", None)  # one CPU device per worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_command(port: int, worker: int, out, data, workers: int = 2, timeout: float = HEARTBEAT,
                   phase: str = "softmax", **options) -> list[str]:
    args = {"steps": STEPS, "batch_size": BATCH, "save_every": SAVE_EVERY, "width": WIDTH, "crop_frames": CROP,
            "seed": SEED, **options}
    return [sys.executable, "-m", "deep_speaker", "train", phase, "--strategy", "multiworker", "--coordinator",
            f"127.0.0.1:{port}", "--workers", str(workers), "--worker", str(worker), "--worker-timeout", str(timeout),
            "--data_filename", str(data), "--output_dir", str(out), "--fit_verbose", "0",
            *[f"--{k}" if v is True else f"--{k}={v}" for k, v in args.items()]]  # True: a flag


def start_workers(port: int, out, data, **options) -> list[subprocess.Popen]:
    return [subprocess.Popen(worker_command(port, w, out, data, **options), cwd=REPO, env=JAX_ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in (0, 1)]


def finish_workers(workers: list[subprocess.Popen], steps: int, resumed_from: int) -> None:
    """Wait for the workers (killed on a timeout: nothing is left running); each must end at ``steps``, having
    started from ``resumed_from``."""
    try:
        outputs = [w.communicate(timeout=600) for w in workers]
    finally:
        for w in workers:  # on a timeout: stop what is left
            if w.poll() is None:
                w.kill()
                w.communicate()
    for index, (w, (stdout, stderr)) in enumerate(zip(workers, outputs)):
        assert w.returncode == 0, stdout + stderr[-3000:]
        assert f"worker {index}: step {steps} (from step {resumed_from})" in stdout


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("deep-speaker: error:")]


def saved_step(run_dir) -> int | None:
    """The step of the run's last checkpoint (state.json is written atomically after last.keras), else None."""
    try:
        return json.loads((run_dir / "state.json").read_text())["step"]
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def data(libri_mini, tmp_path_factory):
    """Training inputs of 4 test-other speakers (5 utterances each)."""
    root = tmp_path_factory.mktemp("mw")
    for spk_dir in sorted((libri_mini / "test-other").iterdir())[:4]:
        for src in sorted(spk_dir.rglob("*.flac"))[:5]:
            link = root / "audio" / src.relative_to(libri_mini)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
    build_cache(root / "audio", root / "cache", progress=False)
    generate_training_inputs(FeatureCache(root / "cache"), root / "cache" / "full_inputs.pkl", crop_frames=CROP)
    return root / "cache" / "full_inputs.pkl"


@pytest.mark.slow
def test_killed_and_resumed_workers_equal_one_process(data, tmp_path):
    port, out = free_port(), tmp_path / "mw"
    run_dir = out / "softmax"
    workers = start_workers(port, out, data)
    try:
        deadline = time.monotonic() + 600
        while saved_step(run_dir) is None and time.monotonic() < deadline and workers[1].poll() is None:
            time.sleep(0.02)
        assert saved_step(run_dir) is not None, workers[1].communicate()
        workers[1].send_signal(signal.SIGKILL)  # mid-run: right after the first checkpoint
        # The survivor stops by itself: its next all-reduce fails (else JAX's heartbeat times out).
        _, survivor_err = workers[0].communicate(timeout=HEARTBEAT + 120)
    finally:
        for w in workers:  # on a failed assertion: stop what is left
            if w.poll() is None:
                w.kill()
                w.communicate()
    killed_at = saved_step(run_dir)
    assert 0 < killed_at < STEPS and killed_at % SAVE_EVERY == 0
    # One line saying what happened and what to do, exit 1 (not JAX's abort after its heartbeat timeout).
    assert workers[0].returncode == 1, survivor_err[-3000:]
    errors = error_lines(survivor_err)
    assert len(errors) == 1 and "lost the other workers" in errors[0] and f"step {killed_at}:" in errors[0], \
        survivor_err[-3000:]
    # The same command on both workers resumes from the last checkpoint and finishes.
    finish_workers(start_workers(port, out, data), STEPS, killed_at)  # no saved step lost or redone
    assert saved_step(run_dir) == STEPS and not list(run_dir.glob(".*.tmp.keras"))
    # The reference: Keras' own fit in one process, no distribution, on the same seeded global batches, unbroken.
    ratio, noise = compare_with_one_process(run_dir, f"""
        from deep_speaker.data.inputs import load_training_inputs
        from deep_speaker.train.batching import SoftmaxBatches
        inputs = load_training_inputs({str(data)!r}, crop_frames={CROP})
        build = lambda: build_rescnn(width={WIDTH}, num_speakers=len(inputs["speakers"]))  # noqa: E731
        loss = "sparse_categorical_crossentropy"
        batches = SoftmaxBatches(inputs["x_train"], inputs["y_train"], {BATCH}, {STEPS}, seed={SEED})
    """, f"2 workers (killed at step {killed_at}, resumed)")
    # Tolerance: the two runs sum the same float32 gradients and batch statistics in another order (across
    # processes), ~1e-7 relative; Adam's first steps move each weight by ~lr x sign(gradient), so elements with
    # a near-zero gradient can flip, and later steps amplify it. The largest single element is at the mercy of
    # such flips (1.4 % of a tensor's change here, 16 % once in CI), so the test bounds the difference's norm
    # against the change's norm, tensor by tensor: measured 0.7 % to 3.5 % after 6 steps, killed at step 2
    # and resumed (3.5 %: the same as one process whose starting weights are perturbed by 1e-7 relative).
    # One lost step (5 steps against 6, same batches) gives 38 %, other batches 278 % (largest tensor ratios).
    assert ratio < 0.10
    assert noise <= 2 * 1e-3 * STEPS  # Adam moves a weight by about lr (1e-3) a step at most


@pytest.mark.slow
def test_aam_spec_augment_random_crops_on_workers_equal_one_process(data, tmp_path):
    """The shipped model's softmax recipe across 2 workers: the AAM head, SpecAugment masks and random crops (cut by
    an input worker process per training worker), against one process fitting RandomCropBatches, the reference."""
    port, out = free_port(), tmp_path / "mw"
    finish_workers(start_workers(port, out, data, softmax_head="aam", spec_augment=True, random_crops=True,
                                 input_pipeline="processes", input_workers=1), STEPS, 0)
    run_dir = out / "softmax"
    state = json.loads((run_dir / "state.json").read_text())
    assert state["softmax_head"] == "aam" and state["spec_augment"] == [20, 8] and state["random_crops"]
    assert state["workers"] == 2 and state["best_value"] is not None  # validated: best.keras picked as in one process
    with zipfile.ZipFile(run_dir / "last.keras") as saved:
        assert "CosineHead" in saved.read("config.json").decode()
    ratio, noise = compare_with_one_process(run_dir, f"""
        from deep_speaker.data.cache import FeatureCache
        from deep_speaker.model.losses import AAMSoftmaxLoss
        from deep_speaker.train.batching import RandomCropBatches, speaker_segments
        cache = FeatureCache({str(data.parent)!r})
        segments, _ = speaker_segments(cache, 0.2, {SEED})
        build = lambda: build_rescnn(width={WIDTH}, num_speakers=len(segments), head="aam")  # noqa: E731
        loss = AAMSoftmaxLoss(0.2, 32.0)
        batches = RandomCropBatches(cache, segments, {CROP}, {BATCH}, {STEPS}, seed={SEED}, masks=(20, 8))
    """, "AAM + SpecAugment + random crops on 2 workers", devices=2)
    # The reference runs on 2 devices of its one process, as the 2 workers do (one device each): random crops make
    # this recipe chaotic at the rounding level, so a 1-device reference cannot tell a fault from the order of the
    # sums. Measured (softmax head, random crops, no SpecAugment, one process): initial weights x (1 + 1e-7 N(0, 1))
    # move the weights after 6 steps by 114 % of the training's change (3.6 % on the fixed crops of the test above);
    # the 2 workers against 1 device: 113 %; against Keras' DataParallel over 2 devices of one process: 0.0 %. On
    # the workers' device layout the tolerance of the test above holds, for the same reasons.
    assert ratio < 0.10 and noise <= 2 * 1e-3 * STEPS


@pytest.mark.parametrize(("phase", "options", "refused"), [
    ("probe", [], "not the probe"),
    ("softmax", ["--random-crops", "--input-pipeline", "tfdata"], "--input_pipeline tfdata is not available"),
    ("softmax", ["--batch-size", "25"], "a multiple of --workers"),
    ("triplet", ["--batch-size", "8"], "a multiple of 3 rows"),
])
def test_options_not_run_across_workers_are_refused_in_one_line(data, tmp_path, capsys, phase, options, refused):
    """What --strategy multiworker does not run (config.MULTIWORKER_REFUSED): one line, exit 2, before any worker
    joins or writes (in process: the configuration refuses it)."""
    code = main(["train", phase, "--strategy", "multiworker", "--coordinator", "127.0.0.1:1", "--workers", "2",
                 "--worker", "0", "--data_filename", str(data), "--output_dir", str(tmp_path), *options])
    errors = error_lines(capsys.readouterr().err)
    assert code == 2 and len(errors) == 1 and refused in errors[0], errors
    assert not list(tmp_path.iterdir())  # refused before anything started


def compare_with_one_process(run_dir, reference: str, what: str, devices: int = 1) -> tuple[float, float]:
    """The largest difference between the weights of run_dir's last.keras and of one process fitting, with Adam
    from the seeded initial weights, `batches` under `loss` on the model `build()` makes (the reference code
    defines the three), relative to the training's change, tensor by tensor (norms); and the largest change of
    the conv biases whose true gradient is 0. devices > 1: the process fits on that many CPU devices under Keras'
    DataParallel (each global batch split across them, as across the workers: the sums in the workers' order)."""
    script = "import keras, numpy as np\nfrom deep_speaker.model.rescnn import build_rescnn\n" + textwrap.dedent(
        reference) + textwrap.dedent(f"""
        if {devices} > 1:
            assert len(keras.distribution.list_devices()) == {devices}
            keras.distribution.set_distribution(keras.distribution.DataParallel(
                devices=keras.distribution.list_devices()))
        keras.utils.set_random_seed({SEED})
        model = build()
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
        model.fit(batches, epochs=1, shuffle=False, verbose=0)
        keras.distribution.set_distribution(None)
        trained = keras.saving.load_model({str(run_dir / "last.keras")!r})
        keras.utils.set_random_seed({SEED})
        start = build()
        ratios, noise = [], []
        for ours, ref, init in zip(trained.weights, model.weights, start.weights):
            assert ours.path == ref.path
            a, b, c = (np.asarray(v, np.float64) for v in (ours, ref, init))
            # Conv biases feed batch normalisation, so their true gradient is 0 and what moves them is rounding
            # noise (which Adam scales up to ~lr a step); the moving means accumulate them.
            if ours.path.endswith(("/bias", "_bn/moving_mean")) and ours.path.startswith(("conv", "res")):
                noise.append(float(np.abs(a - b).max()))
            elif np.abs(b - c).max() > 0:
                ratios.append((float(np.linalg.norm(a - b) / np.linalg.norm(b - c)),
                               float(np.abs(a - b).max() / np.abs(b - c).max())))
        print("STEP", int(trained.optimizer.iterations.numpy()), "RATIO", max(r for r, _ in ratios),
              "ELEMENT", max(e for _, e in ratios), "NOISE", max(noise), "COMPARED", len(ratios))
    """)
    env = {**JAX_ENV, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"} if devices > 1 else JAX_ENV
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    words = run.stdout.split("STEP")[1].split()
    step, ratio, element, noise, compared = (int(words[0]), float(words[2]), float(words[4]), float(words[6]),
                                             int(words[8]))
    print(f"{what} vs 1 process after {step} steps: weight difference at "
          f"most {100 * ratio:.1f} % of the training's change (norms; largest element {100 * element:.1f} %) over "
          f"{compared} tensors; zero-gradient conv biases within {noise:.1e}")
    assert step == STEPS and compared > 40
    return ratio, noise


def test_unreachable_workers_fail_in_one_line_within_the_timeout(data, tmp_path):
    started = time.perf_counter()
    run = subprocess.run(worker_command(free_port(), 1, tmp_path, data, timeout=5), cwd=REPO, env=JAX_ENV,
                         capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    assert run.returncode == 2, run.stdout + run.stderr[-3000:]
    errors = error_lines(run.stderr)
    assert len(errors) == 1 and "did not all join at 127.0.0.1:" in errors[0] and "within 5 s" in errors[0], run.stderr
    assert elapsed < 60
    assert not (tmp_path / "softmax" / "last.keras").exists()


@pytest.mark.slow
def test_triplet_phase_per_worker_pools_equal_one_process(data, tmp_path):
    """Each worker mines from its own pool (refreshed every step, embedded by its local copy of the weights); the
    run stops at step 2 and the same command resumes it to step 4 (new pools, as a single-process resume). The
    reference: one process, no distribution, fitting on the two workers' blocks side by side."""
    port, out, cache = free_port(), tmp_path / "mw", data.parent
    options = {"phase": "triplet", "cache_dir": cache, "refresh_every": 1, "save_every": 2}
    for steps, resumed_from in ((2, 0), (4, 2)):
        finish_workers(start_workers(port, out, data, **{**options, "steps": steps}), steps, resumed_from)
    run_dir = out / "triplet"
    state = json.loads((run_dir / "state.json").read_text())
    assert state["step"] == 4 and state["workers"] == 2 and state["best_value"] is not None
    script = textwrap.dedent(f"""
        import keras, numpy as np
        from deep_speaker.data.cache import FeatureCache
        from deep_speaker.model.losses import ShardedTripletLoss
        from deep_speaker.model.rescnn import build_rescnn
        from deep_speaker.train import batching
        cache = FeatureCache({str(cache)!r})
        segments, _ = batching.triplet_segments(cache, crop_frames={CROP}, holdout=0.2, seed={SEED})
        keras.utils.set_random_seed({SEED})
        model = build_rescnn(width={WIDTH})
        start = [np.asarray(w) for w in model.weights]
        model.compile(optimizer=keras.optimizers.SGD(1e-2), loss=ShardedTripletLoss(2))
        embed = lambda x: model.predict(x, batch_size={BATCH}, verbose=0)  # noqa: E731

        class SideBySide(keras.utils.PyDataset):
            def __init__(self, parts):
                super().__init__()
                self.parts = parts
            def __len__(self):
                return len(self.parts[0])
            def __getitem__(self, i):
                x, y = zip(*(part[i] for part in self.parts))
                return np.concatenate(x), np.concatenate(y)

        class Refresh(keras.callbacks.Callback):
            def __init__(self, pools):
                super().__init__()
                self.pools = pools
            def on_train_batch_end(self, batch, logs=None):
                # Through self.model, which brings back the weights Keras' JAX fit holds apart during a step.
                for pool in self.pools:
                    pool.add_round(lambda x: self.model.predict(x, batch_size={BATCH}, verbose=0))

        for first, last in ((0, 2), (2, 4)):
            pools = [batching.TripletPool(cache, segments, {CROP}, 640, 2, 4, seed=[{SEED}, first, w]) for w in (0, 1)]
            for pool in pools:
                pool.fill(embed)
            parts = [batching.TripletBatches(pool, {BATCH // 2}, last - first, first_step=first, seed={SEED})
                     for pool in pools]
            model.fit(SideBySide(parts), epochs=1, shuffle=False, verbose=0, callbacks=[Refresh(pools)])
        trained = keras.saving.load_model({str(run_dir / "last.keras")!r})
        ratios = []
        for ours, ref, init in zip(trained.weights, model.weights, start):
            assert ours.path == ref.path
            a, b, c = (np.asarray(v, np.float64) for v in (ours, ref, init))
            if np.abs(b - c).max() > 1e-6 and not ours.path.endswith("/bias"):
                ratios.append(float(np.abs(a - b).max() / np.abs(b - c).max()))
        print("STEP", int(trained.optimizer.iterations.numpy()), "RATIO", max(ratios), "COMPARED", len(ratios))
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=JAX_ENV, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    words = run.stdout.split("STEP")[1].split()
    step, ratio, compared = int(words[0]), float(words[2]), int(words[4])
    print(f"triplet phase, 2 workers (stopped at step 2, resumed) vs 1 process after {step} steps: weight difference "
          f"at most {100 * ratio:.2f} % of the training's change over {compared} tensors")
    assert step == 4 and compared > 20
    assert ratio < 0.10  # as for the softmax phase; a wrong pool, block or loss changes the update by ~100 %
