"""The ResCNN of Deep Speaker in Keras 3, checkpoint-compatible with the original Keras 2 implementation.

Layer names are the original's (`conv64-s`, `res1_0_branch_2a_bn`, ..., `affine`, `ln`), so original
HDF5 checkpoints load by layer name with Keras' own legacy loader. There are no Lambda layers: the
clipped ReLU, temporal average and L2 normalisation are small registered layers (deep_speaker.layers),
so a saved `.keras` model loads with `safe_mode=True`.

Padding: the stride-2 5x5 convolutions use Keras `padding="same"`, which pads TensorFlow's way (the odd
extra row/column at the bottom/right) on every Keras 3 backend: TensorFlow natively, JAX through
`lax.conv_general_dilated(padding="SAME")` (low = total // 2) and torch through Keras'
`_compute_padding_length` (extra pixel at the end). tests/test_model.py checks it on odd and even sizes.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import NamedTuple

import h5py
import keras
import numpy as np

from ..data.features import FEATURE_SETTINGS, NUM_FILTERS
from ..errors import DeepSpeakerError
from ..settings import check_choice
from . import losses  # noqa: F401  registers the losses a compiled checkpoint names, for keras.saving.load_model
from .checkpoints import BEST, LAST, model_in_run
from .constants import HEADS, PRECISIONS, TEACHER_LOSSES
from .layers import (BatchNormalization, ClippedReLU, CosineHead, L2Normalize, TeacherPairwise, TeacherProjection,
                     TemporalAverage)

STAGE_FILTERS = (64, 128, 256, 512)
STRIDE = 2 ** len(STAGE_FILTERS)  # input frames (and bands) per output frame (and band): a stride-2 convolution per stage
EMBEDDING_SIZE = 512
WEIGHT_DECAY = 1e-4
HEAD_NAME = "softmax-layer"
TEACHER_NAME = "teacher-projection"  # the distillation layer of a model trained with --teacher (either loss)
TEACHER_LAYERS = {"projection": TeacherProjection, "pairwise": TeacherPairwise}
RESCNN_LAYERS = ("conv64-s", "affine")  # what every ResCNN has, whatever its width and head


class Teacher(NamedTuple):
    """What a head model's distillation layer holds: the teacher's embedding size, the loss's weight and kind."""

    size: int
    weight: float
    loss: str = "projection"

    def __str__(self) -> str:
        return f"with a {self.size}-d teacher at weight {self.weight:g} ({self.loss})"


def _policy(precision: str) -> str:
    """The Keras dtype policy name for a precision, set per layer so the global policy is untouched."""
    return check_choice(precision, PRECISIONS, "precision")


def scaled_filters(filters: int, width: float) -> int:
    """max(1, round(filters * width)): the filter count of a stage at a width factor."""
    return max(1, int(round(filters * width)))


def build_rescnn(
    *, width: float = 1.0,
    num_speakers: int | None = None,
    dropout: float = 0.5,
    precision: str = "float32",
    head: str = "softmax",
    teacher: Teacher | None = None,
) -> keras.Model:
    """The original ResCNN: input [batch, T, 64, 1] -> L2-normalised 512-d embedding, or a head over speakers
    (head "softmax": the original's softmax probabilities; "aam": cosines to each speaker, for AAMSoftmaxLoss).

    ``teacher``: a head model also takes a teacher's embedding of each crop's utterance (a second input,
    "teacher") and adds the distillation loss of :class:`TeacherProjection` or :class:`TeacherPairwise` (the
    teacher's ``loss``, at its ``weight``) to its own."""
    check_choice(head, HEADS, "softmax head")
    if width <= 0:
        raise DeepSpeakerError(f"width must be positive, got {width}")
    if num_speakers is not None and num_speakers < 1:
        raise DeepSpeakerError(f"num_speakers must be at least 1, got {num_speakers}")
    if teacher is not None and (num_speakers is None or teacher.size < 1):
        raise DeepSpeakerError("a teacher's distillation needs a speaker head and a positive embedding size")
    if teacher is not None:
        check_choice(teacher.loss, TEACHER_LOSSES, "teacher loss")
    policy = _policy(precision)
    counter = {"relu": 0, "add": 0}

    def clipped_relu(x):
        # Named as the original names its Lambdas, so model.layers matches the file's layer_names.
        name = f"clipped_relu_{counter['relu']}"
        counter["relu"] += 1
        return ClippedReLU(20.0, name=name, dtype=policy)(x)

    def conv_bn(x, filters, kernel, *, strides, name):
        x = keras.layers.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            kernel_initializer="glorot_uniform",
            kernel_regularizer=keras.regularizers.L2(WEIGHT_DECAY),
            name=name,
            dtype=policy,
        )(x)
        # Keras defaults momentum 0.99 / epsilon 1e-3 are the original's (PyTorch's 1e-5 would not match).
        return BatchNormalization(name=f"{name}_bn", dtype=policy)(x)

    def identity_block(inp, filters, *, stage, block):
        base = f"res{stage}_{block}_branch"
        x = clipped_relu(conv_bn(inp, filters, 3, strides=1, name=f"{base}_2a"))
        # The original clips before the residual add as well as after it.
        x = clipped_relu(conv_bn(x, filters, 3, strides=1, name=f"{base}_2b"))
        name = "add" if counter["add"] == 0 else f"add_{counter['add']}"
        counter["add"] += 1
        x = keras.layers.Add(name=name, dtype=policy)([x, inp])
        return clipped_relu(x)

    inputs = keras.Input(shape=(None, NUM_FILTERS, 1), name="input")
    x = inputs
    for stage, base_filters in enumerate(STAGE_FILTERS, start=1):
        filters = scaled_filters(base_filters, width)
        x = clipped_relu(conv_bn(x, filters, 5, strides=2, name=f"conv{base_filters}-s"))
        for block in range(3):
            x = identity_block(x, filters, stage=stage, block=block)
    # Channels-last [B, T/16, 4, F] -> [B, T/16, 4*F]: feature index freq*F + channel, as the original.
    x = keras.layers.Reshape((-1, (NUM_FILTERS // STRIDE) * filters), name="reshape", dtype=policy)(x)
    x = TemporalAverage(name="average", dtype=policy)(x)
    if num_speakers is not None:
        x = keras.layers.Dropout(dropout, name="dropout", dtype=policy)(x)
    x = keras.layers.Dense(EMBEDDING_SIZE, name="affine", dtype=policy)(x)
    model_inputs = [inputs]
    if teacher is not None:
        model_inputs.append(keras.Input(shape=(teacher.size,), name="teacher"))
        x = TEACHER_LAYERS[teacher.loss](teacher.size, teacher.weight, name=TEACHER_NAME)([x, model_inputs[1]])
    if num_speakers is None:
        x = L2Normalize(name="ln")(x)
    elif head == "aam":
        x = CosineHead(num_speakers, name=HEAD_NAME)(x)
    else:
        # float32 head: a softmax over many speakers in bfloat16 would saturate the loss.
        x = keras.layers.Dense(num_speakers, activation="softmax", name=HEAD_NAME, dtype="float32")(x)
    name = "ResCNN" if width == 1 else f"ResCNN_w{width:g}"
    return keras.Model(model_inputs if teacher is not None else inputs, x, name=name)


def model_width(model: keras.Model) -> float:
    """filters(conv64-s) / 64: the width factor a ResCNN was built with."""
    return model.get_layer("conv64-s").filters / STAGE_FILTERS[0]


def model_precision(model: keras.Model) -> str:
    """The dtype policy name of the convolutions ('float32' or 'mixed_bfloat16')."""
    return model.get_layer("conv64-s").dtype_policy.name


def num_speakers_of(model: keras.Model) -> int | None:
    """Units of the softmax head, or None for an embedding model."""
    head = _find_layer(model, HEAD_NAME)
    return None if head is None else head.units


def teacher_of(model: keras.Model) -> Teacher | None:
    """The teacher a head model distils from (embedding size, loss weight and kind), None without one."""
    layer = _find_layer(model, TEACHER_NAME)
    if layer is None:
        return None
    return Teacher(layer.units, layer.weight, next(k for k, kind in TEACHER_LAYERS.items() if isinstance(layer, kind)))


def head_of(model: keras.Model) -> str:
    """The kind of head ("softmax" or "aam") of a model with one; "softmax" for an embedding model."""
    return "aam" if isinstance(_find_layer(model, HEAD_NAME), CosineHead) else "softmax"


def _find_layer(model: keras.Model, name: str):
    return next((layer for layer in model.layers if layer.name == name), None)


def _copy_weights_by_name(source: keras.Model, target: keras.Model) -> None:
    """Copy the weights of every layer of target that source has under the same name."""
    for layer in target.layers:
        other = _find_layer(source, layer.name)
        if layer.weights and other is not None:
            layer.set_weights(other.get_weights())


def to_embedding_model(model: keras.Model) -> keras.Model:
    """The embedding model (input -> affine -> ln, no dropout) of a softmax model, weights copied; identity otherwise."""
    if num_speakers_of(model) is None:
        return model
    embedding = build_rescnn(width=model_width(model), precision=model_precision(model))
    _copy_weights_by_name(model, embedding)
    return embedding


def averaged_model(models: list[keras.Model]) -> keras.Model:
    """Checkpoint averaging: the embedding model whose every variable (batch-norm statistics included) is the mean
    over the models' embedding models, ``w = (1/K) sum_k w_k``; for checkpoints of one run, which lie near one
    another (e.g. the steps it kept)."""
    embeddings = [to_embedding_model(m) for m in models]
    if not embeddings:
        raise DeepSpeakerError("averaging needs at least one model")
    shapes = [[tuple(w.shape) for w in m.weights] for m in embeddings]
    if any(s != shapes[0] for s in shapes):
        raise DeepSpeakerError("averaged models must be of one width: their weights differ in shape")
    out = build_rescnn(width=model_width(embeddings[0]), precision=model_precision(embeddings[0]))
    out.set_weights([np.mean([np.asarray(m.weights[i]) for m in embeddings], axis=0)
                     for i in range(len(shapes[0]))])
    return out


def _rebuilt(model: keras.Model, precision: str) -> keras.Model:
    """build_rescnn of the model's width and head in precision, with the model's weights (by layer name)."""
    other = build_rescnn(width=model_width(model), num_speakers=num_speakers_of(model), precision=precision,
                         head=head_of(model), teacher=teacher_of(model))
    _copy_weights_by_name(model, other)
    return other


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """The same model (width, head, weights) computing in another precision; the model itself if unchanged."""
    return model if model_precision(model) == _policy(precision) else _rebuilt(model, precision)


def _decode(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _legacy_weight_shapes(group: h5py.Group) -> dict[str, list[tuple[int, ...]]]:
    """{layer name: weight shapes in weight_names order} of a Keras 2 HDF5 weights group (metadata only)."""
    shapes = {}
    for name in map(_decode, group.attrs["layer_names"]):
        layer_group = group[name]
        names = [_decode(w) for w in layer_group.attrs.get("weight_names", [])]
        shapes[name] = [tuple(layer_group[w].shape) for w in names]
    return shapes


def _legacy_group(f: h5py.File, path: Path) -> h5py.Group:
    """The group holding layer_names: the root of a save_weights file, model_weights/ of a full-model file."""
    # Only weights are read: model_config of a full-model file holds marshalled Lambda bytecode.
    if "layer_names" in f.attrs:
        return f
    if "model_weights" in f and "layer_names" in f["model_weights"].attrs:
        return f["model_weights"]
    raise DeepSpeakerError(f"{path}: not a Keras 2 HDF5 checkpoint (no layer_names)")


def load_original_weights(model: keras.Model, path: str | Path) -> None:
    """Load an original Keras 2 HDF5 checkpoint (save_weights or full-model file) into model by layer name."""
    path = Path(path)
    if not path.is_file():
        raise DeepSpeakerError(f"checkpoint not found: {path}")
    if path.suffix not in (".h5", ".hdf5"):
        raise DeepSpeakerError(f"{path}: an original checkpoint is a .h5 / .hdf5 file")
    try:
        with h5py.File(path, "r") as f:
            shapes = _legacy_weight_shapes(_legacy_group(f, path))
    except (OSError, KeyError) as e:
        raise DeepSpeakerError(f"{path}: unreadable HDF5 checkpoint ({e})") from None
    _check_compatible(model, shapes, path)
    # Keras' own legacy by-name loader: it follows weight_names order (BN gamma, beta, mean, variance).
    model.load_weights(str(path), by_name=True)
    _load_original_head(model, shapes, path)


def _check_compatible(model: keras.Model, shapes: dict[str, list[tuple[int, ...]]], path: Path) -> None:
    """Raise a one-line DeepSpeakerError at the first weighted layer missing from the file or shaped differently."""
    for layer in model.layers:
        if not layer.weights or layer.name == HEAD_NAME:
            continue
        expected = [tuple(w.shape) for w in layer.weights]
        if layer.name not in shapes:
            raise DeepSpeakerError(f"{path}: layer {layer.name} missing from the checkpoint (not a ResCNN checkpoint?)")
        if shapes[layer.name] != expected:
            raise DeepSpeakerError(
                f"{path}: layer {layer.name} has weights {shapes[layer.name]} in the checkpoint but {expected} "
                f"in this model (width {model_width(model):g}): another architecture or width"
            )


def _load_original_head(model: keras.Model, shapes: dict[str, list[tuple[int, ...]]], path: Path) -> None:
    """Load the original's softmax head (an unnamed Dense after `affine`, 'dense' or 'dense_N') if both have one."""
    head = _find_layer(model, HEAD_NAME)
    if head is None or HEAD_NAME in shapes:  # no head, or already loaded by name
        return
    names = list(shapes)
    after_affine = names[names.index("affine") + 1 :]
    candidates = [n for n in after_affine if len(shapes[n]) == 2 and len(shapes[n][0]) == 2]
    if not candidates:
        return  # an embedding checkpoint: the head keeps its initial weights
    name = candidates[0]
    expected = [tuple(w.shape) for w in head.weights]
    if shapes[name] != expected:
        raise DeepSpeakerError(
            f"{path}: softmax head {name} has weights {shapes[name]} in the checkpoint but {expected} in this model"
        )
    with h5py.File(path, "r") as f:
        group = _legacy_group(f, path)[name]
        head.set_weights([np.asarray(group[_decode(w)]) for w in group.attrs["weight_names"]])


def _weights_h5_shape(path: Path) -> tuple[float, int | None]:
    """(width, num_speakers) of a Keras 3 .weights.h5 of build_rescnn, from the kernel shapes it stores."""
    # Keras 3 keys layers by class and order: conv64-s is "conv2d", affine "dense", the head "dense_1".
    try:
        with h5py.File(path, "r") as f:
            stem = f["layers/conv2d/vars/0"].shape
            head = f["layers/dense_1/vars/0"].shape if "layers/dense_1" in f else None
    except (OSError, KeyError) as e:
        raise DeepSpeakerError(f"{path}: not a ResCNN weights file ({e})") from None
    return stem[-1] / STAGE_FILTERS[0], (None if head is None else head[-1])


def _legacy_width(path: Path) -> float:
    """filters(conv64-s) / 64 of an original HDF5 checkpoint."""
    try:
        with h5py.File(path, "r") as f:
            shapes = _legacy_weight_shapes(_legacy_group(f, path))
    except (OSError, KeyError) as e:
        raise DeepSpeakerError(f"{path}: unreadable HDF5 checkpoint ({e})") from None
    if not shapes.get("conv64-s"):
        raise DeepSpeakerError(f"{path}: layer conv64-s missing from the checkpoint (not a ResCNN checkpoint?)")
    return shapes["conv64-s"][0][-1] / STAGE_FILTERS[0]


def load_model(path: str | Path, precision: str | None = None) -> keras.Model:
    """A ResCNN from a .keras file, a .weights.h5, an original .h5 checkpoint or a run directory (best.keras, else last.keras)."""
    path = Path(path)
    if path.is_dir():
        found = model_in_run(path)
        if found is None:
            raise DeepSpeakerError(f"{path}: no {BEST} or {LAST} in this directory")
        path = found
    if not path.is_file():
        raise DeepSpeakerError(f"model not found: {path}")
    name = path.name
    if name.endswith(".keras"):
        try:
            # safe_mode refuses Lambda bytecode; our layers are registered at import of this module.
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except (ValueError, OSError, TypeError) as e:
            raise DeepSpeakerError(f"{path}: cannot load Keras model ({str(e).splitlines()[0]})") from None
        missing = [name for name in RESCNN_LAYERS if _find_layer(model, name) is None]
        if not isinstance(model, keras.Model) or missing:
            raise DeepSpeakerError(f"{path}: a Keras model, but not a ResCNN (no {' or '.join(missing) or 'layers'}); "
                                   f"pass a deep-speaker checkpoint")
        if any(type(layer) is keras.layers.BatchNormalization for layer in model.layers):
            # Saved before the ResCNN had its own (fused) BatchNormalization: the same weights in today's layers.
            model = _rebuilt(model, model_precision(model))
    elif name.endswith(".weights.h5"):
        width, num_speakers = _weights_h5_shape(path)
        model = build_rescnn(width=width, num_speakers=num_speakers)
        try:
            model.load_weights(path)
        except ValueError as e:
            raise DeepSpeakerError(f"{path}: {str(e).splitlines()[0]}") from None
    elif path.suffix in (".h5", ".hdf5"):
        model = build_rescnn(width=_legacy_width(path))
        load_original_weights(model, path)
    else:
        raise DeepSpeakerError(f"{path}: unknown model format (expected .keras, .weights.h5, .h5 or a run directory)")
    return model if precision is None else with_precision(model, precision)


def model_identity(model: keras.Model) -> str:
    """sha256(FEATURE_SETTINGS, embedding weights)[:16]: equal only for the same embedding function."""
    digest = hashlib.sha256(json.dumps(FEATURE_SETTINGS, sort_keys=True).encode())
    # The softmax head does not change embeddings, so a model and its embedding model share an identity.
    for layer in model.layers:
        if layer.name == HEAD_NAME:
            continue
        for i, weight in enumerate(layer.weights):
            value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight), dtype=np.float32)
            digest.update(f"{layer.name}/{i}{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def conv_flops(model: keras.Model, frames: int) -> float:
    """Sum of 2*H*W*kh*kw*Cin*Cout over convolutions plus 2*in*out over Dense layers, for one input of frames frames."""
    time, freq = frames, NUM_FILTERS
    flops = 0.0
    # The convolutions form one chain (identity blocks keep the size), so the size is tracked in layer order.
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            sh, sw = layer.strides
            time, freq = math.ceil(time / sh), math.ceil(freq / sw)  # "same" padding
            flops += 2.0 * time * freq * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            flops += 2.0 * cin * cout
    return flops
