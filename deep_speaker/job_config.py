"""The main job's settings: :class:`JobConfig`, in a module that imports no framework, so that ``deep-speaker run
--help`` (whose options it defines) answers at once. ``pipeline`` runs the job and keeps these names.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DeepSpeakerError
from .eval.constants import DEGRADATION_KINDS, copy_name
from .model.constants import HEADS, PRECISIONS, TEACHER_LOSSES
from .train.config import check_distillation, check_keep_every

BUNDLED_DATA = Path(__file__).resolve().parents[1] / "samples" / "librispeech"
TRAIN_SUBSET, TEST_SUBSET = "train-clean-100", "test-other"
# Degraded copies of the held-out speech, ordered by damage within each kind: the metrics must grow along them.
DEGRADATIONS: tuple[tuple[str, float], ...] = (("noise", 30.0), ("noise", 10.0), ("lowpass", 2000.0),
                                              ("melvocoder", 80.0), ("melvocoder", 20.0))


def degradations_text(degradations: tuple[tuple[str, float], ...]) -> str:
    """``noise@30,lowpass@2000``: the degraded copies as ``--degrade`` takes them (``none`` for no copy)."""
    return ",".join(copy_name(kind, level) for kind, level in degradations) or "none"


def check_degradations(degradations) -> tuple[tuple[str, float], ...]:
    """The degraded copies as (kind, level) pairs; a kind ``eval.degrade`` does not make, a level that is not a
    finite number, or a copy named twice is refused."""
    found: list[tuple[str, float]] = []
    for kind, level in degradations:
        if kind not in DEGRADATION_KINDS or not math.isfinite(level):
            raise DeepSpeakerError(f"--degrade: {copy_name(kind, level)} is not KIND@LEVEL with KIND one of "
                                   f"{', '.join(DEGRADATION_KINDS)} and LEVEL a number")
        if (kind, float(level)) in found:
            raise DeepSpeakerError(f"--degrade: {copy_name(kind, level)} named twice")
        found.append((kind, float(level)))
    return tuple(found)


def parse_degradations(text: str) -> tuple[tuple[str, float], ...]:
    """The degraded copies ``--degrade`` names: comma-separated ``KIND@LEVEL`` (``noise@10,codec@0.97``), or
    ``none``; checked by :func:`check_degradations`."""
    if text.strip() == "none":
        return ()
    pairs = []
    for item in text.split(","):
        kind, _, level = item.strip().partition("@")
        try:
            pairs.append((kind, float(level)))
        except ValueError:
            raise DeepSpeakerError(f"--degrade: {item.strip()!r} is not KIND@LEVEL with LEVEL a number") from None
    return check_degradations(pairs)


@dataclass
class JobConfig:
    """Sizes of the main job; the defaults finish in minutes on 2 CPU cores.

    Fields with a help text in their metadata are the options of ``deep-speaker run`` (``deep_speaker.cli.options``).
    """

    data_dir: Path = field(default=BUNDLED_DATA, metadata={"option": "data", "help": "speech folder"})
    output_dir: Path = field(default=Path("deep-speaker-run"), metadata={
        "flags": ("-o",), "help": "where caches, checkpoints, JSON and PNGs go"})
    width: float = field(default=0.25, metadata={"help": "ResCNN width factor"})
    # 600: with the 232 bundled training speakers, 300 steps left the softmax at 23 % training accuracy and the
    # held-out EER at 14.1 %; 600 gave 4.7 % (2026-12-03).
    softmax_steps: int = field(default=600, metadata={"help": "steps of softmax pre-training"})
    triplet_steps: int = field(default=200, metadata={"help": "steps of triplet training"})
    triplet_learning_rate: float = 1e-3
    batch_size: int = field(default=48, metadata={"help": "training batch size"})
    crop_frames: int = 160  # frames per training crop, both phases (TrainConfig's default: the original's 1.6 s)
    save_every: int = 50
    keep_every: int = 0  # both phases keep the model of every N-th step (TrainConfig.keep_every; save_every divides N)
    seed: int = field(default=0, metadata={"help": "random seed of training and of the degraded copies"})
    workers: int = field(default_factory=lambda: os.cpu_count() or 1, metadata={
        "help": "processes for the cache build", "default_help": "all cores"})
    degradations: tuple[tuple[str, float], ...] = field(default=DEGRADATIONS, metadata={
        "option": "degrade", "value": "degradations", "metavar": "KIND@LEVEL,...", "formatted": True,
        "help": "degraded copies of the held-out speech the job compares with it (eval.degrade kinds: "
                f"{', '.join(DEGRADATION_KINDS)}), or none; default: {degradations_text(DEGRADATIONS)}"})
    compare_subsets: int = 100
    precision: str = field(default="float32", metadata={"choices": PRECISIONS, "help": "Keras dtype policy"})
    # Beyond the original (off by default): augmented copies of the training cache, masks, margin softmax.
    augment: str | None = field(default=None, metadata={
        "metavar": "KINDS", "help": "augmented copies of the training speech: a comma list of noise, reverb, band, speed",
        "default_help": "none"})
    augment_copies: int = field(default=2, metadata={"metavar": "K", "help": "augmented copies per utterance"})
    spec_augment: bool = field(default=False, metadata={"help": "SpecAugment masks on every training crop"})
    softmax_head: str = field(default="softmax", metadata={
        "choices": HEADS, "help": "pre-training head: the original softmax, or aam (additive angular margin)"})
    teacher: str | None = field(default=None, metadata={
        "metavar": "ENCODER", "default_help": "none",
        "help": "distil from this registered encoder (e.g. resemblyzer) during softmax pre-training, beside the "
                "speaker loss"})
    teacher_weight: float = field(default=1.0, metadata={
        "metavar": "W", "help": "--teacher: weight of the distillation loss"})
    teacher_loss: str = field(default="projection", metadata={
        "choices": TEACHER_LOSSES, "help": "--teacher: regress the teacher's embedding through a learned projection, "
                                           "or match its pairwise cosines over each batch"})
    speaker_weight: float = field(default=1.0, metadata={
        "metavar": "W", "help": "--teacher: weight of the speaker loss in pre-training (0: distillation alone)"})
    verbose: int = 2  # Keras fit verbosity

    def __post_init__(self) -> None:
        self.data_dir, self.output_dir = Path(self.data_dir), Path(self.output_dir)
        # Checked (and normalised) as the option's text is: a bad copy is refused before training, not after it.
        self.degradations = check_degradations(self.degradations)
        # Before any work: an unknown encoder, or what the trainer would refuse after the caches are built.
        if self.teacher is not None:
            from .encoders import available_encoders
            from .settings import check_choice

            check_choice(self.teacher, available_encoders(), "teacher")
        check_distillation(self.teacher, self.teacher_weight, self.teacher_loss, self.speaker_weight)
        check_keep_every(self.keep_every, self.save_every)
