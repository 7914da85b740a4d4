"""Training phases on a small cache of real speech: loss, checkpoints, resume after SIGKILL, mirrored, bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from deep_speaker.data.cache import FeatureCache, build_cache
from deep_speaker.data.inputs import generate_training_inputs
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.model.checkpoints import (embedded_state, kept_checkpoints, latest_checkpoint, read_state,
                                           resume_state)
from deep_speaker.model.rescnn import load_model, to_embedding_model
from deep_speaker.train import TrainConfig, Trainer, batching, train

REPO = Path(__file__).resolve().parents[1]
WIDTH, CROP = 0.0625, 64  # tiny network, 0.64 s crops: CPU-sized runs
SMALL = dict(width=WIDTH, crop_frames=CROP, batch_size=24, verbose=0)


def link_speakers(libri_mini: Path, root: Path, split: str, speakers: int, utts: int) -> None:
    """Symlink the first `utts` files of the first `speakers` speakers of a split into a LibriSpeech tree."""
    for spk_dir in sorted((libri_mini / split).iterdir())[:speakers]:
        for src in sorted(spk_dir.rglob("*.flac"))[:utts]:
            link = root / split / src.relative_to(libri_mini / split)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)


@pytest.fixture(scope="module")
def data(libri_mini, tmp_path_factory) -> Path:
    """A cache of 4 test-other speakers (5 utterances) + 4 train-clean-100 speakers (1 each), with training inputs."""
    root = tmp_path_factory.mktemp("train")
    link_speakers(libri_mini, root / "audio", "test-other", 4, 5)
    link_speakers(libri_mini, root / "audio", "train-clean-100", 4, 1)
    build_cache(root / "audio", root / "cache", progress=False)
    generate_training_inputs(FeatureCache(root / "cache"), root / "cache" / "full_inputs.pkl", crop_frames=CROP)
    return root / "cache" / "full_inputs.pkl"


@pytest.fixture(scope="module")
def softmax_run(data, tmp_path_factory) -> tuple[Trainer, Path]:
    out = tmp_path_factory.mktemp("runs")
    trainer = Trainer(TrainConfig("softmax", out, data=data, steps=24, save_every=6, keep_every=12,
                                  learning_rate=3e-3, **SMALL))
    trainer.train()
    return trainer, out


def log_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv") as f:
        return list(csv.DictReader(f))


# ----- hard triplet selection -----


def test_hard_selection_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 8))
    speakers = rng.integers(0, 6, size=60)
    anchors = rng.choice(60, size=15, replace=False)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    neg = batching.hardest_negatives(emb[anchors], emb, candidate_speakers=speakers, anchor_speakers=speakers[anchors])
    pos = batching.hardest_positives(emb[anchors], emb, candidate_speakers=speakers, anchor_speakers=speakers[anchors],
                                     anchor_indices=anchors)
    for k, a in enumerate(anchors):
        best_neg, best_pos = None, None
        for j in range(60):
            cos = float(unit[a] @ unit[j])
            if speakers[j] != speakers[a] and (best_neg is None or cos > best_neg[0]):
                best_neg = (cos, j)
            if speakers[j] == speakers[a] and j != a and (best_pos is None or cos < best_pos[0]):
                best_pos = (cos, j)
        assert neg[k] == best_neg[1] and pos[k] == best_pos[1]


def test_replica_shards_are_each_anchor_positive_negative_thirds():
    a, p, n = np.arange(0, 8), np.arange(100, 108), np.arange(200, 208)
    order = batching.arrange_for_replicas(a, p, n, replicas=2)
    first, second = order[:12], order[12:]
    assert first.tolist() == [0, 1, 2, 3, 100, 101, 102, 103, 200, 201, 202, 203]
    assert second.tolist() == [4, 5, 6, 7, 104, 105, 106, 107, 204, 205, 206, 207]


def test_single_speaker_pool_has_no_negative():
    with pytest.raises(DeepSpeakerError, match="single speaker"):
        batching.hardest_negatives(np.ones((2, 3)), np.ones((4, 3)), candidate_speakers=np.zeros(4),
                                   anchor_speakers=np.zeros(2))


# ----- the three phases -----


def test_softmax_loss_goes_down_and_checkpoint_reloads_to_identical_embeddings(softmax_run, data):
    trainer, out = softmax_run
    rows = log_rows(out / "softmax")
    assert len(rows) == 4
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    state = read_state(out / "softmax")
    assert state["step"] == 24 and state["width"] == WIDTH and state["best_value"] is not None
    assert latest_checkpoint(out, "softmax") == out / "softmax" / "last.keras"
    x = np.load(Path(data).with_suffix(".npz"))["x_test"][:10]
    live = to_embedding_model(trainer.model).predict(x, verbose=0)
    reloaded = to_embedding_model(load_model(out / "softmax" / "last.keras")).predict(x, verbose=0)
    np.testing.assert_allclose(reloaded, live, atol=1e-6)


def test_kept_checkpoints_are_the_models_of_their_steps(softmax_run):
    _, out = softmax_run
    kept = kept_checkpoints(out, "softmax")
    assert [step for step, _ in kept] == [12, 24]  # --keep_every 12 of 24 steps saved every 6
    assert [p.name for _, p in kept] == ["step-000012.keras", "step-000024.keras"]
    rows = log_rows(out / "softmax")  # Keras' CSVLogger: one row per save, written apart from our checkpoints
    for (step, path), row in zip(kept, (rows[1], rows[3])):
        state = embedded_state(path)
        assert state["step"] == step
        assert state["last_logs"]["loss"] == pytest.approx(float(row["loss"]), rel=1e-6)
    last = load_model(out / "softmax" / "last.keras").get_weights()
    for a, b in zip(load_model(kept[-1][1]).get_weights(), last, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(load_model(kept[0][1]).get_weights(), last))


def test_triplet_starts_from_the_softmax_checkpoint_and_logs_eer(softmax_run, data):
    _, out = softmax_run
    result = train(TrainConfig("triplet", out, data=data, steps=6, save_every=3, refresh_every=2, pool_speakers=8,
                               **SMALL))
    state = read_state(out / "triplet")
    assert state["started_from"] == str(out / "softmax" / "best.keras")
    assert state["step"] == 6 and 0.0 <= result["val_eer"] <= 1.0
    assert 0.0 <= state["start_logs"]["val_eer"] <= 1.0  # the starting model was validated as a best candidate
    rows = log_rows(out / "triplet")
    assert {"loss", "val_loss", "val_eer"} <= set(rows[0])
    # Six SGD steps move the weights a little: they must still be the softmax model's, not a fresh init.
    start = load_model(out / "softmax" / "best.keras").get_layer("affine").get_weights()[0].ravel()
    after = load_model(out / "triplet" / "last.keras").get_layer("affine").get_weights()[0].ravel()
    assert np.corrcoef(start, after)[0, 1] > 0.95


def test_a_triplet_margin_is_the_runs_loss_and_a_resume_keeps_it(softmax_run, data, tmp_path):
    _, out = softmax_run
    common = dict(data=data, init_model=out / "softmax" / "best.keras", save_every=3, refresh_every=2,
                  pool_speakers=8, **SMALL)
    train(TrainConfig("triplet", tmp_path, steps=3, triplet_margin=0.3, **common))
    assert read_state(tmp_path / "triplet")["triplet_margin"] == 0.3
    saved = keras.saving.load_model(tmp_path / "triplet" / "last.keras", safe_mode=True)
    assert saved.loss.alpha == 0.3
    # The compiled loss is the margin's: max(cos(a, n) - cos(a, p) + 0.3, 0) on unit vectors, by hand.
    rng = np.random.default_rng(0)
    y = rng.standard_normal((9, 4)).astype(np.float32)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    a, p, n = y[:3], y[3:6], y[6:]
    by_hand = np.maximum((a * n).sum(1) - (a * p).sum(1) + 0.3, 0).mean()
    assert float(saved.loss(np.zeros(9), y)) == pytest.approx(by_hand, abs=1e-6)
    with pytest.raises(DeepSpeakerError, match=r"a run with --triplet_margin 0.3 is there; this run uses 0.1"):
        train(TrainConfig("triplet", tmp_path, steps=6, **common))
    assert read_state(tmp_path / "triplet")["step"] == 3
    with pytest.raises(DeepSpeakerError, match="--triplet_margin applies to the triplet phase, not softmax"):
        TrainConfig("softmax", tmp_path, data=data, triplet_margin=0.3)
    with pytest.raises(DeepSpeakerError, match=r"--triplet_margin must be in \[0, 2\]"):
        TrainConfig("triplet", tmp_path, data=data, triplet_margin=float("nan"))


def test_a_cosine_schedule_decays_the_rate_to_zero_and_a_resume_keeps_it(softmax_run, data, tmp_path):
    _, out = softmax_run
    common = dict(data=data, init_model=out / "softmax" / "best.keras", save_every=3, refresh_every=2,
                  pool_speakers=8, learning_rate=4e-3, **SMALL)
    train(TrainConfig("triplet", tmp_path, steps=6, lr_schedule="cosine", **common))
    state = read_state(tmp_path / "triplet")
    assert state["lr_schedule"] == "cosine" and state["plateau"] is None
    # lr(step) = 4e-3 * (1 + cos(pi * step / 6)) / 2, by hand: 0 after the 6 steps, 2e-3 half way; the checkpoint's
    # optimizer carries the schedule.
    assert state["learning_rate"] == pytest.approx(0.0, abs=1e-9)
    optimizer = keras.saving.load_model(tmp_path / "triplet" / "last.keras", safe_mode=True).optimizer
    optimizer.iterations.assign(3)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(2e-3, rel=1e-6)
    # The schedule is fixed by --steps: a resume may not stretch it.
    with pytest.raises(DeepSpeakerError, match="a cosine schedule over 6 steps is there; this run asks for 9"):
        train(TrainConfig("triplet", tmp_path, steps=9, lr_schedule="cosine", **common))

    with pytest.raises(DeepSpeakerError, match="a run with --lr_schedule cosine is there; this run uses plateau"):
        train(TrainConfig("triplet", tmp_path, steps=9, **common))
    with pytest.raises(DeepSpeakerError, match="unknown learning-rate schedule 'linear'"):
        TrainConfig("triplet", tmp_path, data=data, lr_schedule="linear")


def test_probe_reports_an_accuracy_through_the_cli(softmax_run, data, capsys):
    from deep_speaker.cli import main

    _, out = softmax_run
    rc = main(["train", "probe", "--data-filename", str(data), "--output-dir", str(out), "--width", str(WIDTH),
               "--crop-frames", str(CROP), "--steps", "30", "--save-every", "15", "--fit-verbose", "0"])
    assert rc == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if "accuracy on frozen embeddings" in ln]
    accuracy = float(line[0].split()[-1])
    assert 0.0 <= accuracy <= 1.0
    assert read_state(out / "probe")["started_from"].startswith(str(out))


# ----- resume after SIGKILL -----


@pytest.mark.slow
def test_killed_run_resumes_its_step_count_and_optimizer(data, tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, str(REPO / "train_cli.py"), "--loss_on_softmax", "--data_filename", str(data),
           "--output_dir", str(out), "--width", str(WIDTH), "--crop_frames", str(CROP), "--batch_size", "24",
           "--steps", "12", "--save_every", "2", "--fit_verbose", "0"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state_file = out / "softmax" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state_file.is_file() and json.loads(state_file.read_text())["step"] >= 4:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state_file.read_text())["step"]
    assert 4 <= killed_at < 12, "the run must be killed mid-way"
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    resumed_from = int(second.stderr.split("resuming at step ")[1].split()[0])  # a log line, on stderr
    assert killed_at <= resumed_from < 12  # continued from the last save, not from 0
    assert read_state(out / "softmax")["step"] == 12
    # The optimizer state came back too: its iteration counter totals the steps of both processes.
    model = keras.saving.load_model(out / "softmax" / "last.keras")
    assert int(model.optimizer.iterations) == 12
    epochs = [int(r["epoch"]) for r in log_rows(out / "softmax")]
    assert epochs[-1] == 5 and epochs[-(6 - resumed_from // 2)] == resumed_from // 2
    # And it ends where the same command run unbroken ends: same batches, same dropout masks (seed states
    # restored), same optimizer state.
    straight_cmd = [*cmd[:cmd.index("--output_dir") + 1], str(tmp_path / "straight"),
                    *cmd[cmd.index("--output_dir") + 2:]]
    straight = subprocess.run(straight_cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    for a, b in zip(weights_of(tmp_path / "straight" / "softmax" / "last.keras"),
                    weights_of(out / "softmax" / "last.keras"), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)  # measured: bitwise equal on this CPU


# ----- distribution -----


TWO_DEVICES = {
    # TensorFlow: two logical CPU devices for tf.distribute.MirroredStrategy.
    "tensorflow": ({"KERAS_BACKEND": "tensorflow"}, "import tensorflow as tf\n"
                       "cpu = tf.config.list_physical_devices('CPU')[0]\n"
                       "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"),
    # JAX: two host devices for keras.distribution.DataParallel.
    "jax": ({"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
            ""),
}


@pytest.mark.parametrize("backend", sorted(TWO_DEVICES))
def test_mirrored_strategy_on_two_cpu_devices(backend, data, tmp_path):
    if backend != "tensorflow" and importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} not installed")
    env_extra, setup = TWO_DEVICES[backend]
    script = setup + textwrap.dedent(f"""
        import keras
        from deep_speaker.train import TrainConfig, Trainer
        trainer = Trainer(TrainConfig("triplet", {str(tmp_path)!r}, data={str(data)!r}, steps=4, save_every=2,
                                      refresh_every=2, pool_speakers=8, strategy="mirrored", width={WIDTH},
                                      crop_frames={CROP}, batch_size=24, verbose=0))
        result = trainer.train()
        print("BACKEND", keras.backend.backend(), "DEVICES", trainer.devices, "STEP", result["step"],
              "LOSS", result["loss"])
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env_extra}
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    words = run.stdout.split("BACKEND")[1].split()
    assert words[0] == backend and words[2] == "2" and words[4] == "4" and np.isfinite(float(words[6]))
    assert load_model(tmp_path / "triplet" / "last.keras").get_layer("conv64-s").filters == round(64 * WIDTH)


def test_multiworker_needs_a_coordinator_and_jax(data, tmp_path):
    # The original's command line with --strategy multiworker: one line, exit 2, nothing trained, whether the
    # coordinator is missing or the backend is TensorFlow (Keras 3's fit fails under MultiWorkerMirroredStrategy,
    # keras-team/keras#20585, so multi-worker training runs on JAX).
    base = [sys.executable, str(REPO / "train_cli.py"), "--loss_on_softmax", "--data_filename", str(data),
            "--output_dir", str(tmp_path), "--strategy", "multiworker"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    for extra, expected in (([], "--coordinator HOST:PORT"), (["--coordinator", "127.0.0.1:1"], "KERAS_BACKEND=jax")):
        run = subprocess.run(base + extra, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 2, run.stderr[-2000:]
        message = [line for line in run.stderr.splitlines() if "error:" in line]
        assert len(message) == 1 and expected in message[0], run.stderr[-2000:]
    assert not (tmp_path / "softmax").exists()


# ----- bad input: one-line errors before any training -----


def one_line_error(config: TrainConfig, match: str) -> None:
    state = config.run_dir / "state.json"
    before = state.read_text() if state.exists() else None
    with pytest.raises(DeepSpeakerError, match=match) as info:
        train(config)
    assert "\n" not in str(info.value)
    assert (state.read_text() if state.exists() else None) == before  # refused before any training step


def test_empty_and_one_speaker_caches(libri_mini, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeepSpeakerError, match="no audio files"):  # no audio at all is an error already
        build_cache(tmp_path / "empty", tmp_path / "empty_cache", progress=False)
    (tmp_path / "empty" / "loose.wav").write_bytes(b"")  # rejected (no speaker folder): a cache of 0 utterances
    build_cache(tmp_path / "empty", tmp_path / "empty_cache", progress=False)
    one_line_error(TrainConfig("triplet", tmp_path / "o1", cache_dir=tmp_path / "empty_cache", **SMALL), "at least 2")
    link_speakers(libri_mini, tmp_path / "one", "test-other", 1, 3)
    build_cache(tmp_path / "one", tmp_path / "one_cache", progress=False)
    one_line_error(TrainConfig("triplet", tmp_path / "o2", cache_dir=tmp_path / "one_cache", **SMALL), "at least 2")
    inputs = generate_training_inputs(FeatureCache(tmp_path / "one_cache"), tmp_path / "one.npz", crop_frames=CROP)
    one_line_error(TrainConfig("softmax", tmp_path / "o3", data=inputs, **SMALL), "at least 2 speakers")


def test_single_utterance_speaker_without_a_positive(data, tmp_path):
    # At 5000 frames per crop, a train-clean-100 speaker's single utterance cannot give two distinct crops.
    config = TrainConfig("triplet", tmp_path, cache_dir=Path(data).parent, **{**SMALL, "crop_frames": 5000})
    one_line_error(config, "single training utterance")


def test_checkpoint_of_another_width_or_architecture(softmax_run, data, tmp_path):
    _, out = softmax_run
    best = out / "softmax" / "best.keras"
    one_line_error(TrainConfig("triplet", tmp_path / "a", data=data, init_model=best, **{**SMALL, "width": 0.125}),
                   "width 0.0625")
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")])
    other.save(tmp_path / "other.keras")
    one_line_error(TrainConfig("triplet", tmp_path / "b", data=data, init_model=tmp_path / "other.keras", **SMALL),
                   "not a ResCNN")
    # Resuming a run directory of another width is refused too.
    one_line_error(TrainConfig("softmax", out, data=data, steps=80, **{**SMALL, "width": 0.125}), "width 0.0625")


def test_cache_and_inputs_of_other_feature_settings(data, tmp_path):
    cache_dir = Path(data).parent
    copy = tmp_path / "cache"
    copy.mkdir()
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["settings"]["nfft"] = 1024
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "features").symlink_to(cache_dir / "features")
    one_line_error(TrainConfig("triplet", tmp_path / "o1", cache_dir=copy, **SMALL), "other feature settings")
    with np.load(Path(data).with_suffix(".npz"), allow_pickle=False) as f:
        arrays = dict(f)
    settings = json.loads(str(arrays["settings"]))
    arrays["settings"] = np.array(json.dumps({**settings, "num_filters": 40}))
    np.savez(tmp_path / "inputs.npz", **arrays)
    one_line_error(TrainConfig("softmax", tmp_path / "o2", data=tmp_path / "inputs.npz", **SMALL),
                   "other feature settings")


def test_train_cli_needs_a_phase_flag():
    run = subprocess.run([sys.executable, str(REPO / "train_cli.py"), "--data_filename", "x.pkl"], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "--loss_on_softmax or --loss_on_embeddings" in run.stderr


def test_untrained_network_has_no_checkpoint_to_probe(data, tmp_path):
    one_line_error(TrainConfig("probe", tmp_path, data=data, **SMALL), "no triplet or softmax checkpoint")


def test_random_crop_batches_come_from_the_training_part_of_their_speaker(data):
    cache = FeatureCache(Path(data).parent)
    train_segments, held_out = batching.speaker_segments(cache, holdout=0.2, seed=0)
    x, y = batching.RandomCropBatches(cache, train_segments, CROP, batch_size=12, num_batches=1, seed=3)[0]
    assert x.shape == (12, CROP, 64, 1)
    for crop, label in zip(x[..., 0], y):
        speaker = sorted(train_segments)[label]
        windows = [np.lib.stride_tricks.sliding_window_view(cache.load(speaker, utt)[lo:hi], (CROP, 64))[:, 0]
                   for utt, lo, hi in train_segments[speaker]]
        assert any((w == crop).all(axis=(1, 2)).any() for w in windows)


# ----- configuration and the options derived from it -----


def train_cli_module():
    spec = importlib.util.spec_from_file_location("train_cli", REPO / "train_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parsed_config(argv: list[str]) -> TrainConfig:
    """The TrainConfig `deep-speaker train PHASE ...` would run."""
    from deep_speaker.cli import build_parser
    from deep_speaker.cli.train import config_from_args

    args = build_parser(["train"]).parse_args(argv)
    return config_from_args(args, args.phase)


@pytest.mark.parametrize("phase, steps, rate", [("softmax", 10000, 1e-3), ("triplet", 10000, 1e-2), ("probe", 2000, 1e-3)])
def test_phase_defaults_are_the_same_from_both_command_lines_and_python(phase, steps, rate):
    flags = {"softmax": ["--loss_on_softmax"], "triplet": ["--loss_on_embeddings", "--normalize_embeddings"],
             "probe": ["--loss_on_softmax", "--freeze_embedding_weights", "--normalize_embeddings"]}[phase]
    cli = train_cli_module()
    args = cli.build_parser().parse_args([*flags, "--data_filename", "cache/full_inputs.pkl"])
    from deep_speaker.cli.train import config_from_args  # what train_cli.py's run_phase makes of its arguments

    from_train_cli = config_from_args(args, cli.phase_of(args))
    from_deep_speaker = parsed_config(["train", phase, "--data-filename", "cache/full_inputs.pkl"])
    from_python = TrainConfig(phase, data=Path("cache/full_inputs.pkl"))
    assert from_train_cli == from_deep_speaker == from_python
    assert from_python.steps == steps and from_python.learning_rate == rate
    assert from_python.output_dir == Path("cache/checkpoints") and from_python.batch_size == 96
    assert from_python.verbose == 2 and not args.verbose  # --fit_verbose is not the CLI's --verbose


def test_every_option_takes_dashes_and_underscores():
    argv = ["--data_filename", "d.npz", "--cache_dir", "c", "--output_dir", "o", "--init_model", "i.keras",
            "--steps", "7", "--batch_size", "12", "--learning_rate", "0.5", "--width", "0.5", "--crop_frames", "40",
            "--seed", "3", "--save_every", "2", "--precision", "mixed_bfloat16", "--strategy", "mirrored",
            "--holdout", "0.3", "--random_crops", "--refresh_every", "5", "--pool_speakers", "9",
            "--fit_verbose", "0"]
    dashes = [a.replace("_", "-") if a.startswith("--") else a for a in argv]
    underscored = parsed_config(["train", "triplet", *argv])
    assert underscored == parsed_config(["train", "triplet", *dashes])
    assert underscored == TrainConfig("triplet", Path("o"), data=Path("d.npz"), cache_dir=Path("c"),
                                      init_model=Path("i.keras"), steps=7, batch_size=12, learning_rate=0.5,
                                      width=0.5, crop_frames=40, seed=3, save_every=2, precision="mixed_bfloat16",
                                      strategy="mirrored", holdout=0.3, random_crops=True, refresh_every=5,
                                      pool_speakers=9, verbose=0)


def test_train_help_shows_each_phase_default(capsys):
    from deep_speaker.cli import main

    with pytest.raises(SystemExit):
        main(["train", "probe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size N, --batch_size N" in text and "--steps N, --steps N" not in text
    assert "up to N); default: 2000" in text and "default: checkpoints/ beside the data" in text


def test_config_errors_are_one_line():
    with pytest.raises(DeepSpeakerError, match="unknown phase 'pretrain'; choose one of softmax, triplet, probe"):
        TrainConfig("pretrain")
    with pytest.raises(DeepSpeakerError, match="unknown strategy"):
        TrainConfig("softmax", strategy="tpu")
    with pytest.raises(DeepSpeakerError, match="must be positive"):
        TrainConfig("softmax", steps=0)
    with pytest.raises(DeepSpeakerError, match=r"--keep_every must be 0 or a multiple of --save_every \(100\), got 150"):
        TrainConfig("softmax", keep_every=150)


def test_state_logs_are_strict_json():
    from deep_speaker.atomic import json_text
    from deep_speaker.train.callbacks import finite_logs

    logs = finite_logs({"loss": np.float32(0.5), "val_eer": float("nan"), "lr": np.inf, "array": np.zeros(2)})
    assert logs == {"loss": 0.5, "val_eer": None, "lr": None}
    assert json.loads(json_text(logs)) == logs


# ----- training state that tells the truth -----


def weights_of(path: Path) -> list[np.ndarray]:
    return [np.asarray(w) for w in keras.saving.load_model(path, safe_mode=True).get_weights()]


def test_a_stale_state_copy_is_repaired_from_the_checkpoint(softmax_run, data, tmp_path):
    _, out = softmax_run
    run = tmp_path / "softmax"
    shutil.copytree(out / "softmax", run)
    state = read_state(run)
    assert embedded_state(run / "last.keras") == state  # the checkpoint carries its own state
    behind = {**state, "step": state["step"] - 6, "epoch": state["epoch"] - 1, "plateau": {"wait": 99}}
    (run / "state.json").write_text(json.dumps(behind))  # killed after last.keras, before state.json
    assert resume_state(run) == state and read_state(run) == state
    trainer = Trainer(TrainConfig("softmax", tmp_path, data=data, steps=state["step"] + 6, save_every=6,
                                  learning_rate=3e-3, **SMALL))
    trainer.train()
    assert read_state(run)["step"] == state["step"] + 6


def test_a_best_model_without_a_checkpoint_is_never_overwritten(softmax_run, data, tmp_path):
    _, out = softmax_run
    run = tmp_path / "softmax"
    run.mkdir()
    shutil.copy(out / "softmax" / "best.keras", run / "best.keras")  # what a disk full during a save leaves
    (run / ".last.x1y2.tmp.keras").write_bytes(b"half a model")
    before = (run / "best.keras").read_bytes()
    with pytest.raises(DeepSpeakerError, match="no last.keras to resume from") as info:
        Trainer(TrainConfig("softmax", tmp_path, data=data, steps=6, **SMALL)).train()
    assert "\n" not in str(info.value)
    assert (run / "best.keras").read_bytes() == before
    assert not (run / ".last.x1y2.tmp.keras").exists()  # a killed save's temporary is cleaned up


# ----- AAM-softmax and SpecAugment: options, determinism, resume -----


def test_aam_and_spec_augment_runs_resume_to_an_uninterrupted_run_and_feed_the_triplet_phase(data, tmp_path):
    from deep_speaker.model.layers import CosineHead

    common = dict(data=data, save_every=2, learning_rate=3e-3, random_crops=True, softmax_head="aam", margin=0.3,
                  scale=16.0, spec_augment=True, **SMALL)
    train(TrainConfig("softmax", tmp_path / "straight", steps=6, **common))
    train(TrainConfig("softmax", tmp_path / "resumed", steps=2, **common))
    train(TrainConfig("softmax", tmp_path / "resumed", steps=6, **common))
    for a, b in zip(weights_of(tmp_path / "straight" / "softmax" / "last.keras"),
                    weights_of(tmp_path / "resumed" / "softmax" / "last.keras")):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    state = read_state(tmp_path / "straight" / "softmax")
    assert state["softmax_head"] == "aam" and state["margin"] == 0.3 and state["spec_augment"] == [20, 8]
    assert isinstance(load_model(tmp_path / "straight" / "softmax" / "last.keras").get_layer("softmax-layer"),
                      CosineHead)
    # Resuming with the other head is refused; the triplet phase starts from the AAM model's embedding network.
    one_line_error(TrainConfig("softmax", tmp_path / "straight", steps=8, **{**common, "softmax_head": "softmax"}),
                   "aam head")
    train(TrainConfig("triplet", tmp_path / "straight", data=data, steps=2, save_every=2, refresh_every=2,
                      pool_speakers=8, spec_augment=True, **SMALL))
    assert read_state(tmp_path / "straight" / "triplet")["started_from"].endswith("softmax/best.keras")


def test_augmentation_options_are_off_by_default_and_parsed():
    default = parsed_config(["train", "softmax", "--data-filename", "d.npz"])
    assert (default.softmax_head, default.spec_augment) == ("softmax", False)
    parsed = parsed_config(["train", "softmax", "--data-filename", "d.npz", "--softmax-head", "aam", "--margin",
                            "0.3", "--scale", "20", "--spec_augment"])
    assert (parsed.softmax_head, parsed.margin, parsed.scale, parsed.spec_augment) == ("aam", 0.3, 20.0, True)
    with pytest.raises(DeepSpeakerError, match="margin"):
        TrainConfig("softmax", softmax_head="aam", margin=2.0)
