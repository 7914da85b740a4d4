"""The run-folder layout, the one home of it: ``OUT/<phase>/{last.keras, best.keras, state.json, log.csv}``.

Training writes it (``deep_speaker.train``); inference only reads it (the default model is the newest triplet
checkpoint), so this lives beside the model and not in the training package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LAST, BEST, STATE, LOG = "last.keras", "best.keras", "state.json", "log.csv"


def run_dir(root: str | os.PathLike, phase: str) -> Path:
    """``OUT/<phase>``: the folder of one phase's run."""
    return Path(root) / phase


def latest_checkpoint(root: str | os.PathLike, phase: str) -> Path | None:
    """OUT/<phase>/last.keras when a run of that phase has saved one (with its state.json), else None."""
    run = run_dir(root, phase)
    return run / LAST if (run / LAST).is_file() and (run / STATE).is_file() else None


def best_checkpoint(root: str | os.PathLike, phase: str) -> Path | None:
    """OUT/<phase>/best.keras, else its last.keras, else None."""
    return model_in_run(run_dir(root, phase))


def model_in_run(run: str | os.PathLike) -> Path | None:
    """The model a run folder stands for: best.keras, else last.keras, else None."""
    run = Path(run)
    return next((p for p in (run / BEST, run / LAST) if p.is_file()), None)


def read_state(run: str | os.PathLike) -> dict:
    """The state.json of a run folder."""
    return json.loads((Path(run) / STATE).read_text())
