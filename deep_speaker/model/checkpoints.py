"""The run-folder layout, the one home of it: ``OUT/<phase>/{last.keras, best.keras, state.json, log.csv}``.

Training writes it (``deep_speaker.train``); inference only reads it (the default model is the newest triplet
checkpoint), so this lives beside the model and not in the training package.

A checkpoint is one atomic unit: ``last.keras`` carries the training state it belongs to inside its own zip
(``deep_speaker_state.json``), and ``state.json`` is a readable copy written after it. A kill between the two
leaves a stale copy, which :func:`resume_state` repairs from the model file; ``best.keras`` carries the best
value and step it was saved at, so a resumed run never replaces it by a worse model.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

from ..atomic import json_text, save_model, write_json
from ..errors import DeepSpeakerError

LAST, BEST, STATE, LOG = "last.keras", "best.keras", "state.json", "log.csv"
STATE_ENTRY = "deep_speaker_state.json"  # the state inside a checkpoint's .keras zip

log = logging.getLogger(__name__)


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
    path = Path(run) / STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeepSpeakerError(f"{path}: unreadable training state ({exc})") from None
    if not isinstance(state, dict):
        raise DeepSpeakerError(f"{path}: not a training state")
    return state


def remove_stale_temporaries(run: str | os.PathLike) -> list[Path]:
    """Delete the temporary model files (``.<name>.XXXX.tmp.keras``) of saves that a kill interrupted."""
    run = Path(run)
    stale = sorted(run.glob(".*.tmp.keras")) if run.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def embedded_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The training state a checkpoint file carries (None for one saved without, e.g. by an older version)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if STATE_ENTRY not in archive.namelist():
                return None
            return json.loads(archive.read(STATE_ENTRY))
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DeepSpeakerError(f"{path}: unreadable checkpoint ({exc})") from None


def save_checkpoint(model: Any, run: str | os.PathLike, state: dict[str, Any], best: bool = False) -> None:
    """Save a resumable checkpoint: best.keras first when ``best``, then last.keras with the state inside, then
    the state.json copy. Each file is atomic, and each carries what a resumed run needs to trust it."""
    run = Path(run)
    if best:
        save_model(model, run / BEST, {STATE_ENTRY: json_text(state).encode()})
    save_model(model, run / LAST, {STATE_ENTRY: json_text(state).encode()})
    write_json(run / STATE, state, indent=1)


def resume_state(run: str | os.PathLike) -> dict[str, Any] | None:
    """The state to resume a run folder from, None for a fresh folder; a one-line error for one that cannot be.

    A folder with best.keras or state.json but no last.keras (a save stopped by a full disk, say) is refused:
    a fresh start would silently overwrite its best model. A stale state.json is repaired from last.keras.
    """
    run = Path(run)
    present = [name for name in (LAST, BEST, STATE) if (run / name).is_file()]
    if not present:
        return None
    if LAST not in present:
        raise DeepSpeakerError(f"{run} holds {' and '.join(present)} but no {LAST} to resume from (a save that did "
                               f"not finish, e.g. on a full disk?); a fresh start would overwrite them: move the "
                               f"folder away or choose another output folder")
    state = embedded_state(run / LAST)
    if state is None:  # saved before checkpoints carried their state: state.json must be there
        if STATE not in present:
            raise DeepSpeakerError(f"{run}: {LAST} without {STATE}; cannot tell which step it is")
        return read_state(run)
    copy = read_state(run) if STATE in present else None
    if copy != state:
        log.info("%s: %s did not match %s (a kill between the two writes); restored it from the checkpoint",
                 run, STATE, LAST)
        write_json(run / STATE, state, indent=1)
    best = embedded_state(run / BEST) if (run / BEST).is_file() else None
    if best is not None and best.get("best_step") is not None and best["best_step"] > (state.get("best_step") or -1):
        # best.keras was saved, then the kill came before last.keras: its value is the best to beat.
        state = {**state, "best_value": best["best_value"], "best_step": best["best_step"]}
    return state
