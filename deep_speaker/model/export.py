"""The embedding model as a standalone artefact: ONNX (for onnxruntime) or a TensorFlow SavedModel, front end included.

Input ``features``: float32 ``[batch, frames, 64, 1]``, the normalised filterbank features of one window per row
(any number of frames); output ``embedding``: float32 ``[batch, 512]``, the L2-normalised embedding of each row.
The artefact carries its front end and model identity as JSON (:func:`export_metadata`): in the ONNX file's
``metadata_props`` under ``deep_speaker``, in the SavedModel folder as ``deep_speaker.json``. docs/EXPORT.md
says how to feed it.

Both go through Keras' own export (``model.export(format="onnx")``, which converts with tf2onnx, and
``keras.export.ExportArchive``), on the TensorFlow backend. Both are atomic: the artefact is written under a
temporary name beside the final one and renamed onto it, so a killed export leaves no half artefact there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import keras

from .. import __version__
from ..atomic import _process_umask, _temporary_beside, json_text, write_json
from ..data.features import FEATURE_SETTINGS, NUM_FILTERS
from ..errors import DeepSpeakerError
from ..settings import check_choice, settings_difference
from .constants import EXPORT_FORMATS
from .rescnn import load_model, model_identity, to_embedding_model, with_precision

INPUT_NAME, OUTPUT_NAME = "features", "embedding"
BATCH_AXIS, FRAMES_AXIS = "batch", "frames"  # the names of the ONNX file's dynamic axes
METADATA_KEY = "deep_speaker"  # the ONNX metadata_props entry holding the metadata JSON
METADATA_FILE = "deep_speaker.json"  # the metadata inside a SavedModel folder
ONNX_OPSET = 17  # onnxruntime >= 1.11 runs it; fixed so the file does not depend on tf2onnx's default
SAVED_MODEL_FILE = "saved_model.pb"
# What the front end must state besides the features: how an utterance's features become model inputs (by the
# Embedder's pooling) and how their embeddings become the utterance's.
INPUT_KEYS = {"windows": ("trim", "min_audio_seconds", "window_frames", "hop_frames", "min_frames"),
              "utterance": ("trim", "min_audio_seconds", "pooling", "max_frames", "multiple_frames", "min_frames")}
INPUTS = {
    "windows": "features [T, 64] of the trimmed 16 kHz signal; windows of window_frames frames every hop_frames, "
               "plus one ending at the last frame; an utterance of at most window_frames frames is one window, "
               "zero-padded at the end to min_frames when shorter",
    "utterance": "features [T, 64] of the trimmed 16 kHz signal; ceil(T / max_frames) near-equal consecutive pieces "
                 "of ceil(T / count) frames (one piece for most utterances), each zero-padded at the end to at least "
                 "min_frames and to a multiple of multiple_frames"}
POOLING = "utterance embedding = L2-normalised mean of the embeddings of its rows"


def export_metadata(model: keras.Model, front_end: Mapping[str, Any]) -> dict[str, Any]:
    """What a user of the artefact needs: input/output names and shapes, the front end, the model identity."""
    pooling = front_end.get("pooling", "windows")  # the Embedder's windows settings name no pooling (compatibility)
    if pooling not in INPUT_KEYS:
        raise DeepSpeakerError(f"the front end to record has no known pooling ({pooling!r}; pass the Embedder's "
                               f"settings)")
    missing = [key for key in (*FEATURE_SETTINGS, *INPUT_KEYS[pooling]) if key not in front_end]
    if missing:
        raise DeepSpeakerError(f"the front end to record lacks {', '.join(missing)} (pass the Embedder's settings)")
    features = {key: front_end[key] for key in FEATURE_SETTINGS}
    if features != FEATURE_SETTINGS:  # the model identity hashes FEATURE_SETTINGS: other features, another model
        raise DeepSpeakerError(f"the front end's features differ from this version's: "
                               f"{settings_difference(features, FEATURE_SETTINGS)}")
    import tensorflow as tf

    return {
        "model_identity": model_identity(model),
        "model_name": model.name,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [BATCH_AXIS, FRAMES_AXIS, NUM_FILTERS, 1],
                  "description": "normalised fbank features of one window or piece per row (front_end, "
                                 "windowing)"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [BATCH_AXIS, int(model.output_shape[-1])],
                   "description": "L2-normalised embedding of each row"},
        "front_end": dict(front_end),
        "windowing": INPUTS[pooling],
        "pooling": POOLING,
        "exported_with": {"deep_speaker": __version__, "keras": keras.__version__, "tensorflow": tf.__version__},
    }


def export_model(model: keras.Model | str | os.PathLike, out_path: str | os.PathLike, *, format: str,
                 front_end: Mapping[str, Any]) -> Path:
    """Write the float32 embedding model of ``model`` (a model or a path ``load_model`` reads) to ``out_path``
    as ``format`` ('onnx': one file; 'savedmodel': a folder), with :func:`export_metadata` inside; returns the path.

    ``front_end`` is how its inputs are made: the Embedder's ``settings`` (features, trim, window, hop, padding).
    """
    check_choice(format, EXPORT_FORMATS, "export format")
    if keras.backend.backend() != "tensorflow":  # both routes trace a TensorFlow graph of the model
        raise DeepSpeakerError(f"export needs the TensorFlow backend, not {keras.backend.backend()}: "
                               f"run with KERAS_BACKEND=tensorflow")
    out_path = Path(out_path)
    if not isinstance(model, keras.Model):
        model = load_model(model)
    # ONNX export takes float32 only; a mixed-precision model's float32 twin has the same weights.
    model = with_precision(to_embedding_model(model), "float32")
    metadata = export_metadata(model, front_end)
    signature = [_input_spec()]
    if format == "onnx":
        return _export_onnx(model, signature, out_path, metadata)
    return _export_saved_model(model, signature, out_path, metadata)


def _input_spec():
    import tensorflow as tf

    return tf.TensorSpec([None, None, NUM_FILTERS, 1], tf.float32, name=INPUT_NAME)


def _export_onnx(model: keras.Model, signature: list, path: Path, metadata: dict[str, Any]) -> Path:
    """``model.export(format="onnx")`` into a temporary file; named axes, output and metadata; renamed onto ``path``."""
    try:
        import onnx
        import tf2onnx  # noqa: F401  (Keras converts with it; checked here for a clear message)
    except ImportError as exc:
        raise DeepSpeakerError(f"ONNX export needs onnx and tf2onnx ({exc.name} is missing): "
                               f"pip install 'deep-speaker[export]'") from None
    metadata = {**metadata, "exported_with": {**metadata["exported_with"], "tf2onnx": tf2onnx.__version__,
                                              "onnx_opset": ONNX_OPSET}}
    with _temporary_beside(path, ".tmp.onnx") as (tmp, fd):
        os.close(fd)
        with warnings.catch_warnings():  # Keras' numpy-2 patch of tf2onnx touches the deprecated np.object
            warnings.simplefilter("ignore", FutureWarning)
            model.export(str(tmp), format="onnx", input_signature=signature, opset_version=ONNX_OPSET, verbose=False)
        proto = onnx.load(str(tmp))
        _name_interface(proto)
        proto.doc_string = f"deep-speaker {model.name}: {INPUT_NAME} [batch, frames, 64, 1] -> {OUTPUT_NAME}; " \
                           f"see metadata_props['{METADATA_KEY}']"
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json_text(metadata)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


def _name_interface(proto) -> None:
    """Name the output ``embedding`` and the dynamic axes ``batch`` and ``frames`` (tf2onnx: Identity:0, unk__N)."""
    graph = proto.graph
    (inp,), (out,) = graph.input, graph.output
    renamed = {out.name: OUTPUT_NAME}
    for node in graph.node:
        node.output[:] = [renamed.get(name, name) for name in node.output]
        node.input[:] = [renamed.get(name, name) for name in node.input]
    out.name = OUTPUT_NAME
    in_dims, out_dims = inp.type.tensor_type.shape.dim, out.type.tensor_type.shape.dim
    axes = {in_dims[0].dim_param: BATCH_AXIS, in_dims[1].dim_param: FRAMES_AXIS, out_dims[0].dim_param: BATCH_AXIS}
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in axes:
                dim.dim_param = axes[dim.dim_param]


def _export_saved_model(model: keras.Model, signature: list, path: Path, metadata: dict[str, Any]) -> Path:
    """A SavedModel with one endpoint ``serve`` (also ``serving_default``): ``{embedding: model(features)}``."""
    with atomic_folder(path) as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", lambda features: {OUTPUT_NAME: model(features, training=False)},
                             input_signature=signature)
        archive.write_out(str(tmp), verbose=False)
        write_json(tmp / METADATA_FILE, metadata)
    return path


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` (``.<name>.XXXX.tmp``), renamed onto it when the block succeeds.

    A SavedModel already at ``path`` is replaced (moved aside, then deleted once the new one is in place); any
    other file or folder there is refused, so a mistyped ``-o`` never deletes the user's files.
    """
    if path.exists() and not (path.is_dir() and (path / SAVED_MODEL_FILE).is_file()):
        raise DeepSpeakerError(f"{path}: exists and is not a SavedModel folder; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_process_umask())  # mkdtemp makes it 0700: give the mode mkdir would
        if path.exists():  # a folder cannot be renamed onto a non-empty one: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent)) / path.name
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an exported artefact: an ONNX file's ``metadata_props`` entry or a SavedModel's JSON file."""
    path = Path(path)
    try:
        if path.is_dir():
            return json.loads((path / METADATA_FILE).read_text(encoding="utf8"))
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if METADATA_KEY not in props:
            raise DeepSpeakerError(f"{path}: no deep-speaker metadata (not exported by deep-speaker?)")
        return json.loads(props[METADATA_KEY])
    except DeepSpeakerError:
        raise
    except Exception as exc:  # OSError, bad JSON, protobuf's DecodeError for a file that is not ONNX
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DeepSpeakerError(f"{path}: unreadable export metadata ({reason})") from None
