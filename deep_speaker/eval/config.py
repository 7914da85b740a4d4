"""What each evaluation command depends on, each field's default, help text and range check written once, in a module
that imports nothing heavy (the command line derives the commands' options from them, ``deep_speaker.cli.options``,
and must answer ``--help`` without numpy): :class:`CompareConfig` (``compare``), :class:`StatsConfig` (``stats``, and
how ``compare`` reads a folder), :class:`EvaluateConfig` (``evaluate-verification``), :class:`CalibrateConfig`
(``calibrate``). The Python API takes the same objects.

The checks of the report numbers every report command takes (``--far``, ``--bootstrap``, ``--worst``) are
:func:`check_report_numbers`: ``compare`` through this config, ``similarity`` directly; the ranges themselves are
``metrics.constants.check_far`` / ``check_replicates``, which the metrics apply too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.constants import LAYOUTS
from ..errors import DeepSpeakerError
from ..metrics.constants import (DEFAULT_REPLICATES, DEFAULT_SEED, DEFAULT_SET_REPLICATES, FAR_TARGET, check_far,
                                 check_replicates)
from ..settings import check_choice
from .constants import DEFAULT_PRIOR

# The help texts below are argparse format strings that state their default themselves ("formatted"): %(default)s,
# and a literal percent sign as %%.


def check_report_numbers(far: float, bootstrap: int, worst: int) -> None:
    """``--far``, ``--bootstrap`` and ``--worst`` as the report commands (compare, similarity) take them: refused in
    one line before anything is embedded."""
    check_far(far, "--far")
    check_replicates(bootstrap, "--bootstrap", zero=True)
    if worst < 0:
        raise DeepSpeakerError(f"--worst must be 0 or more, got {worst}")


@dataclass(frozen=True)
class CompareConfig:
    """The numbers of a comparison report (``eval.generated.compare``); the defaults are the command's, but
    ``bootstrap``: none from Python (each replicate recomputes FD and KD), :data:`COMMAND_DEFAULTS` on the command
    line."""

    worst: int = field(default=5, metadata={
        "metavar": "N", "formatted": True,
        "help": "list the N generated files least similar to their speaker (default %(default)s)"})
    seed: int = field(default=0, metadata={
        "formatted": True, "help": "seed of every random split and subset (default %(default)s)"})
    num_splits: int = field(default=5, metadata={
        "metavar": "K", "formatted": True, "help": "disjoint splits for FD (default %(default)s)"})
    subset_size: int = field(default=1000, metadata={
        "metavar": "M", "formatted": True,
        "help": "KD subset size, shrunk to the smaller set when larger (default %(default)s)"})
    num_subsets: int = field(default=100, metadata={
        "metavar": "S", "formatted": True, "help": "KD subsets (default %(default)s)"})
    ndb_bins: int = field(default=50, metadata={
        "metavar": "K", "formatted": True, "help": "NDB k-means bins (default %(default)s)"})
    fd_inf_points: int = field(default=15, metadata={
        "metavar": "P", "formatted": True, "help": "subset sizes N in the FD∞ fit (default %(default)s)"})
    far: float = field(default=FAR_TARGET, metadata={
        "metavar": "RATE", "formatted": True,
        "help": "false-accept rate of the second acceptance threshold, on real trials (default %(default)g)"})
    bootstrap: int = field(default=0, metadata={
        "metavar": "N", "formatted": True,
        "help": "resamples for the 95 %% intervals of SECS, acceptance, FD, KD and EER (default %(default)s; 0: "
                "none; seeded by --seed)"})
    anchor_noise: bool = field(default=False, metadata={
        "formatted": True,
        "help": "also score FD and speaker similarity 0-100 between the real set (100) and the nearest of four noise "
                "sets made from it (0): white, pink, babble of other speakers, near-silence (TTSDS' noise-anchored "
                "score; embeds each noise set, four times the real set's embedding time; off by default)"})

    def __post_init__(self) -> None:
        check_report_numbers(self.far, self.bootstrap, self.worst)

    def report_settings(self) -> dict:
        """The settings a report records (the names its JSON has always used)."""
        return {"seed": self.seed, "num_splits": self.num_splits, "subset_size": self.subset_size,
                "num_subsets": self.num_subsets, "ndb_bins": self.ndb_bins, "fd_inf_points": self.fd_inf_points,
                "far_target": self.far, "bootstrap": self.bootstrap,
                **({"anchor_noise": True} if self.anchor_noise else {})}  # absent when off: reports as before


# Where ``deep-speaker compare`` differs from the Python defaults: intervals by default.
COMMAND_DEFAULTS = {"bootstrap": DEFAULT_SET_REPLICATES}


@dataclass(frozen=True)
class StatsConfig:
    """How a folder becomes a statistics set (``eval.generated.compute_stats``): ``stats`` and each folder side of
    ``compare``."""

    layout: str = field(default="auto", metadata={
        "choices": LAYOUTS, "formatted": True,
        "help": "how speaker labels are read from folder paths (default %(default)s)"})

    def __post_init__(self) -> None:
        check_choice(self.layout, LAYOUTS, "layout")


PROJECTIONS = ("tsne", "pca")


@dataclass(frozen=True)
class EvaluateConfig:
    """The numbers and pictures of a verification report (``eval.verification.evaluate``, ``evaluate-verification``)
    beyond its trials, scoring and calibration: the speaker bootstrap and the 2-D projection of the plots."""

    projection: str = field(default="tsne", metadata={
        "choices": PROJECTIONS, "formatted": True, "help": "2-D projection (default %(default)s)"})
    bootstrap: int = field(default=DEFAULT_REPLICATES, metadata={
        "metavar": "N", "formatted": True,
        "help": "speaker-bootstrap resamples for the 95 %% intervals of EER and minDCF (default %(default)s; 0: none)"})
    seed: int = field(default=DEFAULT_SEED, metadata={
        "formatted": True, "help": "bootstrap seed (default %(default)s)"})

    def __post_init__(self) -> None:
        check_choice(self.projection, PROJECTIONS, "projection")
        check_replicates(self.bootstrap, "--bootstrap", zero=True)  # a usage error before anything is embedded


def check_prior(prior: float) -> None:
    """A target prior strictly between 0 and 1 (the command line's ``--prior`` is refused as a usage error by
    ``cli.options.probability``, its ``value`` type)."""
    if not 0.0 < prior < 1.0:
        raise DeepSpeakerError(f"the prior must lie strictly between 0 and 1, got {prior:g}")


@dataclass(frozen=True)
class CalibrateConfig:
    """How a calibration is fitted (``eval.verification.calibrate``, ``calibrate``): on the trials of each file of a
    folder cut into ``segments`` parts (0: the files whole), the classes weighted by ``prior``."""

    segments: int = field(default=0, metadata={
        "metavar": "N", "formatted": True,
        "help": "cut each file of DIR into N parts (same-speaker trials from one utterance per speaker)"})
    prior: float = field(default=DEFAULT_PRIOR, metadata={
        "value": "probability", "formatted": True,
        "help": "target prior the fit weights the classes by (default %(default)g)"})

    def __post_init__(self) -> None:
        check_prior(self.prior)  # segments: checked where they are cut (eval.verification.embed_segments)
