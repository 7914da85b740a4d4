"""Training the ResCNN: configuration (config), devices (strategy), Keras callbacks (callbacks), batches
(batching), the original's three phases (phases), training across processes (multiworker) and which of the two
runs a phase (run).

``Trainer`` (from ``phases``) and ``train`` (from ``run``) are imported when first used (PEP 562): they load
Keras, which the configuration (and the command line's --help, built from it) does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import DEFAULT_STEPS, MONITORS, OPTIMIZERS, PHASES, STRATEGIES, TrainConfig, phase_defaults

__all__ = ["DEFAULT_STEPS", "MONITORS", "OPTIMIZERS", "PHASES", "STRATEGIES", "TrainConfig", "Trainer",
           "phase_defaults", "train"]


def __getattr__(name: str) -> Any:
    homes = {"Trainer": "phases", "train": "run"}
    if name not in homes:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{homes[name]}"), name)
