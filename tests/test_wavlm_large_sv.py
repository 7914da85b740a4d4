"""The wavlm-large-sv encoder (UniSpeech's WavLM-Large + ECAPA-TDNN, ``wavlm_large_finetune.pth``) on a tiny
checkpoint written here in the published layout: the key names of ``ECAPA_TDNN_SMALL(feat_dim=1024,
feat_type="wavlm_large")`` with s3prl's WavLM under ``feature_extract.model.`` and the AAM classifier, the shapes
scaled down. The reference is written here in plain torch functions straight from the checkpoint's own tensor
names (the fairseq WavLM forward: layer-norm convolutions, weight-normed positional convolution, gated relative
position bias; the ECAPA-TDNN forward), sharing no code with the encoder, which runs transformers' WavLMModel."""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads here, whatever the code under test would try

import numpy as np
import pytest
import soundfile as sf
import torch  # imported, not importorskip'ed: CI installs the wavlm extra, so a missing package must fail here
import torch.nn.functional as F

from deep_speaker.cli import main
from deep_speaker.data.audio import AudioError
from deep_speaker.encoders import get_encoder
from deep_speaker.errors import DeepSpeakerError

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = REPO / "samples" / "librispeech" / "test-other"
FILES = [str(p) for speaker in ("1688", "2414") for p in sorted((HELD_OUT / speaker).rglob("*.flac"))[:2]]
INSTALL = "encoder 'wavlm-large-sv' needs the wavlm extra: pip install 'deep-speaker[wavlm]'"
B = "feature_extract.model."
CONV_KERNEL, CONV_STRIDE = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)
# The published sizes (WavLM-Large; ECAPA_TDNN_SMALL: channels 512, [512]*4 + [1536], emb_dim 256) and tiny ones.
LARGE = dict(hidden=1024, layers=24, heads=16, ffn=4096, conv=512, pos_kernel=128, pos_groups=16, buckets=320,
             channels=512, scale=8, se=128, agg=1536, att=128, emb=256, speakers=5994)  # classifier rows: ignored
TINY = dict(hidden=32, layers=3, heads=4, ffn=48, conv=16, pos_kernel=16, pos_groups=4, buckets=32, channels=16,
            scale=8, se=8, agg=24, att=8, emb=12, speakers=5)


def published_layout(hidden, layers, heads, ffn, conv, pos_kernel, pos_groups, buckets, channels, scale, se, agg,
                     att, emb, speakers) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the published file's ``model`` dict: unilm/s3prl ``WavLM`` (extractor_mode
    layer_norm, conv_bias False, relative_attention_bias in layer 0 only) and ``ECAPA_TDNN`` (Conv1dReluBn,
    SE_Res2Block, AttentiveStatsPool; BatchNorm1d buffers), then ``loss_calculator.projection.weight``."""
    keys: dict[str, tuple[int, ...]] = {f"{B}mask_emb": (hidden,)}
    for i, k in enumerate(CONV_KERNEL):
        keys[f"{B}feature_extractor.conv_layers.{i}.0.weight"] = (conv, 1 if i == 0 else conv, k)
        keys.update({f"{B}feature_extractor.conv_layers.{i}.2.1.{p}": (conv,) for p in ("weight", "bias")})
    keys.update({f"{B}layer_norm.weight": (conv,), f"{B}layer_norm.bias": (conv,),
                 f"{B}post_extract_proj.weight": (hidden, conv), f"{B}post_extract_proj.bias": (hidden,),
                 f"{B}encoder.pos_conv.0.bias": (hidden,), f"{B}encoder.pos_conv.0.weight_g": (1, 1, pos_kernel),
                 f"{B}encoder.pos_conv.0.weight_v": (hidden, hidden // pos_groups, pos_kernel)})
    for n in range(layers):
        p = f"{B}encoder.layers.{n}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            keys.update({f"{p}self_attn.{proj}.weight": (hidden, hidden), f"{p}self_attn.{proj}.bias": (hidden,)})
        if n == 0:
            keys[f"{p}self_attn.relative_attention_bias.weight"] = (buckets, heads)
        keys.update({f"{p}self_attn.grep_linear.weight": (8, hidden // heads), f"{p}self_attn.grep_linear.bias": (8,),
                     f"{p}self_attn.grep_a": (1, heads, 1, 1), f"{p}fc1.weight": (ffn, hidden), f"{p}fc1.bias": (ffn,),
                     f"{p}fc2.weight": (hidden, ffn), f"{p}fc2.bias": (hidden,)})
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            keys.update({f"{p}{norm}.weight": (hidden,), f"{p}{norm}.bias": (hidden,)})
    keys.update({f"{B}encoder.layer_norm.weight": (hidden,), f"{B}encoder.layer_norm.bias": (hidden,)})
    keys["feature_weight"] = (layers + 1,)

    def conv_relu_bn(prefix: str, n_in: int, n_out: int, kernel: int) -> None:
        keys.update({f"{prefix}conv.weight": (n_out, n_in, kernel), f"{prefix}conv.bias": (n_out,)})
        batch_norm(f"{prefix}bn.", n_out)

    def batch_norm(prefix: str, n: int) -> None:
        keys.update({f"{prefix}{p}": (n,) for p in ("weight", "bias", "running_mean", "running_var")})
        keys[f"{prefix}num_batches_tracked"] = ()

    conv_relu_bn("layer1.", hidden, channels, 5)
    width = channels // scale
    for block in ("layer2.", "layer3.", "layer4."):
        conv_relu_bn(f"{block}Conv1dReluBn1.", channels, channels, 1)
        for j in range(scale - 1):
            keys.update({f"{block}Res2Conv1dReluBn.convs.{j}.weight": (width, width, 3),
                         f"{block}Res2Conv1dReluBn.convs.{j}.bias": (width,)})
            batch_norm(f"{block}Res2Conv1dReluBn.bns.{j}.", width)
        conv_relu_bn(f"{block}Conv1dReluBn2.", channels, channels, 1)
        se_ = f"{block}SE_Connect."
        keys.update({f"{se_}linear1.weight": (se, channels), f"{se_}linear1.bias": (se,),
                     f"{se_}linear2.weight": (channels, se), f"{se_}linear2.bias": (channels,)})
    keys.update({"conv.weight": (agg, 3 * channels, 1), "conv.bias": (agg,),
                 "pooling.linear1.weight": (att, agg, 1), "pooling.linear1.bias": (att,),
                 "pooling.linear2.weight": (agg, att, 1), "pooling.linear2.bias": (agg,)})
    batch_norm("bn.", 2 * agg)
    keys.update({"linear.weight": (emb, 2 * agg), "linear.bias": (emb,),
                 "loss_calculator.projection.weight": (speakers, emb)})
    return keys


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded tensors of a plausible scale: fan-in scaled weights, norms near 1, positive running variances."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) >= 2 and not key.endswith(("grep_a", "weight_g", "relative_attention_bias.weight")):
            state[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith(("norm.weight", "bn.weight", "2.1.weight")) or ".bns." in key and key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.3 * torch.randn(shape, generator=g)
    return state


def write_checkpoint(path: Path, state: dict, **extra) -> Path:
    torch.save({"model": state, "best_valid_eer": 0.431, **extra}, path)
    return path


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    """Random weights, the final BatchNorm's statistics set to the pooled vectors' (as training leaves them): with
    random ones every utterance gets nearly the same embedding, and a check of cosines would check little."""
    state = random_state(published_layout(**TINY))
    with torch.no_grad():
        pooled = torch.cat([ref_pooled(state, sf.read(f, dtype="float32")[0]) for f in FILES])
    variance = pooled.var(0)
    state["bn.running_mean"], state["bn.running_var"] = pooled.mean(0), variance + variance.mean()
    return state


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_state) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("wavlm_large_sv") / "wavlm_large_finetune.pth", tiny_state)


@pytest.fixture(scope="module")
def encoder(tiny):
    return get_encoder("wavlm-large-sv", model=tiny)


# The reference: plain functions of the checkpoint's tensors, as unilm's WavLM.py and UniSpeech's ecapa_tdnn.py
# compute them (eval mode: no dropout, BatchNorm on its running statistics).

def ref_buckets(length: int, buckets: int, max_distance: int = 800) -> torch.Tensor:
    """The bidirectional T5-style bucket of each (query, key) offset."""
    offset = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    half = buckets // 2
    exact = half // 2
    distance = offset.abs()
    large = exact + (torch.log(distance.float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    large = torch.clamp(large, max=half - 1)
    return (offset > 0).long() * half + torch.where(distance < exact, distance, large)


def ref_wavlm_hidden_states(s: dict, wave: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """The 25 (here layers + 1) states s3prl's hooks collect: each layer's input, then the final layer-normed output."""
    x = F.layer_norm(wave, wave.shape)[None, None]  # cfg.normalize of WavLM-Large
    for i, stride in enumerate(CONV_STRIDE):
        x = F.conv1d(x, s[f"{B}feature_extractor.conv_layers.{i}.0.weight"], stride=stride)
        ln = f"{B}feature_extractor.conv_layers.{i}.2.1."
        x = F.gelu(F.layer_norm(x.transpose(1, 2), x.shape[1:2], s[ln + "weight"], s[ln + "bias"]).transpose(1, 2))
    x = x.transpose(1, 2)  # [1, T, C]
    x = F.layer_norm(x, x.shape[-1:], s[f"{B}layer_norm.weight"], s[f"{B}layer_norm.bias"])
    x = F.linear(x, s[f"{B}post_extract_proj.weight"], s[f"{B}post_extract_proj.bias"])
    v, gain = s[f"{B}encoder.pos_conv.0.weight_v"], s[f"{B}encoder.pos_conv.0.weight_g"]
    weight = gain * v / v.norm(dim=(0, 1), keepdim=True)  # weight_norm over dim 2
    kernel = v.shape[2]
    pos = F.conv1d(x.transpose(1, 2), weight, s[f"{B}encoder.pos_conv.0.bias"], padding=kernel // 2,
                   groups=x.shape[2] // v.shape[1])
    pos = pos[:, :, :-1] if kernel % 2 == 0 else pos  # SamePad
    x = x + F.gelu(pos).transpose(1, 2)
    length, hidden = x.shape[1], x.shape[2]
    dh = hidden // heads
    table = s[f"{B}encoder.layers.0.self_attn.relative_attention_bias.weight"]
    position_bias = table[ref_buckets(length, table.shape[0])].permute(2, 0, 1)  # [H, T, T]
    states, n = [], 0
    while f"{B}encoder.layers.{n}.fc1.weight" in s:
        p = f"{B}encoder.layers.{n}."
        states.append(x)
        h = F.layer_norm(x, (hidden,), s[p + "self_attn_layer_norm.weight"], s[p + "self_attn_layer_norm.bias"])

        def heads_of(t: torch.Tensor) -> torch.Tensor:
            return t.view(1, length, heads, dh).transpose(1, 2)  # [1, H, T, dh]

        gates = F.linear(heads_of(h), s[p + "self_attn.grep_linear.weight"], s[p + "self_attn.grep_linear.bias"])
        gate_a, gate_b = torch.sigmoid(gates.view(1, heads, length, 2, 4).sum(-1)).chunk(2, dim=-1)
        gate = gate_a * (gate_b * s[p + "self_attn.grep_a"] - 1.0) + 2.0  # [1, H, T, 1]
        q, k, val = (heads_of(F.linear(h, s[p + f"self_attn.{m}.weight"], s[p + f"self_attn.{m}.bias"]))
                     for m in ("q_proj", "k_proj", "v_proj"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh) + gate * position_bias
        attended = (torch.softmax(scores, dim=-1) @ val).transpose(1, 2).reshape(1, length, hidden)
        x = x + F.linear(attended, s[p + "self_attn.out_proj.weight"], s[p + "self_attn.out_proj.bias"])
        h = F.layer_norm(x, (hidden,), s[p + "final_layer_norm.weight"], s[p + "final_layer_norm.bias"])
        x = x + F.linear(F.gelu(F.linear(h, s[p + "fc1.weight"], s[p + "fc1.bias"])), s[p + "fc2.weight"],
                         s[p + "fc2.bias"])
        n += 1
    states.append(F.layer_norm(x, (hidden,), s[f"{B}encoder.layer_norm.weight"], s[f"{B}encoder.layer_norm.bias"]))
    return states


def ref_bn(s: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, s[prefix + "running_mean"], s[prefix + "running_var"], s[prefix + "weight"],
                        s[prefix + "bias"], training=False, eps=1e-5)


def ref_conv_relu_bn(s: dict, prefix: str, x: torch.Tensor, padding: int = 0) -> torch.Tensor:
    return ref_bn(s, prefix + "bn.", F.relu(F.conv1d(x, s[prefix + "conv.weight"], s[prefix + "conv.bias"],
                                                     padding=padding)))


def ref_block(s: dict, prefix: str, x: torch.Tensor, dilation: int, scale: int) -> torch.Tensor:
    y = ref_conv_relu_bn(s, prefix + "Conv1dReluBn1.", x)
    pieces = torch.split(y, y.shape[1] // scale, dim=1)
    outs, sp = [], None
    for j in range(scale - 1):
        sp = pieces[j] if j == 0 else sp + pieces[j]
        c = f"{prefix}Res2Conv1dReluBn."
        sp = F.conv1d(sp, s[f"{c}convs.{j}.weight"], s[f"{c}convs.{j}.bias"], padding=dilation, dilation=dilation)
        sp = ref_bn(s, f"{c}bns.{j}.", F.relu(sp))
        outs.append(sp)
    y = ref_conv_relu_bn(s, prefix + "Conv1dReluBn2.", torch.cat([*outs, pieces[scale - 1]], dim=1))
    se = f"{prefix}SE_Connect."
    gate = F.relu(F.linear(y.mean(dim=2), s[se + "linear1.weight"], s[se + "linear1.bias"]))
    y = y * torch.sigmoid(F.linear(gate, s[se + "linear2.weight"], s[se + "linear2.bias"])).unsqueeze(2)
    return y + x


def ref_pooled(s: dict, wave: np.ndarray, heads: int = TINY["heads"], scale: int = TINY["scale"]) -> torch.Tensor:
    """``ECAPA_TDNN.forward`` of one 16 kHz waveform up to the attentive statistics pooling ``[1, 2 * agg]``."""
    with torch.no_grad():
        states = torch.stack(ref_wavlm_hidden_states(s, torch.from_numpy(wave), heads))
        weights = torch.softmax(s["feature_weight"], dim=-1)[:, None, None, None]
        x = (weights * states).sum(dim=0).transpose(1, 2) + 1e-6
        x = F.instance_norm(x)
        out1 = ref_conv_relu_bn(s, "layer1.", x, padding=2)
        out2 = ref_block(s, "layer2.", out1, 2, scale)
        out3 = ref_block(s, "layer3.", out2, 3, scale)
        out4 = ref_block(s, "layer4.", out3, 4, scale)
        out = F.relu(F.conv1d(torch.cat([out2, out3, out4], dim=1), s["conv.weight"], s["conv.bias"]))
        alpha = torch.tanh(F.conv1d(out, s["pooling.linear1.weight"], s["pooling.linear1.bias"]))
        alpha = torch.softmax(F.conv1d(alpha, s["pooling.linear2.weight"], s["pooling.linear2.bias"]), dim=2)
        mean = (alpha * out).sum(dim=2)
        std = torch.sqrt(((alpha * out ** 2).sum(dim=2) - mean ** 2).clamp(min=1e-9))
        return torch.cat([mean, std], dim=1)


def ref_embedding(s: dict, wave: np.ndarray) -> np.ndarray:
    """``ECAPA_TDNN.forward`` of one 16 kHz waveform: pooling, BatchNorm, linear."""
    with torch.no_grad():
        pooled = ref_bn(s, "bn.", ref_pooled(s, wave))
        return F.linear(pooled, s["linear.weight"], s["linear.bias"])[0].numpy().astype(np.float64)


def reference_rows(state: dict, paths: list[str]) -> np.ndarray:
    rows = []
    for path in paths:
        signal, rate = sf.read(path, dtype="float32")
        assert rate == 16000  # the bundled speech is 16 kHz: nothing to resample
        rows.append(ref_embedding(state, signal))
    rows = np.stack(rows)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_published_layout_is_the_one_the_encoder_loads_strictly():
    from deep_speaker.encoders.wavlm_large_sv import Architecture, convert_state, model_class

    layout = published_layout(**LARGE)
    # 711 tensors: 488 of WavLM-Large, 222 of the head, the classifier (what the published file holds).
    assert len(layout) == 711 and sum(k.startswith(B) for k in layout) == 488
    state = {k: torch.empty(shape, device="meta") for k, shape in layout.items()}
    arch = Architecture.of(state, "large")
    assert arch == Architecture()  # the sizes read off the shapes are WavLM-Large + ECAPA_TDNN_SMALL's
    with torch.device("meta"):
        model = model_class()(arch)
    converted = convert_state(state, model.state_dict(), "large")  # raises on any missing or unexpected key
    assert len(converted) == 710 and set(converted) == set(model.state_dict())


def test_files_equal_the_reference(encoder, tiny_state):
    assert encoder.name == "wavlm-large-sv" and encoder.sample_rate == 16000 and encoder.embedding_size == TINY["emb"]
    out = encoder.embed_files(FILES)
    assert out.shape == (4, TINY["emb"]) and out.dtype == np.float32
    tensors = [*encoder.model.parameters(), *encoder.model.buffers()]
    assert not any(t.is_meta for t in tensors) and {t.dtype for t in tensors} == {torch.float32, torch.int64}
    expected = reference_rows(tiny_state, FILES)
    # 8.7e-6 measured: float32 rounding, which the final BatchNorm's small variances amplify. (Taking transformers
    # 5's hidden_states as s3prl's, whose last one is not layer-normed, moves them by 0.12.)
    np.testing.assert_allclose(out, expected, rtol=0, atol=3e-5)
    assert (expected @ expected.T).min() < 0.9  # the utterances' embeddings differ: the comparison means something
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    signals = [sf.read(f, dtype="float32")[0] for f in FILES]
    np.testing.assert_allclose(encoder.embed_signals(signals, 16000), out, rtol=0, atol=1e-6)
    # The hidden states really are mixed: their weights are not uniform.
    assert torch.softmax(tiny_state["feature_weight"], 0).std() > 0.01


def test_stripped_classifier_and_folder_and_default_location(tiny, tiny_state, encoder, tmp_path, monkeypatch):
    folder = tmp_path / "folder"
    folder.mkdir()
    write_checkpoint(folder / "wavlm_large_finetune.pth",
                     {k: v for k, v in tiny_state.items() if not k.startswith("loss_calculator.")})
    stripped = get_encoder("wavlm-large-sv", model=folder)
    np.testing.assert_array_equal(stripped.embed_files(FILES[:1]), encoder.embed_files(FILES[:1]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / "deep-speaker" / "wavlm-large-sv" / "wavlm_large_finetune.pth"
    with pytest.raises(DeepSpeakerError) as exc:
        get_encoder("wavlm-large-sv")
    message = str(exc.value)
    assert "\n" not in message and str(expected) in message
    assert f"gdown 1-aE1NfzpRCLxA4GUxX9ITI3F9LlbtEGP -O {expected}" in message
    expected.parent.mkdir(parents=True)
    expected.write_bytes(tiny.read_bytes())
    found = get_encoder("wavlm-large-sv")
    assert found.path == expected and found.identity == encoder.identity


def test_identity_follows_the_weights(encoder, tiny, tiny_state, tmp_path):
    assert encoder.identity == get_encoder("wavlm-large-sv", model=tiny).identity
    changed = dict(tiny_state, **{"linear.bias": tiny_state["linear.bias"] + 1e-3})
    other = get_encoder("wavlm-large-sv", model=write_checkpoint(tmp_path / "changed.pth", changed))
    assert other.identity != encoder.identity
    assert np.abs(other.embed_files(FILES[:1]) - encoder.embed_files(FILES[:1])).max() > 1e-6


def test_bad_checkpoints_are_one_line_errors(tiny_state, tmp_path):
    cases = {
        "missing": ({k: v for k, v in tiny_state.items() if k != f"{B}encoder.layers.1.self_attn.grep_a"},
                    f"missing key {B}encoder.layers.1.self_attn.grep_a"),
        "unexpected": (dict(tiny_state, **{"layer2.shortcut.weight": torch.zeros(1)}),
                       "unexpected key layer2.shortcut.weight"),
        "shape": (dict(tiny_state, **{"linear.bias": torch.zeros(3)}), "linear.bias has shape (3,)"),
        "head": ({k: v for k, v in tiny_state.items() if not k.startswith("layer1.")}, "no layer1.conv.weight"),
        "renamed": ({k.replace(B, "feature_extract.wavlm."): v for k, v in tiny_state.items()},
                    f"not a UniSpeech WavLM + ECAPA-TDNN checkpoint (no {B}feature_extractor.conv_layers.0.0.weight)"),
        "weights": (dict(tiny_state, feature_weight=torch.zeros(7)), "feature_weight has (7,) weights"),
        "rank": (dict(tiny_state, **{"layer1.conv.weight": torch.zeros(3)}), "shapes that do not fit"),
    }
    for name, (state, expected) in cases.items():
        with pytest.raises(DeepSpeakerError) as exc:
            get_encoder("wavlm-large-sv", model=write_checkpoint(tmp_path / f"{name}.pth", state))
        assert expected in str(exc.value) and "\n" not in str(exc.value), (name, str(exc.value))
    # A file that needs pickle to load (here an argparse.Namespace beside the tensors) is refused unread.
    pickled = write_checkpoint(tmp_path / "pickled.pth", tiny_state, args=argparse.Namespace(lr=0.1))
    plain = tmp_path / "plain.pth"
    torch.save(tiny_state, plain)  # a bare state dict, not {'model': ...}
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    for path, expected in ((pickled, "not a tensors-only torch checkpoint (UnpicklingError"),
                           (plain, "no 'model' dict of tensors"), (garbage, "not a tensors-only torch checkpoint")):
        with pytest.raises(DeepSpeakerError) as exc:
            get_encoder("wavlm-large-sv", model=path)
        assert str(exc.value).startswith(f"{path}: {expected}") and "\n" not in str(exc.value), str(exc.value)
    with pytest.raises(DeepSpeakerError, match="device 'nonsense' unusable") as exc:
        get_encoder("wavlm-large-sv", model=write_checkpoint(tmp_path / "good.pth", tiny_state), device="nonsense")
    assert "\n" not in str(exc.value)


def test_too_short_and_unusable_signals_are_failures(encoder, tmp_path):
    speech = sf.read(FILES[0], dtype="float32")[0]
    assert encoder.settings["min_audio_seconds"] == 0.25
    short, enough = tmp_path / "short.wav", tmp_path / "enough.wav"
    sf.write(short, speech[16000:16000 + 3999], 16000)
    sf.write(enough, speech[16000:16000 + 4000], 16000)
    result = encoder.embed_files_with_failures([str(short), str(enough)])
    assert result.paths == [str(enough)] and np.all(np.isfinite(result.embeddings))
    assert [f.path for f in result.failures] == [str(short)] and "too short" in result.failures[0].reason
    with pytest.raises(AudioError, match="not a finite mono signal"):
        encoder.embed_signals([np.full(8000, np.nan, np.float32)])


def test_cli_similarity_and_verify_score_the_reference_cosine(tiny, tiny_state, tmp_path, capsys):
    rows = reference_rows(tiny_state, FILES[:3])
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"reference,generated\n{FILES[0]},{FILES[1]}\n{FILES[0]},{FILES[2]}\n")
    out = tmp_path / "per_pair.csv"
    assert main(["similarity", str(pairs), "--encoder", "wavlm-large-sv", "--model", str(tiny), "--per-pair",
                 str(out), "--bootstrap", "0"]) == 0
    with open(out, newline="") as f:
        scored = list(csv.DictReader(f))
    assert [r["encoder"] for r in scored] == ["wavlm-large-sv"] * 2
    np.testing.assert_allclose([float(r["similarity"]) for r in scored], [rows[0] @ rows[1], rows[0] @ rows[2]],
                               atol=1e-4)  # the table rounds
    assert abs(float(scored[0]["similarity"]) - float(scored[1]["similarity"])) > 0.01
    capsys.readouterr()
    assert main(["verify", FILES[0], FILES[1], "--encoder", "wavlm-large-sv", "--model", str(tiny)]) == 0
    assert f"score (cosine similarity) = {rows[0] @ rows[1]:.4f}" in capsys.readouterr().out


def test_missing_package_is_one_line(monkeypatch, capsys):
    # Imported first, whatever ran before, so that monkeypatch puts the real module back afterwards and later tests
    # never get the one imported without transformers.
    importlib.import_module("deep_speaker.encoders.wavlm_large_sv")
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "deep_speaker.encoders.wavlm_large_sv")
    with pytest.raises(DeepSpeakerError) as exc:
        get_encoder("wavlm-large-sv")
    assert str(exc.value) == INSTALL
    assert main(["verify", FILES[0], FILES[1], "--encoder", "wavlm-large-sv"]) == 2
    assert capsys.readouterr().err.strip().endswith(INSTALL)
