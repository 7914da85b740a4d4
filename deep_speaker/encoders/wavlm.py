"""The ``wavlm-sv`` encoder: WavLM-Base-Plus fine-tuned for speaker verification (``microsoft/wavlm-base-plus-sv``),
the speaker space seed-tts-eval and VERSA report, through ``transformers``' ``WavLMForXVector``.

The model card's recipe exactly: 16 kHz mono, untrimmed, through the model's ``Wav2Vec2FeatureExtractor`` (with
its attention mask), ``outputs.embeddings`` L2-normalised per row (cosine is the score). Weights come from a
folder written by ``save_pretrained`` or from the local Hugging Face cache; nothing is ever downloaded here
(``local_files_only=True``): the user fetches them once with ``hf download microsoft/wavlm-base-plus-sv``.

One utterance per forward pass: padding a batch changes the embeddings of its shorter utterances even with the
attention mask (the first convolution's GroupNorm sees the padding, and transformers' pooling length ignores the
TDNN dilation, so 6 frames that saw padding enter the statistics). On a base-size WavLMForXVector with random
weights, 8 LibriSpeech files padded to 15 s moved by up to 1.4e-2 (a 2-layer one: 4.6e-2), and the padded batch
took 4 times as long on CPU as the files one by one (RTF 0.22 on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.audio import MIN_SPEECH_SECONDS
from ..errors import DeepSpeakerError
from ..metrics import normalize_rows
from .base import Encoder, Weights, update_with_file, waveform
from .options import WAVLM_SV

NAME = "wavlm-sv"
DEFAULT_MODEL = "microsoft/wavlm-base-plus-sv"
INSTALL = f"encoder '{NAME}' needs the wavlm extra: pip install 'deep-speaker[wavlm]'"
# What from_pretrained reads: the identity hashes these (README.md, .gitattributes and the like change nothing).
MODEL_FILES = re.compile(r"(config|preprocessor_config)\.json|.+\.(safetensors|bin)(\.index\.json)?")
# Parameters of the x-vector head: a folder without them (e.g. plain WavLM) would get a random head.
HEAD_PREFIXES = ("projector.", "tdnn.", "feature_extractor.", "layer_weights")


def _require() -> tuple[Any, Any, Any]:
    """torch, transformers and huggingface_hub, or the one-line error saying what to install."""
    try:
        import huggingface_hub
        import torch
        import transformers
    except ImportError:
        raise DeepSpeakerError(INSTALL) from None
    return torch, transformers, huggingface_hub


def min_samples(conv_kernel: Sequence[int], conv_stride: Sequence[int], *, tdnn_kernel: Sequence[int],
                tdnn_dilation: Sequence[int]) -> int:
    """The shortest input giving 2 frames to the x-vector pooling (its std needs 2): 2 + sum((k-1)*d) TDNN frames,
    then ``n -> (n-1)*stride + kernel`` back through the convolutions."""
    n = 2 + sum((k - 1) * d for k, d in zip(tdnn_kernel, tdnn_dilation))
    for kernel, stride in reversed(list(zip(conv_kernel, conv_stride))):
        n = (n - 1) * stride + kernel
    return n


def resolve_folder(model: str | os.PathLike) -> Path:
    """The folder of ``model``: itself when it is a folder, else the hub id's snapshot in the local cache only."""
    path = Path(model)
    if path.is_dir():
        return path
    text = str(model)
    if path.exists() or path.is_absolute() or text.startswith(".") or text.count("/") != 1:
        raise DeepSpeakerError(f"{model}: not a model folder (a folder written by save_pretrained, or a Hugging Face "
                               f"id such as {DEFAULT_MODEL})")
    _, _, hub = _require()
    try:
        return Path(hub.snapshot_download(text, local_files_only=True))
    except (OSError, ValueError) as exc:  # LocalEntryNotFoundError is an OSError, a malformed id a ValueError
        raise DeepSpeakerError(f"{text}: not in the local Hugging Face cache ({hub.constants.HF_HUB_CACHE}; "
                               f"{type(exc).__name__}); download it once with: hf download {text}") from None


def folder_identity(folder: Path, settings: dict[str, Any]) -> str:
    """sha256(name, size and bytes of each file from_pretrained reads, in name order; settings as JSON)[:16]."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and MODEL_FILES.fullmatch(p.name)):
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        update_with_file(digest, path)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


class WavLMEncoder(Encoder):
    """``WavLMForXVector`` speaker embeddings (512-d for wavlm-base-plus-sv), L2-normalised, one utterance per pass."""

    name = NAME
    declaration = WAVLM_SV

    def __init__(self, model: str | os.PathLike | None = None, device: str = "cpu"):
        torch, transformers, _ = _require()
        self.folder = resolve_folder(DEFAULT_MODEL if model is None else model)
        try:
            self.features = transformers.Wav2Vec2FeatureExtractor.from_pretrained(str(self.folder),
                                                                                   local_files_only=True)
            self.model, info = transformers.WavLMForXVector.from_pretrained(
                str(self.folder), local_files_only=True, output_loading_info=True)
        except Exception as exc:  # missing, corrupt or foreign files raise many types; all are the user's to fix
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DeepSpeakerError(f"{self.folder}: cannot load a WavLMForXVector with its feature extractor "
                                   f"({reason})") from None
        missing = [k for k in info["missing_keys"] if k.startswith(HEAD_PREFIXES)]
        if missing:
            raise DeepSpeakerError(f"{self.folder}: no x-vector head in the weights ({missing[0]} and "
                                   f"{len(missing) - 1} more missing): not a speaker-verification checkpoint "
                                   f"like {DEFAULT_MODEL}")
        try:
            self.device = torch.device(device)
            self.model.to(self.device).eval()
        except (RuntimeError, AssertionError) as exc:  # an unknown name, or CUDA asked of a CPU-only torch
            raise DeepSpeakerError(f"device {device!r} unusable for {NAME}: {str(exc).splitlines()[0]}") from None
        config = self.model.config
        self.min_samples = max(int(np.ceil(MIN_SPEECH_SECONDS * self.sample_rate)), min_samples(
            config.conv_kernel, config.conv_stride, tdnn_kernel=config.tdnn_kernel, tdnn_dilation=config.tdnn_dilation))
        self._torch = torch
        self._identity: str | None = None

    @property
    def sample_rate(self) -> int:
        """The feature extractor's rate (16000 Hz for WavLM)."""
        return int(self.features.sampling_rate)

    @property
    def embedding_size(self) -> int:
        """``xvector_output_dim`` of the config (512 for wavlm-base-plus-sv)."""
        return int(self.model.config.xvector_output_dim)

    @property
    def settings(self) -> dict[str, Any]:
        """What besides the files changes an embedding: the rate, no trim, the shortest input, the pooling."""
        return {"sample_rate": self.sample_rate, "trim": "none",
                "min_audio_seconds": self.min_samples / self.sample_rate,
                "embedding": "WavLMForXVector embeddings, L2-normalised, one utterance per forward pass"}

    @property
    def weights(self) -> Weights:
        """The model folder loaded (in the Hugging Face cache for a model id)."""
        return Weights(self.identity, str(self.folder))

    @property
    def identity(self) -> str:
        """:func:`folder_identity` of the config, feature-extractor config and weight files and the settings."""
        if self._identity is None:
            self._identity = folder_identity(self.folder, self.settings)
        return self._identity

    def prepare_signal(self, signal: np.ndarray, sample_rate: int, where: str) -> np.ndarray:
        """The signal resampled to :attr:`sample_rate`, untrimmed (the recipe); AudioError when too short to pool."""
        return waveform(signal, sample_rate, rate=self.sample_rate, min_samples=self.min_samples, where=where,
                        name=NAME)

    def embed_prepared(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Rows ``e / ||e||`` of ``WavLMForXVector(**feature_extractor(x)).embeddings``, one signal per pass."""
        rows = []
        with self._torch.inference_mode():
            for x in inputs:
                batch = self.features(x, sampling_rate=self.sample_rate, return_attention_mask=True,
                                      return_tensors="pt").to(self.device)
                rows.append(self.model(**batch).embeddings[0].float().cpu().numpy())
        if not rows:
            return np.zeros((0, self.embedding_size), np.float32)
        return normalize_rows(np.stack(rows)).astype(np.float32)
