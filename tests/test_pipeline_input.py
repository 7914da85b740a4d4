"""The fast random-crop pipeline gives today's RandomCropBatches' batches, bit for bit, for the same seed and step
(with and without SpecAugment masks), through the sampler, tf.data, the PyDataset and worker processes over shared
memory, on a cache of real speech."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from deep_speaker.data.cache import FeatureCache, build_cache
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.train import batching
from deep_speaker.train.pipeline import ProcessBatches, RandomCropSampler, SamplerBatches, tf_dataset

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "librispeech"
STEPS = [0, 1, 2, 17, 123456]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> FeatureCache:
    """3 test-other speakers x 4 utterances and 3 train-clean-100 speakers of one utterance (split in time)."""
    root = tmp_path_factory.mktemp("pipeline")
    for split, speakers, utts in (("test-other", 3, 4), ("train-clean-100", 3, 1)):
        for speaker in sorted((SAMPLES / split).iterdir())[:speakers]:
            for src in sorted(speaker.rglob("*.flac"))[:utts]:
                link = root / "audio" / src.relative_to(SAMPLES / split)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(src)
    build_cache(root / "audio", root / "cache", progress=False)
    return FeatureCache(root / "cache")


@pytest.fixture(scope="module")
def segments(cache):
    return batching.speaker_segments(cache, holdout=0.2, seed=0)[0]


def reference(cache, segments, crop, batch, seed, masks, first, count):
    """Today's batches: RandomCropBatches, a crop at a time."""
    batches = batching.RandomCropBatches(cache, segments, crop, batch, count, first_step=first, seed=seed,
                                         masks=masks)
    return [batches[i] for i in range(count)]


# 700 frames: longer than some utterances and the held-back tails, so zero-padded crops are compared too.
@pytest.mark.parametrize("crop,masks", [(160, None), (700, None), (160, (10, 8))])
def test_sampler_batches_equal_random_crop_batches(cache, segments, crop, masks):
    sampler = RandomCropSampler(cache, segments, crop, batch_size=24, seed=5, masks=masks)
    padded = 0
    for step in STEPS:
        (x_ref, y_ref), = reference(cache, segments, crop, 24, 5, masks, step, 1)
        x, y = sampler.batch(step)
        assert x.dtype == x_ref.dtype == np.float32 and x.shape == x_ref.shape == (24, crop, 64, 1)
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
        padded += int((x_ref[:, -1] == 0).all(axis=(1, 2)).sum())
    if masks is None:  # (a time mask may zero a crop's last frame too)
        assert (padded > 0) == (crop == 700)


def test_tf_data_and_pydataset_give_the_same_stream_from_any_step(cache, segments):
    sampler = RandomCropSampler(cache, segments, 160, batch_size=12, seed=3, masks=(10, 8))
    expected = reference(cache, segments, 160, 12, 3, (10, 8), 4, 6)
    # A resumed run starts at its saved step: the stream from step 4 is that of an uninterrupted run.
    streamed = list(tf_dataset(sampler, first_step=4, num_batches=6).as_numpy_iterator())
    py = SamplerBatches(sampler, 6, first_step=4)
    assert len(streamed) == len(py) == 6
    for (x_ref, y_ref), (x, y), (x_py, y_py) in zip(expected, streamed, (py[i] for i in range(6))):
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(x_py, x_ref)
        np.testing.assert_array_equal(y_py, y_ref)


def _shared_memory(names: list[str]) -> list[str]:
    """Those of the shared-memory segments ``names`` that still exist."""
    return [name for name in names if os.path.exists(f"/dev/shm/{name.lstrip('/')}")]


def test_worker_processes_give_the_same_stream_and_free_their_memory(cache, segments):
    sampler = RandomCropSampler(cache, segments, 160, batch_size=12, seed=3, masks=(10, 8))
    expected = reference(cache, segments, 160, 12, 3, (10, 8), 4, 9)
    # 2 workers x 2 slots: 9 batches go round every slot twice, so a refilled slot is checked too.
    batches = ProcessBatches(sampler, 9, first_step=4, workers=2, slots=2)
    stream = iter(batches)
    streamed = [next(stream)]
    names = [m.name for m in batches._memories]
    assert len(_shared_memory(names)) == 2  # one segment per worker
    streamed += list(stream)
    assert len(streamed) == len(batches) == 9
    for (x_ref, y_ref), (x, y) in zip(expected, streamed):
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
    assert not _shared_memory(names)
    assert not any(p.is_alive() for p in batches._processes)
    with pytest.raises(DeepSpeakerError, match="iterated once"):
        next(iter(batches))


def test_a_killed_input_worker_is_a_one_line_error_not_a_hang(cache, segments):
    sampler = RandomCropSampler(cache, segments, 160, batch_size=12, seed=3)
    batches = ProcessBatches(sampler, 50, workers=2, slots=1, timeout=60)
    stream = iter(batches)
    next(stream)
    names = [m.name for m in batches._memories]
    batches._processes[1].kill()
    started = time.monotonic()
    with pytest.raises(DeepSpeakerError, match=r"input worker 1 died \(exit code -9\) before batch"):
        list(stream)
    assert time.monotonic() - started < 30
    assert names and not _shared_memory(names)


def test_workers_of_a_killed_training_process_end_and_their_memory_is_freed(cache, segments, tmp_path):
    script = textwrap.dedent(f"""
        import time
        from deep_speaker.data.cache import FeatureCache
        from deep_speaker.train import batching
        from deep_speaker.train.pipeline import ProcessBatches, RandomCropSampler
        if __name__ == "__main__":
            cache = FeatureCache({str(cache.path)!r})
            sampler = RandomCropSampler(cache, batching.speaker_segments(cache, 0.2, 0)[0], 160, 12)
            batches = ProcessBatches(sampler, 10**6, workers=2)
            stream = iter(batches)
            next(stream)
            print("PIDS", *(p.pid for p in batches._processes), flush=True)
            print("MEMORY", *(m.name for m in batches._memories), flush=True)
            time.sleep(120)
    """)
    (tmp_path / "run.py").write_text(script)
    run = subprocess.Popen([sys.executable, str(tmp_path / "run.py")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        pids, names = (run.stdout.readline().split() for _ in range(2))
        assert pids[0] == "PIDS" and names[0] == "MEMORY", (pids, names)
        pids, names = [int(p) for p in pids[1:]], names[1:]
        assert len(pids) == 2 and len(_shared_memory(names)) == 2
    finally:
        run.kill()  # SIGKILL: no finally clause, no close() runs in the training process
        run.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (any(_alive(p) for p in pids) or _shared_memory(names)):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)
    assert not _shared_memory(names)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie has ended


def test_a_bounded_table_of_open_arrays_changes_nothing(cache, segments):
    small = RandomCropSampler(cache, segments, 160, batch_size=16, seed=1, open_arrays=2)
    (x_ref, _), = reference(cache, segments, 160, 16, 1, None, 9, 1)
    np.testing.assert_array_equal(small.batch(9)[0], x_ref)
    assert len(small.arrays) == 2


def test_bad_sampler_settings_are_one_line_errors(cache, segments):
    with pytest.raises(DeepSpeakerError, match="must be positive"):
        RandomCropSampler(cache, segments, 160, batch_size=0)
    with pytest.raises(DeepSpeakerError, match="at least one training segment"):
        RandomCropSampler(cache, {**segments, "nobody": []}, 160, batch_size=4)


def _weights(run: Path) -> list[np.ndarray]:
    import keras

    model = keras.saving.load_model(run / "softmax" / "last.keras", safe_mode=True)
    return [np.asarray(w) for w in model.get_weights()]


def test_training_on_tf_data_equals_training_on_today_s_batcher(cache, tmp_path):
    from deep_speaker.train import TrainConfig, train

    # Resuming needs nothing more: a batch is a function of its step (tested above from step 4), and the runs'
    # resume machinery is that of test_training.
    common = dict(cache_dir=cache.path, random_crops=True, spec_augment=True, width=0.0625, crop_frames=64,
                  batch_size=12, steps=1, save_every=1, learning_rate=3e-3, verbose=0)
    train(TrainConfig("softmax", tmp_path / "today", **common))
    train(TrainConfig("softmax", tmp_path / "tfdata", input_pipeline="tfdata", **common))
    # The batches are bitwise those of today (above); TensorFlow's threaded float32 reductions may still round a
    # weight differently by an ulp from one run to the next.
    for a, b in zip(_weights(tmp_path / "today"), _weights(tmp_path / "tfdata")):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    with pytest.raises(DeepSpeakerError, match="unknown input pipeline 'grain'"):
        TrainConfig("softmax", tmp_path / "x", input_pipeline="grain", **common)


@pytest.mark.slow
def test_worker_processes_feed_training_on_jax_as_today_s_batcher(cache, tmp_path):
    # The GPU hosts have JAX and no TensorFlow: the processes pipeline is the fast one there (tf.data is not). The
    # TensorFlow side needs no run of its own: the stream is the same (above) and Keras feeds it alike.
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax not installed")
    script = textwrap.dedent(f"""
        import numpy as np
        from deep_speaker.train import TrainConfig, train
        if __name__ == "__main__":  # the workers start from a fork server, which imports this module
            common = dict(cache_dir={str(cache.path)!r}, random_crops=True, width=0.0625, crop_frames=64,
                          batch_size=12, steps=2, save_every=2, verbose=0)
            for name, pipeline in (("today", "pydataset"), ("processes", "processes")):
                train(TrainConfig("softmax", {str(tmp_path)!r} + "/" + name, input_pipeline=pipeline,
                                  input_workers=2, **common))
    """)
    (tmp_path / "run.py").write_text(script)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, str(tmp_path / "run.py")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    # Two steps: the second batch comes from the second worker. XLA on CPU is deterministic for equal inputs.
    for a, b in zip(_weights(tmp_path / "today"), _weights(tmp_path / "processes")):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_the_fast_draws_are_the_generator_s_own_over_many_steps(cache, segments):
    # Speakers of one segment (no draw), short segments (no start drawn) and long ones, over 3,000 steps.
    for crop in (160, 700):
        sampler = RandomCropSampler(cache, segments, crop, batch_size=32, seed=11)
        for step in range(1500):
            fast, slow = sampler.plan(step), sampler.plan(step, fast=False)
            assert fast[1] == slow[1] and np.array_equal(fast[0], slow[0])


@pytest.mark.parametrize("first", [0, 1, 7])  # an odd count of earlier 32-bit draws leaves a half buffered
def test_bounded_draws_equal_rng_integers_with_rejections(first):
    from deep_speaker.train.pipeline import bounded_draws

    # Bounds near 2^32 reject up to half of the values: the rejection loop is exercised, as are 1 and 2.
    bounds = np.random.default_rng(0).choice([1, 2, 3, 161, 10**6, 3 * 2**30, 2**31 + 1, 2**32 - 1], size=400)
    ours, theirs = np.random.default_rng([4, first]), np.random.default_rng([4, first])
    ours.integers(0, 5, size=first), theirs.integers(0, 5, size=first)
    draw = bounded_draws(ours, 1000)
    assert [draw(int(b)) for b in bounds] == [int(theirs.integers(b)) for b in bounds]
