"""Resemblyzer (Resemble AI's GE2E 3-layer LSTM, 256-d) behind the Encoder interface: exactly the package's own
``VoiceEncoder().embed_utterance(preprocess_wav(path))``, with the partial utterances of many files batched.

The package's steps are its own functions: ``preprocess_wav`` (volume normalisation to -30 dBFS, webrtcvad
silence removal), ``compute_partial_slices`` (1.6 s partials at 1.3 per second, the last kept when it is 75 %
covered, the waveform zero-padded to the last one), ``wav_to_mel_spectrogram``; the embedding is the
L2-normalised mean of the partials' (unit) embeddings, unit length as the package returns it. The weights ship
inside the package's wheel, so nothing is downloaded. ``torch`` and ``resemblyzer`` are imported only when the
encoder is built (the ``resemblyzer`` extra).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib.metadata import version
from typing import Any, Sequence

import numpy as np

from ..data.audio import MIN_SPEECH_SECONDS, SILENCE_PEAK, AudioError
from ..errors import DeepSpeakerError
from .base import DEFAULT_WORKERS, Encoder, Weights
from .options import RESEMBLYZER

NAME = "resemblyzer"
INSTALL = "pip install 'deep-speaker[resemblyzer]'"
DEFAULT_RATE = 1.3  # partial utterances per second: embed_utterance's defaults
DEFAULT_MIN_COVERAGE = 0.75
DEFAULT_BATCH_SIZE = 128  # partials [160, 40] per forward pass; all have one shape, so files share batches
# torch threads for the LSTM: its per-step products are small, and OpenMP threads that must share cores spin;
# one thread embedded the 100 test-other files in 10 s, torch's default two on two busy cores in 49 s.
DEFAULT_THREADS = 1


def _require() -> tuple[Any, Any]:
    """``(torch, resemblyzer)``, or a one-line DeepSpeakerError saying what to install."""
    try:
        with warnings.catch_warnings():
            # webrtcvad imports the deprecated pkg_resources and resemblyzer scipy.ndimage.morphology: their noise.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            import torch
            import resemblyzer
            import resemblyzer.voice_encoder  # noqa: F401  (the class's static partial slicing)
    except ImportError as exc:
        reason = str(exc).splitlines()[0]
        if getattr(exc, "name", None) == "pkg_resources":
            reason = "webrtcvad imports pkg_resources, gone from setuptools >= 81: pip install 'setuptools<81'"
        raise DeepSpeakerError(f"encoder {NAME!r} needs the resemblyzer extra: {INSTALL} ({reason})") from None
    return torch, resemblyzer


class ResemblyzerEncoder(Encoder):
    """Resemblyzer's VoiceEncoder: 256-d unit embeddings, the package's preprocessing and partial averaging."""

    name = NAME
    declaration = RESEMBLYZER
    sample_rate = 16000  # resemblyzer.hparams.sampling_rate (checked when built)

    def __init__(self, model: str | os.PathLike | None = None, device: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, min_audio_seconds: float = MIN_SPEECH_SECONDS,
                 threads: int | None = DEFAULT_THREADS, workers: int | None = None):
        """``model``: a VoiceEncoder ``.pt`` state file (default: the one inside the package); ``device``: torch's
        (default: the package's choice, CUDA when available); ``threads``: torch's intra-op threads while this
        encoder runs (None: leave torch's setting)."""
        torch, resemblyzer = _require()
        if batch_size < 1:
            raise DeepSpeakerError(f"batch size must be at least 1, got {batch_size}")
        if model is not None and not os.path.isfile(model):
            raise DeepSpeakerError(f"{model}: no such Resemblyzer weights file (without a model: the packaged one)")
        self._torch, self._package = torch, resemblyzer
        if resemblyzer.sampling_rate != self.sample_rate:
            raise DeepSpeakerError(f"resemblyzer {version('resemblyzer')} works at {resemblyzer.sampling_rate} Hz, "
                                   f"not the {self.sample_rate} Hz this wrapper was written for")
        try:
            # torch >= 2.6 loads with weights_only=True by default: tensors only, no code runs on load.
            self.model = resemblyzer.VoiceEncoder(device=device, verbose=False, weights_fpath=model).eval()
        except Exception as exc:  # torch raises several types for a file that is not a state dict
            if model is None:
                raise
            raise DeepSpeakerError(f"{model}: not a Resemblyzer weights file ({str(exc).splitlines()[0]})") from None
        self.model_path = None if model is None else str(model)
        self.batch_size = batch_size
        self.threads = threads
        self.min_audio_seconds = min_audio_seconds
        self.workers = workers or DEFAULT_WORKERS
        self._identity: str | None = None

    @property
    def embedding_size(self) -> int:
        return int(self.model.linear.out_features)

    @property
    def settings(self) -> dict[str, Any]:
        """The package version (its preprocessing is its code) and embed_utterance's partial-utterance settings."""
        hp = self._package.hparams
        return {"package": f"resemblyzer {version('resemblyzer')}", "sample_rate": self.sample_rate,
                "partial_frames": hp.partials_n_frames, "mel_channels": hp.mel_n_channels,
                "partials_per_second": DEFAULT_RATE, "min_coverage": DEFAULT_MIN_COVERAGE,
                "min_audio_seconds": self.min_audio_seconds}

    @property
    def weights(self) -> Weights:
        """The weights file given, else the package's own."""
        package = None if self.model_path else f"resemblyzer {version('resemblyzer')}"
        return Weights(self.identity, self.model_path, package)

    @property
    def identity(self) -> str:
        """sha256(settings, every weight tensor by name)[:16]."""
        if self._identity is None:
            digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode())
            for key, value in self.model.state_dict().items():
                array = np.ascontiguousarray(value.detach().cpu().numpy())
                digest.update(f"{key}{array.shape}{array.dtype}".encode())
                digest.update(array.tobytes())
            self._identity = digest.hexdigest()[:16]
        return self._identity

    def prepare_signal(self, signal: np.ndarray, sample_rate: int, where: str) -> np.ndarray:
        """The mel partials ``[n, 160, 40]`` embed_utterance feeds its LSTM for ``preprocess_wav(signal)``;
        an AudioError when the signal is silent or too little speech is left after the voice-activity trim."""
        x = np.asarray(signal, dtype=np.float32)
        if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
            raise AudioError(where, "not a non-empty, finite mono signal")
        if float(np.max(np.abs(x))) < SILENCE_PEAK:  # the package's volume normalisation would divide by zero
            raise AudioError(where, f"silent (peak amplitude below {SILENCE_PEAK:g})")
        audio = self._package.audio
        wav = audio.preprocess_wav(x, source_sr=sample_rate)  # resamples only when the rate differs
        if wav.size < self.min_audio_seconds * self.sample_rate:
            raise AudioError(where, f"too little speech ({wav.size / self.sample_rate:.2f} s left after resemblyzer's "
                                    f"voice-activity trim, need {self.min_audio_seconds:g} s)")
        wav_slices, mel_slices = self._package.VoiceEncoder.compute_partial_slices(
            wav.size, DEFAULT_RATE, DEFAULT_MIN_COVERAGE)
        if wav_slices[-1].stop >= wav.size:
            wav = np.pad(wav, (0, wav_slices[-1].stop - wav.size))
        mel = audio.wav_to_mel_spectrogram(wav)
        return np.stack([mel[s] for s in mel_slices])

    def embed_prepared(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Per utterance ``mean(partial embeddings) / ||.||``, the partials of all utterances in shared batches."""
        torch = self._torch
        partials = np.concatenate(inputs)
        out, previous = [], torch.get_num_threads()
        try:
            if self.threads:
                torch.set_num_threads(self.threads)  # for this call only: torch's setting is process-wide
            with torch.no_grad():
                for i in range(0, len(partials), self.batch_size):
                    batch = torch.from_numpy(np.ascontiguousarray(partials[i:i + self.batch_size]))
                    out.append(self.model(batch.to(self.model.device)).cpu().numpy())
        finally:
            torch.set_num_threads(previous)
        embeds = np.split(np.concatenate(out), np.cumsum([len(p) for p in inputs])[:-1])
        means = [e.mean(axis=0) for e in embeds]  # float32, as embed_utterance computes it
        return np.stack([m / np.linalg.norm(m, 2) for m in means]).astype(np.float32)
