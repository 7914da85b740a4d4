"""deep-speaker: speaker embeddings (Deep Speaker ResCNN), verification and the evaluation of generated speech."""

import os

# TensorFlow's C++ start-up banner (oneDNN, CPU features) is noise to users; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
