"""WeSpeaker ONNX models (e.g. the published VoxCeleb ResNet34, 256-d) through onnxruntime, no torch.

The front end is WeSpeaker's own (``wespeaker/dataset/processor.py``, ``runtime/onnxruntime``): samples scaled to
int16 range (x 32768) at 16 kHz, 80-bin Kaldi fbank (25 ms Hamming windows every 10 ms, dither 0, pre-emphasis
0.97, DC removal, no energy) from ``kaldi-native-fbank``, then cepstral mean normalisation over the utterance.
The model takes ``feats`` ``[B, T, 80]`` and gives ``embs`` ``[B, d]`` (the names ``wespeaker/bin/export_onnx.py``
writes); each utterance is embedded whole, as WeSpeaker's Python runtime does, and its row L2-normalised, as
every encoder of this toolkit returns them (cosines are unchanged).

The weights are not in a package: ``model`` is an ``.onnx`` file or a folder holding one, by default
:func:`default_model_path` (``$XDG_CACHE_HOME`` or ``~/.cache``, then
``deep-speaker/wespeaker/voxceleb_resnet34.onnx``), filled once by the command :func:`download_command` gives.
Nothing is downloaded here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.audio import MIN_SPEECH_SECONDS, SAMPLE_RATE, SILENCE_PEAK, AudioError, apply_trim, check_trim, resample
from ..errors import DeepSpeakerError
from ..metrics import normalize_rows
from .base import DEFAULT_WORKERS, Encoder, Weights
from .options import WESPEAKER

NAME = "wespeaker"
INSTALL = "pip install 'deep-speaker[wespeaker]'"
HUB_REPO = "Wespeaker/wespeaker-voxceleb-resnet34"
MODEL_FILE = "voxceleb_resnet34.onnx"
INPUT_NAME, OUTPUT_NAME = "feats", "embs"  # wespeaker/bin/export_onnx.py
NUM_MEL_BINS = 80
INT16_SCALE = 32768.0  # WeSpeaker computes fbank on int16-valued samples (waveform * (1 << 15))
FEATURE_SETTINGS = {"features": "kaldi-fbank", "num_mel_bins": NUM_MEL_BINS, "frame_length_ms": 25.0,
                    "frame_shift_ms": 10.0, "window": "hamming", "dither": 0.0, "preemphasis": 0.97,
                    "remove_dc_offset": True, "sample_scale": INT16_SCALE, "cmn": True}


def default_model_dir() -> Path:
    """``$XDG_CACHE_HOME/deep-speaker/wespeaker`` (``~/.cache/...`` when the variable is unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deep-speaker" / "wespeaker"


def default_model_path() -> Path:
    """Where the published VoxCeleb ResNet34 is looked for when no ``model`` is given."""
    return default_model_dir() / MODEL_FILE


def download_command(folder: str | os.PathLike | None = None) -> str:
    """The one command that puts the published model into ``folder`` (default :func:`default_model_dir`)."""
    return f"hf download {HUB_REPO} {MODEL_FILE} --local-dir {folder or default_model_dir()}"


def _require() -> tuple[Any, Any]:
    """``(onnxruntime, kaldi_native_fbank)``, or a one-line DeepSpeakerError saying what to install."""
    try:
        import kaldi_native_fbank
        import onnxruntime
    except ImportError as exc:
        raise DeepSpeakerError(f"encoder {NAME!r} needs the wespeaker extra: {INSTALL} "
                               f"({str(exc).splitlines()[0]})") from None
    return onnxruntime, kaldi_native_fbank


def find_model(model: str | os.PathLike | None = None) -> Path:
    """The ``.onnx`` file: ``model`` itself, the one (or the published-name) ``.onnx`` in folder ``model``, or the
    default path; a one-line DeepSpeakerError with the download command when it is not there."""
    path = default_model_path() if model is None else Path(model)
    if path.is_dir():
        found = sorted(p for p in path.glob("*.onnx") if not p.name.startswith("."))
        named = [p for p in found if p.name == MODEL_FILE]
        if named or len(found) == 1:
            return (named or found)[0]
        if found:
            raise DeepSpeakerError(f"{path}: {len(found)} .onnx files ({', '.join(p.name for p in found)}); "
                                   f"pass one of them as the model")
        folder = path
    elif path.is_file():
        return path
    else:
        folder = path.parent if path.suffix == ".onnx" else path
    writes = "" if path in (folder, folder / MODEL_FILE) else f" (it writes {folder / MODEL_FILE})"
    raise DeepSpeakerError(f"wespeaker weights not found at {path}; download them once with: "
                           f"{download_command(folder)}{writes}")


def _dim(value: Any) -> int | None:
    """An ONNX dimension as an int, None when it is symbolic."""
    return value if isinstance(value, int) else None


class WeSpeakerEncoder(Encoder):
    """A WeSpeaker ONNX speaker model with WeSpeaker's fbank + CMN front end; rows L2-normalised."""

    name = NAME
    declaration = WESPEAKER
    sample_rate = SAMPLE_RATE

    def __init__(self, model: str | os.PathLike | None = None, trim: str = "none",
                 min_audio_seconds: float = MIN_SPEECH_SECONDS, threads: int | None = None,
                 workers: int | None = None):
        """``model``: an ``.onnx`` file or a folder holding one (default :func:`default_model_path`); ``trim``:
        ``none`` as WeSpeaker (or the toolkit's ``percentile``/``vad``); ``threads``: onnxruntime's intra-op
        threads (default: its own choice)."""
        ort, self._knf = _require()
        check_trim(trim)
        self.path = find_model(model)
        data = self.path.read_bytes()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(data, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for a corrupt or unsupported graph
            raise DeepSpeakerError(f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise DeepSpeakerError(f"{self.path}: not a WeSpeaker export (inputs {sorted(inputs)}, outputs "
                                   f"{sorted(outputs)}; need input {INPUT_NAME!r} [B, T, {NUM_MEL_BINS}] and "
                                   f"output {OUTPUT_NAME!r} [B, d])")
        feats, embs = inputs[INPUT_NAME], outputs[OUTPUT_NAME]
        if len(feats) != 3 or _dim(feats[2]) not in (None, NUM_MEL_BINS) or len(embs) != 2:
            raise DeepSpeakerError(f"{self.path}: {INPUT_NAME!r} has shape {feats} and {OUTPUT_NAME!r} {embs}; "
                                   f"need [B, T, {NUM_MEL_BINS}] and [B, d]")
        self.trim = trim
        self.min_audio_seconds = min_audio_seconds
        self.workers = workers or DEFAULT_WORKERS
        self._size = _dim(embs[1]) or int(self._run(np.zeros((200, NUM_MEL_BINS), np.float32)).shape[-1])
        self._identity = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode() + data).hexdigest()[:16]

    @property
    def settings(self) -> dict[str, Any]:
        """WeSpeaker's front end, the trim and the minimum speech."""
        return {**FEATURE_SETTINGS, "sample_rate": SAMPLE_RATE, "trim": self.trim,
                "min_audio_seconds": self.min_audio_seconds, "rows": "l2-normalised"}

    @property
    def weights(self) -> Weights:
        """The .onnx file loaded."""
        return Weights(self.identity, str(self.path))

    @property
    def identity(self) -> str:
        """sha256(settings, the .onnx file's bytes)[:16]."""
        return self._identity

    @property
    def embedding_size(self) -> int:
        return self._size

    def features(self, signal: np.ndarray) -> np.ndarray:
        """WeSpeaker's input ``[T, 80]`` of a 16 kHz signal in [-1, 1]: Kaldi fbank of ``32768 x``, CMN over time."""
        options = self._knf.FbankOptions()
        options.frame_opts.samp_freq = SAMPLE_RATE
        options.frame_opts.frame_length_ms = FEATURE_SETTINGS["frame_length_ms"]
        options.frame_opts.frame_shift_ms = FEATURE_SETTINGS["frame_shift_ms"]
        options.frame_opts.dither = FEATURE_SETTINGS["dither"]  # kaldi-native-fbank's default dithers
        options.frame_opts.window_type = FEATURE_SETTINGS["window"]
        options.frame_opts.preemph_coeff = FEATURE_SETTINGS["preemphasis"]
        options.frame_opts.remove_dc_offset = FEATURE_SETTINGS["remove_dc_offset"]
        options.mel_opts.num_bins = NUM_MEL_BINS
        options.use_energy = False
        fbank = self._knf.OnlineFbank(options)
        fbank.accept_waveform(SAMPLE_RATE, np.asarray(signal, np.float32) * np.float32(INT16_SCALE))
        fbank.input_finished()
        feats = np.array([fbank.get_frame(i) for i in range(fbank.num_frames_ready)], dtype=np.float32)
        return feats - feats.mean(axis=0, dtype=np.float64).astype(np.float32)

    def prepare_signal(self, signal: np.ndarray, sample_rate: int, where: str) -> np.ndarray:
        """Features ``[T, 80]`` (:meth:`features`) of the resampled, trimmed signal; an AudioError when too short."""
        x = np.asarray(signal, dtype=np.float32)
        if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
            raise AudioError(where, "not a non-empty, finite mono signal")
        if float(np.max(np.abs(x))) < SILENCE_PEAK:  # as read_audio refuses a silent file
            raise AudioError(where, f"silent (peak amplitude below {SILENCE_PEAK:g})")
        x = apply_trim(resample(x, sample_rate, SAMPLE_RATE), self.trim, SAMPLE_RATE)
        if x.size < self.min_audio_seconds * SAMPLE_RATE:
            raise AudioError(where, f"too short ({x.size / SAMPLE_RATE:.2f} s of audio after trim, "
                                    f"need {self.min_audio_seconds:g} s)")
        return self.features(x)

    def _run(self, feats: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: feats[None]})[0][0]

    def embed_prepared(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """``embs / ||embs||`` of each utterance, embedded whole (padding would change the model's time pooling)."""
        return normalize_rows(np.stack([self._run(f) for f in inputs])).astype(np.float32)
