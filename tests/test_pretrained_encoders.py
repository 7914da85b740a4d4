"""The pretrained encoders of the field behind the Encoder interface.

resemblyzer: ``get_encoder("resemblyzer").embed_files`` against the package's own
``VoiceEncoder().embed_utterance(preprocess_wav(path))`` on all 100 bundled test-other files.
wespeaker: a tiny ONNX model written here in the published export's format (input ``feats`` [B, T, 80], output
``embs`` [B, d]; std pooling over time and a fixed random linear layer) loaded for real, its embeddings checked
against a plain numpy Kaldi fbank + CMN and the same graph in numpy. Missing packages and weights are one line.
The optional packages are installed in CI: a missing one fails these tests, it does not skip them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deep_speaker.data.audio import AudioError, read_audio, resample
from deep_speaker.encoders import get_encoder
from deep_speaker.errors import DeepSpeakerError

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = REPO / "samples" / "librispeech" / "test-other"
PATHS = sorted(HELD_OUT.rglob("*.flac"))
WESPEAKER_HINT = "pip install 'deep-speaker[wespeaker]'"
RESEMBLYZER_HINT = "pip install 'deep-speaker[resemblyzer]'"
DOWNLOAD = "hf download Wespeaker/wespeaker-voxceleb-resnet34 voxceleb_resnet34.onnx --local-dir"


def _import_or_fail(names: list[str]) -> list:
    """The modules, or a test failure naming what CI should have installed (never a skip)."""
    import importlib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # webrtcvad's pkg_resources deprecation
            return [importlib.import_module(n) for n in names]
    except ImportError as exc:
        pytest.fail(f"optional encoder package missing ({exc}); CI installs the resemblyzer and wespeaker extras")


@pytest.fixture(scope="module")
def resemblyzer_package():
    return _import_or_fail(["resemblyzer"])[0]


@pytest.fixture(scope="module")
def resemblyzer_encoder(resemblyzer_package):
    return get_encoder("resemblyzer")


@pytest.fixture(scope="module")
def onnx_packages():
    _import_or_fail(["onnxruntime", "kaldi_native_fbank"])
    return _import_or_fail(["onnx"])[0]


# --- resemblyzer ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resemblyzer_is_exactly_the_package_on_all_bundled_test_other_files(resemblyzer_package, resemblyzer_encoder):
    import torch

    assert len(PATHS) == 100
    ours = resemblyzer_encoder.embed_files(PATHS)
    package = resemblyzer_package.VoiceEncoder(verbose=False)
    # One thread, as the encoder runs it: torch's default OpenMP threads on a shared 2-core box took 25x longer.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = np.stack([package.embed_utterance(resemblyzer_package.preprocess_wav(p)) for p in PATHS])
    finally:
        torch.set_num_threads(threads)
    assert ours.shape == (100, 256) and ours.dtype == np.float32
    assert np.max(np.abs(ours - reference)) <= 1e-5
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)  # the package's rows are unit already


def test_resemblyzer_refuses_silence_and_too_little_speech(resemblyzer_package, resemblyzer_encoder, tmp_path):
    encoder = resemblyzer_encoder
    assert encoder.embedding_size == 256 and encoder.sample_rate == 16000
    assert len(encoder.identity) == 16 and encoder.identity == get_encoder("resemblyzer").identity
    speech = read_audio(PATHS[0], trim=False)
    with pytest.raises(AudioError, match=r"^signal 0: too little speech \(0\.\d\d s left"):
        encoder.embed_signals([speech[:3200]])  # 0.2 s: less than the 0.25 s minimum whatever the VAD keeps
    sf.write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    result = encoder.embed_files_with_failures([tmp_path / "silent.wav", PATHS[0]])
    assert result.paths == [str(PATHS[0])] and result.embeddings.shape == (1, 256)
    assert [f.path for f in result.failures] == [str(tmp_path / "silent.wav")]
    # A signal at another rate is resampled by the package's own preprocess_wav, as the package does it.
    at_8k = resample(speech[:3 * 16000], 16000, 8000)
    package = resemblyzer_package.VoiceEncoder(verbose=False)
    expected = package.embed_utterance(resemblyzer_package.preprocess_wav(at_8k, source_sr=8000))
    assert np.max(np.abs(encoder.embed_signal(at_8k, 8000) - expected)) <= 1e-5


@pytest.mark.parametrize("blocked", ["resemblyzer", "torch"])
def test_resemblyzer_without_its_package_is_one_line(monkeypatch, blocked):
    monkeypatch.setitem(sys.modules, blocked, None)  # makes `import` of it fail, as when it is not installed
    with pytest.raises(DeepSpeakerError) as info:
        get_encoder("resemblyzer")
    assert RESEMBLYZER_HINT in str(info.value) and "\n" not in str(info.value)


def test_resemblyzer_custom_weights_must_be_a_state_file(resemblyzer_package, tmp_path):
    with pytest.raises(DeepSpeakerError, match="no such Resemblyzer weights file"):
        get_encoder("resemblyzer", model=tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(DeepSpeakerError, match=r"bad\.pt: not a Resemblyzer weights file"):
        get_encoder("resemblyzer", model=tmp_path / "bad.pt")


# --- wespeaker -----------------------------------------------------------------------------------------------

def write_tiny_model(onnx, path: Path, seed: int = 0, dim: int = 16, input_name: str = "feats") -> tuple:
    """A WeSpeaker-format graph: embs = sqrt(mean_t feats^2) @ W + b (std pooling of the CMN features)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((80, dim)).astype(np.float32)
    bias = rng.standard_normal(dim).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Mul", [input_name, input_name], ["squares"]),
         helper.make_node("ReduceMean", ["squares"], ["mean_squares"], axes=[1], keepdims=0),
         helper.make_node("Sqrt", ["mean_squares"], ["std"]),
         helper.make_node("MatMul", ["std", "W"], ["projected"]),
         helper.make_node("Add", ["projected", "b"], ["embs"])],
        "tiny-wespeaker",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["B", "T", 80])],
        [helper.make_tensor_value_info("embs", TensorProto.FLOAT, ["B", dim])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return weight.astype(np.float64), bias.astype(np.float64)


def kaldi_fbank(signal: np.ndarray, bins: int = 80, rate: int = 16000) -> np.ndarray:
    """Kaldi's fbank by its definition, float64: 25 ms frames every 10 ms (snip edges), DC removed, pre-emphasis
    0.97, Hamming window, |FFT_512|^2, triangular mel filters (mel = 1127 ln(1 + f/700), 20 Hz to Nyquist, FFT
    bins below Nyquist), log floored at float32 eps; on int16-valued samples as WeSpeaker feeds it."""
    x = signal.astype(np.float64) * 32768
    length, shift, nfft = 400, 160, 512
    frames = np.lib.stride_tricks.sliding_window_view(x, length)[::shift][:1 + (x.size - length) // shift]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    frames = frames * (0.54 - 0.46 * np.cos(2 * np.pi * np.arange(length) / (length - 1)))
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2
    mel = lambda f: 1127 * np.log(1 + f / 700)  # noqa: E731
    edges = mel(20.0) + np.arange(bins + 2) * (mel(rate / 2) - mel(20.0)) / (bins + 1)
    fft_mel = mel(np.arange(nfft // 2) * rate / nfft)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    filters = np.clip(np.minimum((fft_mel - left) / (centre - left), (right - fft_mel) / (right - centre)), 0, None)
    return np.log(np.maximum(power[:, :nfft // 2] @ filters.T, np.finfo(np.float32).eps))


def test_wespeaker_tiny_model_matches_numpy_fbank_cmn_and_graph(onnx_packages, tmp_path):
    weight, bias = write_tiny_model(onnx_packages, tmp_path / "tiny.onnx")
    encoder = get_encoder("wespeaker", model=tmp_path / "tiny.onnx")
    assert encoder.embedding_size == 16 and encoder.sample_rate == 16000
    paths = PATHS[::3]  # 34 files, every speaker
    ours = encoder.embed_files(paths)
    expected, feature_error = [], 0.0
    for path in paths:
        feats = kaldi_fbank(read_audio(path, trim=False))
        feats -= feats.mean(axis=0)  # cepstral mean normalisation over the utterance
        feature_error = max(feature_error, float(np.max(np.abs(encoder.read(str(path)) - feats))))
        row = np.sqrt(np.mean(feats ** 2, axis=0)) @ weight + bias
        expected.append(row / np.linalg.norm(row))
    # float32 fbank against float64: log energies of ~10-20 agree to a few float32 ulps of the power sums.
    assert feature_error < 5e-3
    assert ours.shape == (len(paths), 16) and np.max(np.abs(ours - np.stack(expected))) < 1e-5


def test_wespeaker_weights_from_a_folder_or_the_default_cache(onnx_packages, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    default = tmp_path / "cache" / "deep-speaker" / "wespeaker" / "voxceleb_resnet34.onnx"
    with pytest.raises(DeepSpeakerError) as info:
        get_encoder("wespeaker")
    message = str(info.value)
    assert f"wespeaker weights not found at {default}" in message and "\n" not in message
    assert f"{DOWNLOAD} {default.parent}" in message
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(DeepSpeakerError, match=re.escape(f"{DOWNLOAD} {elsewhere} (it writes "
                                                         f"{elsewhere / 'voxceleb_resnet34.onnx'})")):
        get_encoder("wespeaker", model=elsewhere / "model.onnx")

    write_tiny_model(onnx_packages, default)
    from_cache = get_encoder("wespeaker")
    assert from_cache.path == default
    assert get_encoder("wespeaker", model=default.parent).identity == from_cache.identity
    assert get_encoder("wespeaker", model=default).identity == from_cache.identity
    signal = read_audio(PATHS[0], trim=False)
    np.testing.assert_array_equal(get_encoder("wespeaker", model=default.parent).embed_signal(signal),
                                  from_cache.embed_signal(signal))

    # Other weights or other settings: another identity.
    write_tiny_model(onnx_packages, tmp_path / "other" / "tiny.onnx", seed=1)
    assert get_encoder("wespeaker", model=tmp_path / "other").identity != from_cache.identity
    assert get_encoder("wespeaker", trim="percentile").identity != from_cache.identity
    write_tiny_model(onnx_packages, tmp_path / "other" / "second.onnx", seed=2)
    with pytest.raises(DeepSpeakerError, match=r"2 \.onnx files \(second\.onnx, tiny\.onnx\)"):
        get_encoder("wespeaker", model=tmp_path / "other")


def test_wespeaker_refuses_other_graphs_and_broken_files(onnx_packages, tmp_path):
    write_tiny_model(onnx_packages, tmp_path / "renamed.onnx", input_name="x")
    with pytest.raises(DeepSpeakerError, match=r"not a WeSpeaker export \(inputs \['x'\], outputs \['embs'\]"):
        get_encoder("wespeaker", model=tmp_path / "renamed.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"\x00not a protobuf")
    with pytest.raises(DeepSpeakerError, match=r"broken\.onnx: not a loadable ONNX model") as info:
        get_encoder("wespeaker", model=tmp_path / "broken.onnx")
    assert "\n" not in str(info.value)


def test_wespeaker_too_short_audio_is_an_audio_error_naming_it(onnx_packages, tmp_path):
    write_tiny_model(onnx_packages, tmp_path / "tiny.onnx")
    encoder = get_encoder("wespeaker", model=tmp_path / "tiny.onnx")
    with pytest.raises(AudioError, match=r"^signal 0: too short \(0\.10 s"):
        encoder.embed_signals([read_audio(PATHS[0], trim=False)[:1600]])
    with pytest.raises(AudioError, match=r"^signal 1: silent"):
        encoder.embed_signals([read_audio(PATHS[0], trim=False), np.zeros(16000, np.float32)])
    sf.write(tmp_path / "short.wav", np.full(800, 0.1, np.float32), 16000)
    result = encoder.embed_files_with_failures([tmp_path / "short.wav"])
    assert [f.path for f in result.failures] == [str(tmp_path / "short.wav")] and result.embeddings.shape == (0, 16)


@pytest.mark.parametrize("blocked", ["onnxruntime", "kaldi_native_fbank"])
def test_wespeaker_without_its_packages_is_one_line(monkeypatch, tmp_path, blocked):
    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(DeepSpeakerError) as info:
        get_encoder("wespeaker", model=tmp_path / "tiny.onnx")
    assert WESPEAKER_HINT in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("blocked, expected", [
    ({"torch", "resemblyzer", "webrtcvad", "onnxruntime", "onnx", "kaldi_native_fbank"},
     [f"{RESEMBLYZER_HINT} (No module named 'torch')", f"{WESPEAKER_HINT} (No module named 'kaldi_native_fbank')"]),
    ({"pkg_resources"}, ["pip install 'setuptools<81'"]),  # setuptools >= 81, which webrtcvad cannot import under
])
def test_encoder_modules_import_without_their_optional_packages(blocked, expected):
    """The registry checks options against the class signature, so the modules must import with none of their
    packages installed; building an encoder then says, in one line, what to install."""
    # A finder that refuses the names, as an interpreter without them does (sys.modules[name] = None would
    # also trip scipy's array-API probe of sys.modules["torch"]). A fresh process: these are imported here.
    code = ("import importlib.abc, sys\n"
            f"BLOCKED = {sorted(blocked)!r}\n"
            "class Absent(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.partition('.')[0] in BLOCKED:\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Absent())\n"
            "import deep_speaker.encoders.resemblyzer, deep_speaker.encoders.wespeaker\n"
            "from deep_speaker.encoders import get_encoder\n"
            "from deep_speaker.errors import DeepSpeakerError\n"
            f"for name in {['resemblyzer', 'wespeaker'][:len(expected)]!r}:\n"
            "    try:\n"
            "        get_encoder(name)\n"
            "    except DeepSpeakerError as e:\n"
            "        print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(expected) and all(e in line for e, line in zip(expected, lines)), lines
