"""What a training run depends on: :class:`TrainConfig`, and per phase its optimizer, monitor and default length.

Each field's help text lives in its metadata, so the command lines (``deep-speaker train PHASE``, ``train_cli.py``)
derive their options from this one place (``deep_speaker.cli.options``): every default is written once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DeepSpeakerError
from ..model.constants import HEADS, PRECISIONS, TEACHER_LOSSES, TRIPLET_MARGIN
from ..settings import check_choice

PHASES = ("softmax", "triplet", "probe")
STRATEGIES = ("none", "mirrored", "multiworker")
# What feeds the softmax phase's random crops: today's Keras PyDataset batcher, tf.data, or worker processes over
# shared memory (train.pipeline).
INPUT_PIPELINES = ("pydataset", "tfdata", "processes")
# How the learning rate moves: the original's plateau halving, or a cosine decay to 0 over the phase's steps.
LR_SCHEDULES = ("plateau", "cosine")
# --strategy multiworker (train.multiworker) runs Trainer's recipe, so every option behaves as in one process
# except these, refused with one line before any worker starts: (what the configuration holds, why).
MULTIWORKER_REFUSED: tuple[tuple[Callable[["TrainConfig"], bool], str], ...] = (
    (lambda c: c.phase == "probe",
     "multi-worker training runs the softmax and triplet phases, not the probe: train the probe on one machine"),
    (lambda c: c.phase == "softmax" and c.random_crops and c.input_pipeline == "tfdata",
     "--input_pipeline tfdata is not available with --strategy multiworker: use pydataset or processes (the same "
     "batches)"),
    (lambda c: c.batch_size % c.workers != 0,
     "--strategy multiworker: --batch_size is the global batch, a multiple of --workers"),
    (lambda c: c.phase == "triplet" and (c.batch_size // c.workers) % 3 != 0,
     "--strategy multiworker, triplet phase: each worker's share of --batch_size must be a multiple of 3 rows "
     "(anchors, positives, negatives)"),
)
# --teacher distils in the softmax phase's random-crop batcher on one device; elsewhere it is refused in one line.
TEACHER_REFUSED: tuple[tuple[Callable[["TrainConfig"], bool], str], ...] = (
    (lambda c: c.phase != "softmax", "--teacher distils in the softmax phase only"),
    (lambda c: not c.random_crops, "--teacher needs --random-crops (the teacher embeds the cache's utterances)"),
    (lambda c: c.input_pipeline != "pydataset", "--teacher feeds through --input_pipeline pydataset only"),
    (lambda c: c.strategy != "none", "--teacher trains on one device (--strategy none)"),
)
# What only a teacher's distillation gives a meaning to: refused without --teacher (field, its default).
TEACHER_ONLY = (("teacher_loss", "projection"), ("speaker_weight", 1.0))


def check_distillation(teacher: str | None, teacher_weight: float, teacher_loss: str, speaker_weight: float) -> None:
    """The distillation's options as a training run and the main job (``deep_speaker.job_config``) both take them:
    with a teacher, a positive teacher weight, a known loss and a speaker weight of 0 or more; without one, the
    options only a teacher gives a meaning to left at their defaults. One line otherwise."""
    if teacher is None:
        given = {"teacher_loss": teacher_loss, "speaker_weight": speaker_weight}
        for name, default in TEACHER_ONLY:
            if given[name] != default:
                raise DeepSpeakerError(f"--{name} needs --teacher (it weighs or shapes the distillation)")
        return
    check_choice(teacher_loss, TEACHER_LOSSES, "teacher loss")
    if not (math.isfinite(teacher_weight) and teacher_weight > 0):
        raise DeepSpeakerError("--teacher_weight must be positive")
    if not (math.isfinite(speaker_weight) and speaker_weight >= 0):
        raise DeepSpeakerError("--speaker_weight must be 0 (distillation alone) or positive")


def check_keep_every(keep_every: int, save_every: int) -> None:
    """``--keep_every`` as a training run and the main job both take it: 0, or a multiple of ``--save_every`` (the
    steps at which a model is saved at all). One line otherwise."""
    if keep_every < 0 or keep_every % save_every:
        raise DeepSpeakerError(f"--keep_every must be 0 or a multiple of --save_every ({save_every}), got "
                               f"{keep_every}")


# Per phase: optimizer and default learning rate as the original (Adam 1e-3 for softmax, Keras' SGD 1e-2),
# and the validation metric that picks best.keras.
OPTIMIZERS = {"softmax": ("adam", 1e-3), "triplet": ("sgd", 1e-2), "probe": ("adam", 1e-3)}
MONITORS = {"softmax": ("val_accuracy", "max"), "triplet": ("val_eer", "min"), "probe": ("val_accuracy", "max")}
# The probe trains a single softmax layer on fixed embeddings: far fewer steps suffice.
DEFAULT_STEPS = {"softmax": 10000, "triplet": 10000, "probe": 2000}


def phase_defaults(phase: str) -> dict[str, Any]:
    """The defaults that depend on the phase, by field name (a field left at None takes them)."""
    return {"steps": DEFAULT_STEPS[phase], "learning_rate": OPTIMIZERS[phase][1]}


def _by_phase(name: str) -> str:
    """A phase-dependent default in words, for help texts: ``softmax 10000, triplet 10000, probe 2000``."""
    return ", ".join(f"{phase} {phase_defaults(phase)[name]:g}" for phase in PHASES)


@dataclass
class TrainConfig:
    """Everything a training run depends on; the defaults are the original's where it had one."""

    phase: str
    output_dir: Path | None = field(default=None, metadata={
        "metavar": "DIR", "default_help": "checkpoints/ beside the data",
        "help": "runs go to DIR/<phase>/ (last.keras, best.keras, state.json, log.csv, tensorboard/)"})
    data: Path | None = field(default=None, metadata={
        "option": "data_filename", "metavar": "PATH",
        "help": "training inputs: the .npz of 'cli.py --generate_training_inputs' (the original full_inputs.pkl "
                "name reads the .npz beside it; no pickle is ever opened)"})
    cache_dir: Path | None = field(default=None, metadata={
        "metavar": "DIR", "default_help": "the folder of --data_filename", "help": "triplet phase: the feature cache"})
    init_model: Path | None = field(default=None, metadata={
        "metavar": "PATH", "help": "starting weights (.keras, original .h5 or run folder)",
        "default_help": "the best softmax checkpoint for triplet, the best triplet (else softmax) checkpoint for probe"})
    steps: int | None = field(default=None, metadata={
        "metavar": "N", "default_help": _by_phase("steps"),
        "help": "total optimizer steps of the phase (a resumed run continues up to N)"})
    batch_size: int = field(default=96, metadata={"metavar": "N", "help": "batch size (triplet: a multiple of 3)"})
    learning_rate: float | None = field(default=None, metadata={
        "metavar": "LR", "default_help": _by_phase("learning_rate"),
        "help": "initial learning rate (Adam for softmax and probe, SGD for triplet, as the original)"})
    width: float = field(default=1.0, metadata={
        "metavar": "W", "help": "filters x W in every stage (e.g. 0.25 for CPU runs; 1 is the paper's size)"})
    crop_frames: int = field(default=160, metadata={"metavar": "T", "help": "frames per training crop (160: 1.6 s)"})
    seed: int = field(default=0, metadata={"help": "random seed of initialisation, batches and crops"})
    save_every: int = field(default=100, metadata={
        "metavar": "N", "help": "steps between validations and checkpoints (a kill loses at most N steps)"})
    keep_every: int = field(default=0, metadata={
        "metavar": "N", "help": "also keep the model of every N-th step (a multiple of --save_every) as "
                                "OUT/<phase>/steps/step-NNNNNN.keras, e.g. to choose or average checkpoints on "
                                "speakers of your own; 0 keeps none"})
    precision: str = field(default="float32", metadata={
        "choices": PRECISIONS, "help": "Keras dtype policy; mixed_bfloat16 keeps losses and the L2 normalisation "
                                       "in float32"})
    strategy: str = field(default="none", metadata={
        "choices": STRATEGIES, "help": "mirrored: data parallel over all GPUs, else the logical CPUs (tf.distribute "
                                       "on TensorFlow, keras.distribution on JAX); multiworker: data parallel over "
                                       "the devices of --workers processes (KERAS_BACKEND=jax; the same command on "
                                       "every worker with its own --worker; softmax and triplet phases)"})
    coordinator: str | None = field(default=None, metadata={
        "metavar": "HOST:PORT", "help": "--strategy multiworker: worker 0's address (it listens there only)"})
    workers: int = field(default=1, metadata={"metavar": "N", "help": "--strategy multiworker: how many workers"})
    worker: int = field(default=0, metadata={
        "metavar": "I", "help": "--strategy multiworker: this worker's index, 0 .. N-1"})
    worker_timeout: float = field(default=120.0, metadata={
        "metavar": "S", "help": "--strategy multiworker: seconds for all workers to join; a worker silent that "
                                "long is taken as lost"})
    holdout: float = field(default=0.2, metadata={
        "help": "triplet phase: share of each speaker's audio held out for the validation EER"})
    random_crops: bool = field(default=False, metadata={
        "help": "softmax phase: fresh random crops of the cache's training audio at every step (validation on its "
                "held-out part) instead of the fixed crops of --data_filename"})
    input_pipeline: str = field(default="pydataset", metadata={
        "choices": INPUT_PIPELINES, "help": "softmax phase with --random-crops: pydataset (a Keras PyDataset cutting "
                                            "a crop at a time), tfdata (tf.data: crops cut in parallel from "
                                            "arrays opened once, prefetched) or processes (the same cut by "
                                            "--input_workers processes into shared memory: every backend, no "
                                            "shared GIL); the same batches either way"})
    input_workers: int | None = field(default=None, metadata={
        "metavar": "N", "default_help": "half the cores", "help": "worker processes of --input_pipeline processes"})
    softmax_head: str = field(default="softmax", metadata={
        "choices": HEADS, "help": "softmax phase: the original softmax, or aam: additive angular margin softmax "
                                  "(ArcFace) on cosines to each speaker, with --margin and --scale"})
    margin: float = field(default=0.2, metadata={"metavar": "M", "help": "aam head: angular margin m (radians)"})
    scale: float = field(default=32.0, metadata={"metavar": "S", "help": "aam head: logit scale s"})
    spec_augment: bool = field(default=False, metadata={
        "help": "SpecAugment on every training crop (softmax batches, triplet pool): 2 time masks of up to "
                "mask_frames frames and 2 frequency masks of up to mask_bins bands, set to 0; seeded by the step"})
    mask_frames: int = 20
    mask_bins: int = 8
    teacher: str | None = field(default=None, metadata={
        "metavar": "ENCODER", "default_help": "none",
        "help": "softmax phase with --random-crops: distil from this registered encoder (e.g. resemblyzer) beside "
                "the speaker loss: it embeds each training utterance's clean audio once (OUT/teacher/ENCODER.npz) "
                "and the student learns it as --teacher_loss says"})
    teacher_weight: float = field(default=1.0, metadata={
        "metavar": "W", "help": "--teacher: weight of the distillation loss beside the speaker loss"})
    teacher_loss: str = field(default="projection", metadata={
        "choices": TEACHER_LOSSES, "help": "--teacher: projection (a learned projection of the student's embedding "
                                           "regresses the teacher's: 1 - cosine) or pairwise (the student's "
                                           "cosines between the batch's crops match the teacher's: mean squared "
                                           "difference)"})
    speaker_weight: float = field(default=1.0, metadata={
        "metavar": "W", "help": "--teacher: weight of the speaker loss; 0 distils alone (the speaker labels, i.e. "
                                "the folders, then train nothing: any speech will do; the best checkpoint is the "
                                "one of the lowest held-out distillation loss)"})
    lr_schedule: str = field(default="plateau", metadata={
        "choices": LR_SCHEDULES, "help": "plateau: halve the learning rate after 10 validations without improvement, "
                                         "down to a tenth (the original's); cosine: from --learning-rate down to 0 "
                                         "over --steps along a cosine"})
    triplet_margin: float = field(default=TRIPLET_MARGIN, metadata={
        "metavar": "A", "help": "triplet phase: the margin A of max(cos(a, n) - cos(a, p) + A, 0) (0.1: the "
                                "original's)"})
    refresh_every: int = field(default=100, metadata={  # the original: 100 batches
        "metavar": "K", "help": "triplet phase: steps between two refreshes of the hard-negative pool"})
    pool_speakers: int = field(default=640, metadata={
        "metavar": "N", "help": "triplet phase: speakers (2 crops each) per pool round"})
    pool_rounds: int = 4  # rounds of speakers the triplet pool keeps
    max_validation: int = 1000  # crops embedded for the triplet validation EER
    verbose: int = field(default=2, metadata={
        "option": "fit_verbose", "choices": (0, 1, 2), "help": "Keras fit verbosity (2: one line per save)"})

    def __post_init__(self) -> None:
        check_choice(self.phase, PHASES, "phase")
        check_choice(self.strategy, STRATEGIES, "strategy")
        check_choice(self.precision, PRECISIONS, "precision")
        check_choice(self.softmax_head, HEADS, "softmax head")
        check_choice(self.input_pipeline, INPUT_PIPELINES, "input pipeline")
        check_choice(self.lr_schedule, LR_SCHEDULES, "learning-rate schedule")
        if self.input_workers is not None and self.input_workers < 1:
            raise DeepSpeakerError(f"--input_workers needs at least 1 worker, got {self.input_workers}")
        if not (0 <= self.margin < math.pi / 2 and math.isfinite(self.scale) and self.scale > 0):
            raise DeepSpeakerError(f"need 0 <= margin < pi/2 and a positive scale (got {self.margin}, {self.scale})")
        for name, value in phase_defaults(self.phase).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.output_dir is None:
            beside = Path(self.data).parent if self.data is not None else self.cache_dir
            self.output_dir = Path(beside) / "checkpoints" if beside is not None else Path("checkpoints")
        self.output_dir = Path(self.output_dir)
        if self.steps < 1 or self.save_every < 1 or self.batch_size < 1 or self.crop_frames < 1:
            raise DeepSpeakerError("steps, save_every, batch_size and crop_frames must be positive")
        check_keep_every(self.keep_every, self.save_every)
        # NaN compares false with everything: unchecked, a NaN rate trains to NaN weights and saves them.
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise DeepSpeakerError(f"learning rate must be a positive number, got {self.learning_rate}")
        if self.strategy == "multiworker":
            if self.coordinator is None:
                raise DeepSpeakerError("--strategy multiworker needs --coordinator HOST:PORT (worker 0's address), "
                                       "--workers N and --worker I")
            if self.workers < 1:
                raise DeepSpeakerError(f"--workers must be at least 1, got {self.workers}")
            for refused, reason in MULTIWORKER_REFUSED:
                if refused(self):
                    raise DeepSpeakerError(reason)
        if self.teacher is not None:
            for refused, reason in TEACHER_REFUSED:
                if refused(self):
                    raise DeepSpeakerError(reason)
        check_distillation(self.teacher, self.teacher_weight, self.teacher_loss, self.speaker_weight)
        if not (math.isfinite(self.triplet_margin) and 0 <= self.triplet_margin <= 2):
            raise DeepSpeakerError(f"--triplet_margin must be in [0, 2] (a difference of cosines), got "
                                   f"{self.triplet_margin}")
        if self.phase != "triplet" and self.triplet_margin != TRIPLET_MARGIN:
            raise DeepSpeakerError(f"--triplet_margin applies to the triplet phase, not {self.phase}")
        if not (math.isfinite(self.width) and self.width > 0) or not 0 <= self.holdout < 1:
            raise DeepSpeakerError(f"need a positive width and 0 <= holdout < 1 (got {self.width}, {self.holdout})")

    @property
    def features_dir(self) -> Path | None:
        """The feature cache or store of the random crops and the triplet phase: --cache_dir, else the folder of
        --data_filename (None when neither is given)."""
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        return Path(self.data).parent if self.data is not None else None

    @property
    def monitor(self) -> tuple[str, str]:
        """The validation metric that picks best.keras and drives the plateau, and its direction: the phase's, or
        the held-out loss (the distillation alone) when the speaker loss weighs nothing."""
        return ("val_loss", "min") if self.speaker_weight == 0 else MONITORS[self.phase]

    @property
    def fewest_speakers(self) -> int:
        """Speakers (folders) a run needs: 2, or 1 for the distillation alone (labels unused: one folder of speech
        whose speakers are unknown will do)."""
        return 1 if self.speaker_weight == 0 else 2

    @property
    def teacher_targets(self) -> Path | None:
        """Where the teacher's targets of --teacher are kept (``OUT/teacher/ENCODER.npz``), None without one."""
        return None if self.teacher is None else self.output_dir / "teacher" / f"{self.teacher}.npz"

    @property
    def run_dir(self) -> Path:
        """``OUT/<phase>``, where this run's checkpoints, state and log go."""
        # Imported here: model.checkpoints loads numpy (through validate), which the options built from this class
        # (deep-speaker train --help) do not need.
        from ..model.checkpoints import run_dir

        return run_dir(self.output_dir, self.phase)
