"""The run-folder layout, the one home of it: ``OUT/<phase>/{last.keras, best.keras, state.json, log.csv}``, and
``OUT/<phase>/steps/step-NNNNNN.keras`` for the checkpoints a run keeps (``--keep_every``).

Training writes it (``deep_speaker.train``); inference only reads it (the default model is the newest triplet
checkpoint), so this lives beside the model and not in the training package.

A checkpoint is one atomic unit: ``last.keras`` carries the training state it belongs to inside its own zip
(``deep_speaker_state.json``), and ``state.json`` is a readable copy written after it. A kill between the two
leaves a stale copy, which :func:`resume_state` repairs from the model file; ``best.keras`` carries the best
value and step it was saved at, so a resumed run never replaces it by a worse model.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ..atomic import json_text, save_model, write_json
from ..errors import DeepSpeakerError, InternalError
from ..validate import checked_field, loads_json, one_line

LAST, BEST, STATE, LOG = "last.keras", "best.keras", "state.json", "log.csv"
KEPT = "steps"  # the folder of the kept checkpoints, one file per step: step-NNNNNN.keras
STATE_ENTRY = "deep_speaker_state.json"  # the state inside a checkpoint's .keras zip

log = logging.getLogger(__name__)

NONE = type(None)
# The fields of a training state (train.phases._state and train.callbacks.RunCheckpoint write them) and their
# JSON types; counts also non-negative. A state read from a file is checked against this before any of it is used
# or copied into state.json, so a damaged or crafted one is refused naming its file instead of crashing a resumed
# run (or being written over a good copy). Fields not listed here (a later version's) are kept as they are.
STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "phase": (str,), "step": (int,), "epoch": (int,), "best_step": (int, NONE), "best_value": (float, NONE),
    "width": (float,), "precision": (str,), "seed": (int,), "crop_frames": (int,), "batch_size": (int,),
    "save_every": (int,), "steps": (int,), "learning_rate": (float,), "feature_settings": (dict,),
    "plateau": (dict, NONE), "last_logs": (dict,), "start_logs": (dict,), "seed_states": (dict,),
    "model_identity": (str,), "embedding_identity": (str,), "workers": (int,), "speakers": (list,),
    "started_from": (str, NONE), "random_crops": (bool,), "softmax_head": (str,), "margin": (float,),
    "scale": (float,), "spec_augment": (list,), "teacher": (str,), "teacher_identity": (str,),
    "teacher_weight": (float,), "lr_schedule": (str,), "triplet_margin": (float,),
    "teacher_loss": (str,), "speaker_weight": (float,),
}
REQUIRED_STATE = ("phase", "step", "width")  # every state written has them, and resuming reads them
COUNTS = ("step", "epoch", "best_step", "crop_frames", "batch_size", "save_every", "steps", "workers")
PLATEAU_FIELDS = {"best": (float, NONE), "wait": (int,), "cooldown_counter": (int,)}  # the plateau's counters


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


def kept_checkpoint(run: str | os.PathLike, step: int) -> Path:
    """``OUT/<phase>/steps/step-NNNNNN.keras``: where a run keeps its model of ``step``."""
    return Path(run) / KEPT / f"step-{step:06d}.keras"


def kept_checkpoints(root: str | os.PathLike, phase: str) -> list[tuple[int, Path]]:
    """The checkpoints a run of ``phase`` kept (``--keep_every``), as (step, path) by step; [] when none."""
    folder = run_dir(root, phase) / KEPT
    kept = []
    for path in sorted(folder.glob("step-*.keras")) if folder.is_dir() else []:
        digits = path.stem.removeprefix("step-")
        if digits.isdigit() and path == kept_checkpoint(run_dir(root, phase), int(digits)) and path.is_file():
            kept.append((int(digits), path))
    return kept


def check_state(state: Any, where: str) -> dict[str, Any]:
    """``state`` when it is a training state as training writes it (:data:`STATE_FIELDS`); else one line naming
    ``where``."""
    if not isinstance(state, dict):
        raise DeepSpeakerError(f"{where}: not a training state (a JSON object)")
    for key, types in STATE_FIELDS.items():
        checked_field(state, key, types, where=where, required=key in REQUIRED_STATE,
                      low=0 if key in COUNTS else -math.inf)
    if state["width"] <= 0:
        raise DeepSpeakerError(f"{where}: field 'width' must be positive, got {state['width']!r}")
    for key, types in PLATEAU_FIELDS.items():
        checked_field(state.get("plateau") or {}, key, types, where=f"{where} plateau", required=False)
    for name, seeds in state.get("seed_states", {}).items():
        if not isinstance(seeds, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds):
            raise DeepSpeakerError(f"{where}: seed_states[{name!r}] must be a list of integers")
    for name, value in state.get("last_logs", {}).items():
        checked_field(state["last_logs"], name, (float, NONE), where=f"{where} last_logs")
    if not all(isinstance(s, str) for s in state.get("speakers", [])):
        raise DeepSpeakerError(f"{where}: speakers must be a list of strings")
    return state


def read_state(run: str | os.PathLike) -> dict:
    """The state.json of a run folder, checked (:func:`check_state`)."""
    path = Path(run) / STATE
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise DeepSpeakerError(f"{path}: unreadable training state ({one_line(exc)})") from None
    return check_state(loads_json(text, path, "training state"), str(path))


def remove_stale_temporaries(run: str | os.PathLike) -> list[Path]:
    """Delete the temporary model files (``.<name>.XXXX.tmp.keras``) of saves that a kill interrupted, in the run
    folder and its kept checkpoints' folder (not through a link: what lies behind one is not this run's)."""
    folders = [f for f in (Path(run), Path(run) / KEPT) if f.is_dir() and not f.is_symlink()]
    stale = sorted(path for folder in folders for path in folder.glob(".*.tmp.keras"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def embedded_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The training state a checkpoint file carries (None for one saved without, e.g. by an older version)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if STATE_ENTRY not in archive.namelist():
                return None
            text = archive.read(STATE_ENTRY)
    except (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error) as exc:
        # RuntimeError: an encrypted entry; NotImplementedError: a compression zipfile cannot read.
        raise DeepSpeakerError(f"{path}: unreadable checkpoint ({one_line(exc)})") from None
    where = f"{path} ({STATE_ENTRY})"
    return check_state(loads_json(text, where, "training state"), where)


def save_checkpoint(model: Any, run: str | os.PathLike, state: dict[str, Any], *, best: bool = False,
                    keep: bool = False) -> None:
    """Save a resumable checkpoint: best.keras first when ``best``, a kept copy of this step when ``keep``, then
    last.keras with the state inside, then the state.json copy. Each file is atomic, and each carries what a resumed
    run needs to trust it."""
    run = Path(run)
    try:  # never write a state that resume_state would refuse: that would be a bug of the writer, found here
        check_state(state, str(run / LAST))
    except DeepSpeakerError as exc:
        raise InternalError(f"training wrote a state it cannot resume from: {exc}") from None
    entries = {STATE_ENTRY: json_text(state).encode()}
    if best:
        save_model(model, run / BEST, entries)
    if keep:
        kept = kept_checkpoint(run, state["step"])
        kept.parent.mkdir(exist_ok=True)
        save_model(model, kept, entries)
    save_model(model, run / LAST, entries)
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
    # Every file is read and checked before state.json is rewritten: a refusal leaves the folder as it was.
    best = embedded_state(run / BEST) if (run / BEST).is_file() else None
    try:
        copy = read_state(run) if STATE in present else None
    except DeepSpeakerError:  # a damaged copy: the checkpoint's own (checked) state is the one to restore
        copy = None
    if copy != state:
        log.info("%s: %s did not match %s (a kill between the two writes); restored it from the checkpoint",
                 run, STATE, LAST)
        write_json(run / STATE, state, indent=1)
    if best is not None and best.get("best_step") is not None and best["best_step"] > (state.get("best_step") or -1):
        # best.keras was saved, then the kill came before last.keras: its value is the best to beat.
        state = {**state, "best_value": best.get("best_value"), "best_step": best["best_step"]}
    return state
