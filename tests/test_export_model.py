"""Exported embedding models against Keras: the ONNX file in onnxruntime and the SavedModel in TensorFlow, on real
LibriSpeech test-other speech; their metadata; docs/EXPORT.md's recipe against the Embedder; atomic writes; the CLI."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf

from deep_speaker.cli import EXIT_OK, EXIT_USAGE, run_command
from deep_speaker.cli.export_model import register
from deep_speaker.data.audio import load_audio
from deep_speaker.data.features import FEATURE_SETTINGS
from deep_speaker.encoders.constants import POOLINGS
from deep_speaker.encoders.deepspeaker import PACKAGED_MODEL_DIR, Embedder, split_windows
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.model.export import METADATA_FILE, export_model, read_metadata

REPO = Path(__file__).resolve().parents[1]
PACKAGED = PACKAGED_MODEL_DIR / json.loads((PACKAGED_MODEL_DIR / "model_card.json").read_text())["model"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(PACKAGED)


@pytest.fixture(scope="module")
def files(libri_mini) -> list[Path]:
    """Five test-other files of five speakers."""
    by_speaker = {}
    for path in sorted((libri_mini / "test-other").rglob("*.flac")):
        by_speaker.setdefault(path.relative_to(libri_mini / "test-other").parts[0], path)
    return list(by_speaker.values())[:5]


@pytest.fixture(scope="module")
def inputs(embedder, files) -> list[np.ndarray]:
    """Model inputs [n, T, 64, 1] of real speech: whole utterances, their 1.6 s windows, and odd-length crops."""
    features = [embedder.prepare_signal(load_audio(p), 16000, str(p)) for p in files]
    whole = [f[None, :, :, None] for f in features]
    windows = [np.stack(split_windows(f, window=embedder.window, hop=embedder.hop,
                                      min_frames=embedder.min_frames))[..., None]
               for f in features[:2]]
    crops = [features[2][None, :37, :, None], np.stack([f[:161] for f in features])[..., None]]
    batches = whole + windows + crops
    assert len({b.shape[1] for b in batches}) >= 5  # the frames axis really varies
    return batches


@pytest.fixture(scope="module")
def exported(embedder, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export")
    return {fmt: export_model(PACKAGED, folder / name, format=fmt, front_end=embedder.settings)
            for fmt, name in (("onnx", "deep_speaker.onnx"), ("savedmodel", "deep_speaker_savedmodel"))}


def keras_embeddings(embedder: Embedder, x: np.ndarray) -> np.ndarray:
    return embedder.model.predict(x, verbose=0)


def test_onnx_in_onnxruntime_equals_keras_on_real_speech(embedder, inputs, exported):
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    for x in inputs:
        out = session.run(["embedding"], {"features": x})[0]
        assert out.shape == (x.shape[0], 512)
        assert np.abs(out - keras_embeddings(embedder, x)).max() <= TOLERANCE, x.shape


def test_savedmodel_in_tensorflow_equals_keras_on_real_speech(embedder, inputs, exported):
    loaded = tf.saved_model.load(str(exported["savedmodel"]))
    serve = loaded.signatures["serving_default"]
    for x in inputs:
        out = serve(features=tf.constant(x))["embedding"].numpy()
        assert out.shape == (x.shape[0], 512)
        assert np.abs(out - keras_embeddings(embedder, x)).max() <= TOLERANCE, x.shape


def test_metadata_states_the_front_end_and_the_model(embedder, exported):
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    onnx_meta = json.loads(session.get_modelmeta().custom_metadata_map["deep_speaker"])
    saved_meta = json.loads((exported["savedmodel"] / METADATA_FILE).read_text())
    assert read_metadata(exported["onnx"]) == onnx_meta and read_metadata(exported["savedmodel"]) == saved_meta
    card = json.loads((PACKAGED.parent / "model_card.json").read_text())
    for meta in (onnx_meta, saved_meta):
        assert meta["model_identity"] == embedder.identity == card["model_identity"]
        assert meta["front_end"] == embedder.settings
        assert {k: meta["front_end"][k] for k in FEATURE_SETTINGS} == FEATURE_SETTINGS
        if meta["front_end"].get("pooling", "windows") == "windows":
            assert (meta["front_end"]["window_frames"], meta["front_end"]["hop_frames"]) == (160, 80)  # 1.6, 0.8 s
        else:
            assert (meta["front_end"]["max_frames"], meta["front_end"]["multiple_frames"]) == (6000, 16)
        assert meta["input"]["shape"] == ["batch", "frames", 64, 1] and meta["output"]["shape"] == ["batch", 512]
    assert onnx_meta["exported_with"]["onnx_opset"] == 17
    # The names the metadata gives are the artefacts' own, dynamic axes included.
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape, inp.type) == ("features", ["batch", "frames", 64, 1], "tensor(float)")
    assert (out.name, out.shape) == ("embedding", ["batch", 512])
    serve = tf.saved_model.load(str(exported["savedmodel"])).signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["features"] and list(serve.structured_outputs) == ["embedding"]


def test_documented_onnx_recipe_gives_the_embedders_embeddings_without_tensorflow(embedder, files, exported,
                                                                                   tmp_path):
    # Both poolings: the packaged model's own (its card's) through `exported`, the other through a second export.
    other = Embedder(PACKAGED, pooling=next(p for p in POOLINGS if p != embedder.pooling))
    onnx_files = {embedder.pooling: exported["onnx"],
                  other.pooling: export_model(PACKAGED, tmp_path / "other.onnx", format="onnx", front_end=other.settings)}
    text = (REPO / "docs" / "EXPORT.md").read_text()
    recipe = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "onnxruntime" in b)
    for encoder in (embedder, other):
        results = []
        for path in files[:3]:
            code = recipe.replace('"deep_speaker.onnx"', repr(str(onnx_files[encoder.pooling])))
            code = code.replace('"speech.flac"', repr(str(path)))
            code += "\nimport sys; print(json.dumps({'embedding': embedding.tolist(), " \
                    "'frameworks': [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules]}))"
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
            assert run.returncode == 0, run.stderr
            results.append(json.loads(run.stdout.strip().splitlines()[-1]))
        assert all(r["frameworks"] == [] for r in results)  # the recipe needs no TensorFlow
        expected = encoder.embed_files(files[:3])
        assert np.abs(np.array([r["embedding"] for r in results]) - expected).max() <= TOLERANCE, encoder.pooling


EXPORT_SCRIPT = ("import sys\nfrom deep_speaker.encoders.deepspeaker import Embedder\n"
                 "from deep_speaker.model.export import export_model\n"
                 "e = Embedder(sys.argv[1])\n"
                 "export_model(e.model, sys.argv[2], format=sys.argv[3], front_end=e.settings)\n")


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file of an artefact (a file or a folder) and its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def kill_during_export(out: Path, fmt: str) -> None:
    """Start an export to ``out`` in another process and SIGKILL it as soon as its temporary appears."""
    def temporaries() -> set[str]:
        return {p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")}

    earlier = temporaries()  # those of an earlier killed export stay behind
    proc = subprocess.Popen([sys.executable, "-c", EXPORT_SCRIPT, str(PACKAGED), str(out), fmt], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not temporaries() - earlier:
            assert proc.poll() is None, "the export ended before it was killed"
            assert time.monotonic() < deadline, "no temporary appeared"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("fmt", ["onnx", "savedmodel"])
def test_a_killed_export_leaves_no_half_artefact_under_the_final_name(fmt, exported, tmp_path):
    out = tmp_path / exported[fmt].name
    kill_during_export(out, fmt)
    assert not out.exists()
    # Over a previous artefact: the old one stays whole.
    (shutil.copytree if fmt == "savedmodel" else shutil.copy)(exported[fmt], out)
    before = snapshot(out)
    kill_during_export(out, fmt)
    assert snapshot(out) == before


def test_cli_exports_over_a_previous_savedmodel_and_leaves_no_temporaries(exported, tmp_path, capsys):
    out = tmp_path / "model"
    shutil.copytree(exported["savedmodel"], out)
    (out / "stale.txt").write_text("from the previous export")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["export-model", "--model", str(PACKAGED), "--format", "savedmodel", "-o", str(out)])
    assert run_command(args.func, args) == EXIT_OK
    card = json.loads((PACKAGED.parent / "model_card.json").read_text())
    assert card["model_identity"] in capsys.readouterr().out
    assert not (out / "stale.txt").exists() and (out / "saved_model.pb").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary, no moved-aside old folder
    assert read_metadata(out) == read_metadata(exported["savedmodel"])


def test_cli_bad_model_path_is_one_line_error(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    missing = tmp_path / "no_such_model.keras"
    args = parser.parse_args(["export-model", "--model", str(missing), "--format", "onnx",
                              "-o", str(tmp_path / "m.onnx")])
    assert run_command(args.func, args) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "not found" in err
    assert [p.name for p in tmp_path.iterdir()] == []


def test_refusals_are_one_line_errors_and_touch_nothing(embedder, tmp_path):
    keep = tmp_path / "my_notes"
    keep.mkdir()
    (keep / "notes.txt").write_text("not a SavedModel")
    with pytest.raises(DeepSpeakerError, match="not a SavedModel folder; refusing"):
        export_model(embedder.model, keep, format="savedmodel", front_end=embedder.settings)
    assert (keep / "notes.txt").read_text() == "not a SavedModel"
    with pytest.raises(DeepSpeakerError, match="unknown export format 'tflite'"):
        export_model(embedder.model, tmp_path / "m.tflite", format="tflite", front_end=embedder.settings)
    with pytest.raises(DeepSpeakerError, match="nfft: 1024 vs 512"):
        export_model(embedder.model, tmp_path / "m.onnx", format="onnx", front_end={**embedder.settings, "nfft": 1024})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_notes"]
