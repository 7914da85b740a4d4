"""``deep-speaker export-model [--model PATH] --format onnx|savedmodel -o OUT``: the embedding model, standalone."""

from __future__ import annotations

import argparse

from ..model.constants import EXPORT_FORMATS
from . import EXIT_OK, native_stderr_silenced


def run(args: argparse.Namespace) -> int:
    """Export the model's float32 embedding network with the Embedder's front end as its metadata."""
    with native_stderr_silenced():  # Keras loads: TensorFlow's C++ start-up lines
        from ..encoders.deepspeaker import Embedder
        from ..model.export import INPUT_NAME, METADATA_FILE, METADATA_KEY, OUTPUT_NAME, export_model

    # None: default_model_path(), as every command resolves it. The Embedder's settings are the front end recorded.
    embedder = Embedder(args.model)
    out = export_model(embedder.model, args.output, format=args.format, front_end=embedder.settings)
    where = f"metadata_props['{METADATA_KEY}']" if args.format == "onnx" else f"{out / METADATA_FILE}"
    print(f"wrote the {args.format} embedding model {out} (model {embedder.identity}): input '{INPUT_NAME}' "
          f"float32 [batch, frames, 64, 1], output '{OUTPUT_NAME}' [batch, {embedder.embedding_size}]; "
          f"front end in {where}, see docs/EXPORT.md")
    return EXIT_OK


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-model", help="the embedding model as ONNX or a TensorFlow SavedModel",
        description="Write the Deep Speaker embedding model (float32; input 'features' [batch, frames, 64, 1], "
                    "output 'embedding' [batch, 512], L2-normalised) as an ONNX file for onnxruntime or a "
                    "TensorFlow SavedModel folder, with the feature front end, the windowing and the model "
                    "identity in its metadata. Written atomically: an interrupted export leaves nothing under OUT.")
    parser.add_argument("--model", metavar="PATH", default=None,
                        help=".keras, original .h5, or a training run folder (default: the newest triplet checkpoint "
                             "under checkpoints/, else the packaged demo model)")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                        help="onnx: one file; savedmodel: a folder (an existing SavedModel there is replaced)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the file (onnx) or folder (savedmodel)")
    parser.set_defaults(func=run)
