"""The main job's settings: :class:`JobConfig`, in a module that imports no framework, so that ``deep-speaker run
--help`` (whose options it defines) answers at once. ``pipeline`` runs the job and keeps these names.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DeepSpeakerError
from .model.constants import HEADS, PRECISIONS

BUNDLED_DATA = Path(__file__).resolve().parents[1] / "samples" / "librispeech"
TRAIN_SUBSET, TEST_SUBSET = "train-clean-100", "test-other"
# Degraded copies of the held-out speech, ordered by damage within each kind: the metrics must grow along them.
DEGRADATIONS: tuple[tuple[str, float], ...] = (("noise", 30.0), ("noise", 10.0), ("lowpass", 2000.0),
                                              ("melvocoder", 80.0), ("melvocoder", 20.0))


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
    save_every: int = 50
    seed: int = field(default=0, metadata={"help": "random seed of training and of the degraded copies"})
    workers: int = field(default_factory=lambda: os.cpu_count() or 1, metadata={
        "help": "processes for the cache build", "default_help": "all cores"})
    degradations: tuple[tuple[str, float], ...] = DEGRADATIONS
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
    verbose: int = 2  # Keras fit verbosity

    def __post_init__(self) -> None:
        self.data_dir, self.output_dir = Path(self.data_dir), Path(self.output_dir)
        if self.teacher is not None:  # before any work: an unknown encoder or a weight the trainer would refuse
            from .encoders import available_encoders
            from .settings import check_choice

            check_choice(self.teacher, available_encoders(), "teacher")
            if not (math.isfinite(self.teacher_weight) and self.teacher_weight > 0):
                raise DeepSpeakerError("--teacher-weight must be positive")
