"""The model layer's choices that command lines show, in a module that imports nothing: building the
``deep-speaker`` parser (``--help``, a usage error) must not wait for Keras. ``model.rescnn`` and ``model.export``
keep these names."""

PRECISIONS = ("float32", "mixed_bfloat16")  # mixed_float16 would need loss scaling and is slow on CPU
HEADS = ("softmax", "aam")  # softmax: the original Dense + softmax; aam: cosines for the AAM-softmax loss
EXPORT_FORMATS = ("onnx", "savedmodel")
TRIPLET_MARGIN = 0.1  # the triplet loss's margin alpha, the original's
# How a student distils from a --teacher: a learned projection of its embedding regresses the teacher's (cosine), or
# its embeddings' pairwise cosines match the teacher's over the batch.
TEACHER_LOSSES = ("projection", "pairwise")
