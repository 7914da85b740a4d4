"""The ``wavlm-large-sv`` encoder: Microsoft UniSpeech's WavLM-Large + ECAPA-TDNN speaker-verification model
(``wavlm_large_finetune.pth``, Vox1-O EER 0.431 %), the SIM model of seed-tts-eval, F5-TTS and most zero-shot TTS
papers, rebuilt on transformers' ``WavLMModel`` (no s3prl, no fairseq).

The recipe of ``downstreams/speaker_verification`` (``models/ecapa_tdnn.py``, ``ECAPA_TDNN_SMALL(feat_dim=1024,
feat_type="wavlm_large")``) with s3prl's ``wavlm_large`` upstream: 16 kHz mono, untrimmed; the waveform
layer-normalised over the utterance (WavLM-Large was pre-trained with ``cfg.normalize``, which s3prl's expert
applies); all 25 hidden states (the input of each transformer layer and the final layer-normed output) summed with
``softmax(feature_weight)``; ``+ 1e-6`` and instance norm over time; ECAPA-TDNN (channels 512, Res2 scale 8,
SE bottleneck 128, 1536 aggregation channels, attentive statistics pooling) to 256 dimensions. Rows are
L2-normalised (cosine is the score). One utterance per forward pass, as the original embeds them: padding would
change the waveform normalisation, the instance norm and the pooling.

The file is a ``torch.save`` of ``{"model": state_dict, ...}`` (711 tensors: 488 of the s3prl WavLM under
``feature_extract.model.``, 222 of the head, and the AAM-softmax classifier ``loss_calculator.projection.weight``,
which is not part of the embedding and is ignored). It is read with ``torch.load(weights_only=True)`` (tensors
only, no code runs), the sizes are read off the tensor shapes, and every other key must be there, no more: a
missing or unexpected key is a one-line error, never a silently random layer. Weights come from ``model`` (the
file or its folder), by default :func:`default_model_path`; nothing is downloaded here (:func:`download_command`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.audio import MIN_SPEECH_SECONDS, SAMPLE_RATE, AudioError
from ..errors import DeepSpeakerError
from ..metrics import normalize_rows
from .base import Encoder, Weights, update_with_file, waveform
from .options import WAVLM_LARGE_SV

NAME = "wavlm-large-sv"
INSTALL = f"encoder '{NAME}' needs the wavlm extra: pip install 'deep-speaker[wavlm]'"
MODEL_FILE = "wavlm_large_finetune.pth"
# microsoft/UniSpeech downstreams/speaker_verification/README.md, "WavLM large", "Fix pre-train: No".
GDRIVE_ID = "1-aE1NfzpRCLxA4GUxX9ITI3F9LlbtEGP"
SOURCE_PAGE = f"https://drive.google.com/file/d/{GDRIVE_ID}/view"
BACKBONE = "feature_extract.model."  # the s3prl upstream's WavLM inside the checkpoint
CLASSIFIER = "loss_calculator.projection.weight"  # the training head (one row per VoxCeleb2 speaker)
# What the weights do not say: WavLM's convolution strides and relative-position range (unilm WavLM.py).
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
MAX_BUCKET_DISTANCE = 800
RES2_DILATIONS = (2, 3, 4)  # layer2..layer4 of the ECAPA-TDNN
FEATURE_OFFSET = 1e-6  # added before the instance norm by the published code (kept for the same rounding)
NORM_EPS = 1e-5  # F.layer_norm's and InstanceNorm1d's default, as the published code uses them

# s3prl/fairseq WavLM names -> transformers WavLMModel names: prefixes of the parameter names, {i} a layer
# number; the pos_conv weight-norm pair is added per torch version (see _key_pairs).
_LAYER_PAIRS = [(f"encoder.layers.{{i}}.{src}", f"encoder.layers.{{i}}.{dst}") for src, dst in (
    ("self_attn.q_proj.", "attention.q_proj."), ("self_attn.k_proj.", "attention.k_proj."),
    ("self_attn.v_proj.", "attention.v_proj."), ("self_attn.out_proj.", "attention.out_proj."),
    ("self_attn.grep_linear.", "attention.gru_rel_pos_linear."), ("self_attn.grep_a", "attention.gru_rel_pos_const"),
    ("self_attn.relative_attention_bias.", "attention.rel_attn_embed."), ("self_attn_layer_norm.", "layer_norm."),
    ("fc1.", "feed_forward.intermediate_dense."), ("fc2.", "feed_forward.output_dense."),
    ("final_layer_norm.", "final_layer_norm."))]
_BASE_PAIRS = [
    ("feature_extractor.conv_layers.{i}.0.", "feature_extractor.conv_layers.{i}.conv."),
    ("feature_extractor.conv_layers.{i}.2.1.", "feature_extractor.conv_layers.{i}.layer_norm."),
    ("mask_emb", "masked_spec_embed"), ("layer_norm.", "feature_projection.layer_norm."),
    ("post_extract_proj.", "feature_projection.projection."), ("encoder.layer_norm.", "encoder.layer_norm."),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv_embed.conv.bias"), *_LAYER_PAIRS]


def default_model_dir() -> Path:
    """``$XDG_CACHE_HOME/deep-speaker/wavlm-large-sv`` (``~/.cache/...`` when the variable is unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deep-speaker" / NAME


def default_model_path() -> Path:
    """Where ``wavlm_large_finetune.pth`` is looked for when no ``model`` is given."""
    return default_model_dir() / MODEL_FILE


def download_command(folder: str | os.PathLike | None = None) -> str:
    """The command that puts the published checkpoint into ``folder`` (default :func:`default_model_dir`)."""
    folder = Path(folder or default_model_dir())
    return f"pip install gdown && mkdir -p {folder} && gdown {GDRIVE_ID} -O {folder / MODEL_FILE}"


def find_model(model: str | os.PathLike | None = None) -> Path:
    """The checkpoint: ``model`` itself, ``wavlm_large_finetune.pth`` in folder ``model``, or the default path; a
    one-line DeepSpeakerError with the download command when it is not there."""
    path = default_model_path() if model is None else Path(model)
    if path.is_file():
        return path
    if path.is_dir() and (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    folder = path if path.is_dir() or not path.suffix else path.parent
    raise DeepSpeakerError(f"{NAME} weights not found at {path}; download {MODEL_FILE} ({SOURCE_PAGE}) once with: "
                           f"{download_command(folder)}")


def _require() -> tuple[Any, Any]:
    """torch and transformers, or the one-line error saying what to install."""
    try:
        import torch
        import transformers
    except ImportError:
        raise DeepSpeakerError(INSTALL) from None
    return torch, transformers


@dataclass(frozen=True)
class Architecture:
    """The sizes of a checkpoint, read off its tensor shapes (WavLM-Large + ECAPA_TDNN_SMALL: the defaults)."""

    hidden: int = 1024
    layers: int = 24
    heads: int = 16
    intermediate: int = 4096
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    num_buckets: int = 320
    channels: int = 512
    first_kernel: int = 5
    res2_kernel: int = 3
    scale: int = 8
    se_bottleneck: int = 128
    aggregation: int = 1536
    attention: int = 128
    global_context: bool = False
    embedding: int = 256

    @classmethod
    def of(cls, state: dict[str, Any], where: str) -> Architecture:
        """The sizes of ``state`` (the checkpoint's ``model`` dict); a one-line error when a key they come from is
        missing or the shapes do not fit together."""
        def shape(key: str) -> tuple[int, ...]:
            if key not in state:
                raise DeepSpeakerError(f"{where}: not a UniSpeech WavLM + ECAPA-TDNN checkpoint (no {key})")
            return tuple(state[key].shape)

        def count(pattern: str) -> int:
            found = {int(m.group(1)) for k in state if (m := re.fullmatch(pattern, k))}
            return max(found) + 1 if found else 0

        b = BACKBONE
        try:  # a tensor of another rank fails the unpacking or indexing below: the same one-line error
            layers = count(re.escape(b) + r"encoder\.layers\.(\d+)\..+")
            convs = [shape(f"{b}feature_extractor.conv_layers.{i}.0.weight")
                     for i in range(max(count(re.escape(b) + r"feature_extractor\.conv_layers\.(\d+)\..+"), 1))]
            hidden = shape(f"{b}post_extract_proj.weight")[0]
            _, per_group, pos_kernel = shape(f"{b}encoder.pos_conv.0.weight_v")
            buckets, heads = shape(f"{b}encoder.layers.0.self_attn.relative_attention_bias.weight")
            channels, features, first_kernel = shape("layer1.conv.weight")
            attention, pooled = shape("pooling.linear1.weight")[:2]
            aggregation = shape("conv.weight")[0]
            arch = cls(hidden=hidden, layers=layers, heads=heads,
                       intermediate=shape(f"{b}encoder.layers.0.fc1.weight")[0],
                       conv_dim=tuple(s[0] for s in convs), conv_kernel=tuple(s[2] for s in convs),
                       conv_bias=f"{b}feature_extractor.conv_layers.0.0.bias" in state, pos_conv_kernel=pos_kernel,
                       pos_conv_groups=hidden // per_group, num_buckets=buckets, channels=channels,
                       first_kernel=first_kernel, res2_kernel=shape("layer2.Res2Conv1dReluBn.convs.0.weight")[2],
                       scale=count(r"layer2\.Res2Conv1dReluBn\.convs\.(\d+)\.weight") + 1,
                       se_bottleneck=shape("layer2.SE_Connect.linear1.weight")[0], aggregation=aggregation,
                       attention=attention, global_context=pooled == 3 * aggregation,
                       embedding=shape("linear.weight")[0])
            problems = []
            if len(convs) != len(CONV_STRIDE):
                problems.append(f"{len(convs)} convolution layers, WavLM has {len(CONV_STRIDE)}")
            if features != hidden:
                problems.append(f"the head reads {features} features, WavLM gives {hidden}")
            if shape("feature_weight") != (layers + 1,):
                problems.append(f"feature_weight has {shape('feature_weight')} weights for {layers + 1} hidden states")
            if hidden % heads or channels % arch.scale or hidden % per_group:
                problems.append("widths that do not divide")
        except (ValueError, IndexError, ZeroDivisionError) as exc:
            problems = [f"shapes that do not fit: {exc}"]
        if problems:
            raise DeepSpeakerError(f"{where}: not a UniSpeech WavLM + ECAPA-TDNN checkpoint ({'; '.join(problems)})")
        return arch

    def wavlm_config(self, transformers: Any) -> Any:
        """The transformers ``WavLMConfig`` of the backbone (WavLM-Large's layer-norm-first layout)."""
        return transformers.WavLMConfig(
            hidden_size=self.hidden, num_hidden_layers=self.layers, num_attention_heads=self.heads,
            intermediate_size=self.intermediate, conv_dim=self.conv_dim, conv_kernel=self.conv_kernel,
            conv_stride=CONV_STRIDE, conv_bias=self.conv_bias, feat_extract_norm="layer", do_stable_layer_norm=True,
            num_conv_pos_embeddings=self.pos_conv_kernel, num_conv_pos_embedding_groups=self.pos_conv_groups,
            num_buckets=self.num_buckets, max_bucket_distance=MAX_BUCKET_DISTANCE, hidden_act="gelu",
            feat_extract_activation="gelu", layer_norm_eps=NORM_EPS, mask_time_prob=0.05)


def _key_pairs(target_keys: set[str]) -> list[tuple[re.Pattern, str, re.Pattern, str]]:
    """(source pattern, target template, target pattern, source template) per name pair; the pos_conv weight-norm
    tensors under the spelling this torch gives (``parametrizations.weight.original0/1`` or ``weight_g/v``)."""
    legacy = "wavlm.encoder.pos_conv_embed.conv.weight_g" in target_keys
    g, v = (("weight_g", "weight_v") if legacy else ("parametrizations.weight.original0",
                                                     "parametrizations.weight.original1"))
    pairs = [*_BASE_PAIRS, ("encoder.pos_conv.0.weight_g", f"encoder.pos_conv_embed.conv.{g}"),
             ("encoder.pos_conv.0.weight_v", f"encoder.pos_conv_embed.conv.{v}")]

    def pattern(prefix: str) -> re.Pattern:
        tail = "(.+)" if prefix.endswith(".") else "()"
        return re.compile(re.escape(prefix).replace(re.escape("{i}"), r"(\d+)") + tail)

    def template(prefix: str) -> str:
        return prefix.replace("{i}", "{0}") + "{1}" if "{i}" in prefix else prefix + "{0}"

    return [(pattern(BACKBONE + s), "wavlm." + template(t), pattern("wavlm." + t), BACKBONE + template(s))
            for s, t in pairs]


def _rename(key: str, pairs: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in pairs:
        if match := pattern.fullmatch(key):
            return template.format(*match.groups())
    return None


def convert_state(state: dict[str, Any], target: dict[str, Any], where: str) -> dict[str, Any]:
    """The checkpoint's tensors under the model's names (the head's are the same; the backbone's are renamed);
    a one-line DeepSpeakerError naming the first missing key, unexpected key or wrong shape (checkpoint names)."""
    pairs = _key_pairs(set(target))
    forward = [(p, t) for p, t, _, _ in pairs]
    backward = [(p, s) for _, _, p, s in pairs]
    converted, unexpected = {}, []
    for key, value in state.items():
        if key == CLASSIFIER:
            continue
        name = _rename(key, forward) if key.startswith(BACKBONE) else None if key.startswith("wavlm.") else key
        if name is None or name not in target:
            unexpected.append(key)
        else:
            converted[name] = value
    missing = [_rename(k, backward) or k for k in target if k not in converted]
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            raise DeepSpeakerError(f"{where}: {what} key {keys[0]}{f' and {len(keys) - 1} more' * (len(keys) > 1)}: "
                                   f"not the layout of UniSpeech's {MODEL_FILE}")
    for name, value in converted.items():
        if tuple(value.shape) != tuple(target[name].shape):
            source = _rename(name, backward) or name
            raise DeepSpeakerError(f"{where}: {source} has shape {tuple(value.shape)}, the model needs "
                                   f"{tuple(target[name].shape)}")
    return converted


@functools.cache
def model_class() -> type:
    """``WavLMLargeSV``, defined on first use: torch is an optional extra, and this module imports without it."""
    torch, transformers = _require()
    nn, F = torch.nn, torch.nn.functional

    class ConvReluBn(nn.Module):
        """Conv1d, ReLU, BatchNorm1d (the published order); ``conv``/``bn`` as the checkpoint names them."""

        def __init__(self, inputs: int, outputs: int, kernel: int = 1, dilation: int = 1):
            super().__init__()
            self.conv = nn.Conv1d(inputs, outputs, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation)
            self.bn = nn.BatchNorm1d(outputs)

        def forward(self, x: Any) -> Any:
            return self.bn(F.relu(self.conv(x)))

    class Res2(nn.Module):
        """Res2Net: channel groups, each but the last convolved after adding the previous group's output."""

        def __init__(self, channels: int, kernel: int, dilation: int, scale: int):
            super().__init__()
            self.width = channels // scale
            pad = dilation * (kernel - 1) // 2
            self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, kernel, padding=pad, dilation=dilation)
                                       for _ in range(scale - 1))
            self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(scale - 1))

        def forward(self, x: Any) -> Any:
            groups = torch.split(x, self.width, dim=1)
            out, y = [], None
            for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
                y = groups[i] if y is None else y + groups[i]
                y = bn(F.relu(conv(y)))
                out.append(y)
            return torch.cat([*out, groups[len(self.convs)]], dim=1)

    class SqueezeExcite(nn.Module):
        def __init__(self, channels: int, bottleneck: int):
            super().__init__()
            self.linear1 = nn.Linear(channels, bottleneck)
            self.linear2 = nn.Linear(bottleneck, channels)

        def forward(self, x: Any) -> Any:
            gate = torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))
            return x * gate.unsqueeze(2)

    class SERes2Block(nn.Module):
        """The SE-Res2 block, residual added (in and out widths are equal in this model: no shortcut conv)."""

        def __init__(self, a: Architecture, dilation: int):
            super().__init__()
            self.Conv1dReluBn1 = ConvReluBn(a.channels, a.channels)
            self.Res2Conv1dReluBn = Res2(a.channels, a.res2_kernel, dilation, a.scale)
            self.Conv1dReluBn2 = ConvReluBn(a.channels, a.channels)
            self.SE_Connect = SqueezeExcite(a.channels, a.se_bottleneck)

        def forward(self, x: Any) -> Any:
            return x + self.SE_Connect(self.Conv1dReluBn2(self.Res2Conv1dReluBn(self.Conv1dReluBn1(x))))

    class AttentiveStats(nn.Module):
        """Attention-weighted mean and standard deviation over time (optionally with global context)."""

        def __init__(self, a: Architecture):
            super().__init__()
            self.global_context = a.global_context
            self.linear1 = nn.Conv1d(a.aggregation * (3 if a.global_context else 1), a.attention, 1)
            self.linear2 = nn.Conv1d(a.attention, a.aggregation, 1)

        def forward(self, x: Any) -> Any:
            h = x
            if self.global_context:  # the published variant: unbiased variance, as torch.var gives
                mean = x.mean(dim=-1, keepdim=True).expand_as(x)
                std = torch.sqrt(torch.var(x, dim=-1, keepdim=True) + 1e-10).expand_as(x)
                h = torch.cat((x, mean, std), dim=1)
            alpha = torch.softmax(self.linear2(torch.tanh(self.linear1(h))), dim=2)
            mean = torch.sum(alpha * x, dim=2)
            std = torch.sqrt((torch.sum(alpha * x ** 2, dim=2) - mean ** 2).clamp(min=1e-9))
            return torch.cat([mean, std], dim=1)

    class WavLMLargeSV(nn.Module):
        """WavLM (transformers) + the UniSpeech ECAPA-TDNN head; parameter names of the head as in the file."""

        def __init__(self, a: Architecture):
            super().__init__()
            self.wavlm = transformers.WavLMModel(a.wavlm_config(transformers))
            self.feature_weight = nn.Parameter(torch.zeros(a.layers + 1))
            self.layer1 = ConvReluBn(a.hidden, a.channels, a.first_kernel)
            self.layer2, self.layer3, self.layer4 = (SERes2Block(a, d) for d in RES2_DILATIONS)
            self.conv = nn.Conv1d(3 * a.channels, a.aggregation, 1)
            self.pooling = AttentiveStats(a)
            self.bn = nn.BatchNorm1d(2 * a.aggregation)
            self.linear = nn.Linear(2 * a.aggregation, a.embedding)

        def forward(self, wave: Any) -> Any:
            """Embeddings ``[1, d]`` (not normalised) of one waveform ``[1, n]`` at 16 kHz."""
            wave = F.layer_norm(wave, wave.shape[-1:], eps=NORM_EPS)
            out = self.wavlm(wave, output_hidden_states=True)
            # s3prl's states: each layer's input, then the final layer-normed output. transformers 4 ends its
            # hidden_states with the latter, 5 with the last layer's raw output: take the inputs, then the output.
            hidden = torch.stack([*out.hidden_states[:-1], out.last_hidden_state])  # [L+1, 1, T, C]
            weights = torch.softmax(self.feature_weight, dim=-1).view(-1, 1, 1, 1)
            x = (weights * hidden).sum(dim=0).transpose(1, 2) + FEATURE_OFFSET
            x = F.instance_norm(x, eps=NORM_EPS)
            out2 = self.layer2(self.layer1(x))
            out3 = self.layer3(out2)
            out4 = self.layer4(out3)
            x = F.relu(self.conv(torch.cat([out2, out3, out4], dim=1)))
            return self.linear(self.bn(self.pooling(x)))

    return WavLMLargeSV


def load_model(path: str | os.PathLike) -> tuple[Any, Architecture]:
    """The model in ``path`` (``torch.load(weights_only=True)``; sizes from the shapes; strict keys), in eval mode."""
    torch, _ = _require()
    where = str(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-carrying pickles, RuntimeError/EOFError for damaged files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DeepSpeakerError(f"{where}: not a tensors-only torch checkpoint "
                               f"({type(exc).__name__}: {reason})") from None
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise DeepSpeakerError(f"{where}: no 'model' dict of tensors (the layout of UniSpeech's {MODEL_FILE})")
    arch = Architecture.of(state, where)
    with torch.device("meta"):  # no random init of 315M parameters, no second copy: the file's tensors are used
        model = model_class()(arch)
    model.load_state_dict(convert_state(state, model.state_dict(), where), strict=True, assign=True)
    return model.float().eval(), arch


def min_samples(conv_kernel: Sequence[int], conv_stride: Sequence[int], frames: int = 2) -> int:
    """The shortest input giving ``frames`` WavLM frames (the instance norm over time needs 2)."""
    n = frames
    for kernel, stride in reversed(list(zip(conv_kernel, conv_stride))):
        n = (n - 1) * stride + kernel
    return n


class WavLMLargeSVEncoder(Encoder):
    """UniSpeech's WavLM-Large ECAPA-TDNN speaker embeddings (256-d), L2-normalised, one utterance per pass."""

    name = NAME
    declaration = WAVLM_LARGE_SV
    sample_rate = SAMPLE_RATE

    def __init__(self, model: str | os.PathLike | None = None, device: str = "cpu"):
        """``model``: ``wavlm_large_finetune.pth`` or its folder (default :func:`default_model_path`); ``device``:
        a torch device name."""
        torch, _ = _require()
        self.path = find_model(model)
        self.model, self.architecture = load_model(self.path)
        try:
            self.device = torch.device(device)
            self.model.to(self.device)
        except (RuntimeError, AssertionError) as exc:  # an unknown name, or CUDA asked of a CPU-only torch
            raise DeepSpeakerError(f"device {device!r} unusable for {NAME}: {str(exc).splitlines()[0]}") from None
        self.min_samples = max(int(np.ceil(MIN_SPEECH_SECONDS * SAMPLE_RATE)),
                               min_samples(self.architecture.conv_kernel, CONV_STRIDE))
        self._torch = torch
        self._identity: str | None = None

    @property
    def embedding_size(self) -> int:
        """The head's output width (256 for the published checkpoint)."""
        return self.architecture.embedding

    @property
    def settings(self) -> dict[str, Any]:
        """What besides the weights changes an embedding: the rate, no trim, the shortest input, the recipe."""
        return {"sample_rate": SAMPLE_RATE, "trim": "none", "min_audio_seconds": self.min_samples / SAMPLE_RATE,
                "front_end": "waveform layer-norm over the utterance",
                "embedding": "ECAPA-TDNN over softmax-weighted WavLM hidden states, L2-normalised, one utterance "
                             "per forward pass", "architecture": asdict(self.architecture)}

    @property
    def weights(self) -> Weights:
        """The checkpoint file loaded."""
        return Weights(self.identity, str(self.path))

    @property
    def identity(self) -> str:
        """sha256(settings as JSON, the checkpoint's bytes)[:16], hashed on first use (the file is 1.3 GB)."""
        if self._identity is None:
            digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode())
            update_with_file(digest, self.path)
            self._identity = digest.hexdigest()[:16]
        return self._identity

    def prepare_signal(self, signal: np.ndarray, sample_rate: int, where: str) -> np.ndarray:
        """The signal resampled to 16 kHz, untrimmed (the recipe); an AudioError when it is not a finite mono
        signal or too short."""
        x = np.asarray(signal, dtype=np.float32)
        if x.ndim != 1 or not np.all(np.isfinite(x)):
            raise AudioError(where, "not a finite mono signal")
        return waveform(x, sample_rate, rate=SAMPLE_RATE, min_samples=self.min_samples, where=where, name=NAME)

    def embed_prepared(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Rows ``e / ||e||`` of the model's output, one signal per forward pass."""
        rows = []
        with self._torch.inference_mode():
            for x in inputs:
                wave = self._torch.from_numpy(np.ascontiguousarray(x))[None].to(self.device)
                rows.append(self.model(wave)[0].float().cpu().numpy())
        if not rows:
            return np.zeros((0, self.embedding_size), np.float32)
        return normalize_rows(np.stack(rows)).astype(np.float32)
