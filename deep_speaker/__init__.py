"""deep-speaker: speaker embeddings (Deep Speaker ResCNN), verification and the evaluation of generated speech."""

__version__ = "0.1.0"
