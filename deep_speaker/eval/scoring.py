"""What turns trial scores into decisions: score normalisation against a cohort, calibration files, and the
calibrated, interval-carrying part of a verification report (docs metrics.md).

A calibration is fitted for one encoder (its identity) and one score normalisation; it is refused for any
other, since the same LLR map applied to a different score is meaningless. It records content digests of the
audio it was fitted on, so a report can say in the same line when it is evaluated on audio it was fitted on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..atomic import write_json
from ..errors import DeepSpeakerError
from ..metrics import (Calibration, act_dcf, cllr, fit_calibration, min_cllr, paired_difference, snorm_trials,
                       verification_intervals)
from ..metrics.bootstrap import DEFAULT_REPLICATES, DEFAULT_SEED
from ..metrics.score_norm import DEFAULT_TOP_K
from ..metrics.verification import trial_scores
from ..validate import checked_field, loads_json
from .constants import DEFAULT_PRIOR

logger = logging.getLogger(__name__)
CALIBRATION_FORMAT = "deep-speaker-calibration/1"
CALIBRATION_SUFFIX = ".calibration.json"
P_TARGETS = (0.01, 0.05)  # actDCF and minDCF operating points of every report
MAX_CALIBRATION_COEFFICIENT = 1e6  # |scale| and |offset| of a calibration file at most (why: CalibrationRecord)


@dataclass(frozen=True)
class ScoreNorm:
    """A score normalisation: ``method`` none|snorm|asnorm, the cohort's embeddings and where they came from."""

    method: str = "none"
    cohort: np.ndarray | None = None  # [n_cohort, d]
    cohort_source: str | None = None
    top_k: int = DEFAULT_TOP_K
    cohort_files: frozenset[str] = frozenset()  # the audio behind the cohort, to detect overlap with the trials

    def describe(self) -> dict[str, Any]:
        """The JSON record of this normalisation (what calibrations are matched on)."""
        if self.method == "none":
            return {"method": "none"}
        return {"method": self.method, "cohort": self.cohort_source, "n_cohort": int(self.cohort.shape[0]),
                **({"top_k": self.top_k} if self.method == "asnorm" else {})}

    def scores(self, embeddings: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """The trials' scores: cosine of rows ``first[k]``, ``second[k]``, normalised unless ``method`` is none."""
        if self.method == "none":
            return trial_scores(embeddings, first, second)
        return snorm_trials(embeddings, first, second, cohort=self.cohort, method=self.method, top_k=self.top_k)


NO_NORM = ScoreNorm()


def file_digests(paths: Iterable[str]) -> list[str]:
    """Short content digests (sha256, sorted) of the files among ``paths``: which audio a calibration saw, wherever
    it lies on another machine, without listing it (cache ids, not files, are left out)."""
    digests = set()
    for p in set(paths):
        if os.path.isfile(p):
            digests.add(hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16])
    return sorted(digests)


@dataclass(frozen=True)
class CalibrationRecord:
    """A fitted calibration with what it applies to (encoder, identity, score normalisation) and was fitted on."""

    calibration: Calibration
    encoder: str
    model_identity: str
    score_norm: dict[str, Any]
    fitted_on: dict[str, Any]  # source, trial counts, Cllr/minCllr on the fitting trials, file digests
    path: str | None = None  # where it was read from

    def to_dict(self) -> dict[str, Any]:
        c = self.calibration
        return {"format": CALIBRATION_FORMAT, "scale": c.scale, "offset": c.offset, "prior": c.prior,
                "encoder": self.encoder, "model_identity": self.model_identity, "score_norm": self.score_norm,
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "CalibrationRecord":
        """The record of a calibration file's JSON, every field checked for its type and range (one line naming
        ``where`` otherwise): a calibration decides, so a wrong one must never be used."""
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise DeepSpeakerError(f"{where}: not a deep-speaker calibration ({CALIBRATION_FORMAT})")
        # LLRs are natural-log odds: fits on cosine scores (in [-1, 1]) or S-normalised ones (z-scores, rarely
        # beyond ±100) have |scale| and |offset| of order 10 (the packaged model's: 21 and -13), and any |llr|
        # past ~700 already makes every posterior exactly 0 or 1. A bound of 1e6 lies orders of magnitude above any
        # fit, yet keeps scale * score + offset finite for every score a float64 holds below 1e302 in size.
        # The prior lies strictly inside (0, 1), where its logit is defined.
        bound = MAX_CALIBRATION_COEFFICIENT
        cal = Calibration(float(checked_field(data, "scale", float, where=where, low=-bound, high=bound)),
                          float(checked_field(data, "offset", float, where=where, low=-bound, high=bound)),
                          float(checked_field(data, "prior", float, where=where, low=0.0, high=1.0)))
        if not 0.0 < cal.prior < 1.0:
            raise DeepSpeakerError(f"{where}: field 'prior' must lie strictly between 0 and 1, got {cal.prior!r}")
        score_norm = checked_field(data, "score_norm", dict, where=where)
        checked_field(score_norm, "method", str, where=f"{where} score_norm")
        fitted_on = checked_field(data, "fitted_on", dict, where=where)
        checked_field(fitted_on, "source", (dict, str), where=f"{where} fitted_on")  # shown in every report
        digests = checked_field(fitted_on, "file_digests", list, where=f"{where} fitted_on", required=False) or []
        if not all(isinstance(d, str) for d in digests):
            raise DeepSpeakerError(f"{where}: fitted_on.file_digests must be a list of strings")
        return cls(cal, checked_field(data, "encoder", str, where=where),
                   checked_field(data, "model_identity", str, where=where), score_norm, fitted_on, where)

    def check_applies(self, encoder: str, model_identity: str, score_norm: ScoreNorm) -> None:
        """A one-line error unless this calibration was fitted for this encoder, model and normalisation."""
        where = self.path or "calibration"
        if (encoder, model_identity) != (self.encoder, self.model_identity):
            raise DeepSpeakerError(f"{where} was fitted for {self.encoder} model {self.model_identity}, not "
                                   f"{encoder} model {model_identity}: run deep-speaker calibrate for this model")
        if self.score_norm != score_norm.describe():
            raise DeepSpeakerError(f"{where} was fitted on scores normalised as {json.dumps(self.score_norm)}, "
                                   f"not {json.dumps(score_norm.describe())}: use the same --score-norm/--cohort")

    def seen(self, paths: Iterable[str]) -> int:
        """How many of ``paths`` the calibration was fitted on."""
        digests = set(self.fitted_on.get("file_digests", []))
        return sum(d in digests for d in file_digests(paths))


def fit_record(scores: np.ndarray, labels: np.ndarray, paths: Sequence[str], *, source: dict[str, Any], encoder: str,
               model_identity: str, score_norm: ScoreNorm, prior: float = DEFAULT_PRIOR) -> CalibrationRecord:
    """Fit a calibration on trial scores and record what it applies to and what it was fitted on."""
    cal = fit_calibration(scores, labels, prior)
    fitted_on = {"source": source, "n_target": int(labels.sum()), "n_nontarget": int((labels == 0).sum()),
                 "cllr": cllr(cal.llr(scores), labels), "min_cllr": min_cllr(scores, labels),
                 "file_digests": file_digests(paths)}
    return CalibrationRecord(cal, encoder, model_identity, score_norm.describe(), fitted_on)


def save_calibration(path: str | os.PathLike, record: CalibrationRecord) -> None:
    """Write a calibration file, after the same checks :func:`read_calibration` makes: never one it would refuse."""
    CalibrationRecord.from_dict(record.to_dict(), str(path))
    write_json(path, record.to_dict())


def read_calibration(path: str | os.PathLike) -> CalibrationRecord:
    """A calibration file; a one-line error when it is missing or not one."""
    try:
        text = Path(path).read_bytes()
    except OSError as e:
        raise DeepSpeakerError(f"{path}: cannot read calibration ({e.strerror or e})") from None
    return CalibrationRecord.from_dict(loads_json(text, path, "JSON calibration file"), str(path))


def beside_model(model: str | os.PathLike) -> Path:
    """Where a model's calibration lives: ``MODEL.calibration.json`` beside a model file (inside a run folder)."""
    model = Path(model)
    return model / f"model{CALIBRATION_SUFFIX}" if model.is_dir() else model.with_name(model.stem + CALIBRATION_SUFFIX)


def calibrated_part(scores: np.ndarray, labels: np.ndarray, paths: Sequence[str],
                    *, calibration: CalibrationRecord | None) -> dict[str, Any]:
    """minCllr always; with a calibration its Cllr and actDCF, and whether it saw any of these trials' files."""
    part: dict[str, Any] = {"min_cllr": min_cllr(scores, labels)}
    if calibration is None:
        part["calibration"] = None
        return part
    llrs = calibration.calibration.llr(scores)
    seen = calibration.seen(paths)
    part["calibration"] = {"file": calibration.path, "fitted_on": calibration.fitted_on["source"],
                           "files_also_in_these_trials": seen, "n_files": len(set(paths))}
    part["cllr"] = cllr(llrs, labels)
    part["act_dcf"] = {f"p_target={p}": act_dcf(llrs, labels, p_target=p) for p in P_TARGETS}
    return part


def interval_part(scores: np.ndarray, labels: np.ndarray, *, first_speakers: Sequence[str],
                  second_speakers: Sequence[str], replicates: int = DEFAULT_REPLICATES,
                  seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """95 % speaker-bootstrap intervals of EER and minDCF, with how they were made; where the trials cannot be
    resampled by speaker (too few speakers), the reason instead, also logged as a warning."""
    try:
        intervals = verification_intervals(scores, labels, first_speakers=first_speakers,
                                           second_speakers=second_speakers, replicates=replicates,
                                           seed=seed)
    except DeepSpeakerError as e:
        logger.warning("no confidence intervals: %s", e)
        return {"skipped": str(e)}
    return {"level": 0.95, "replicates": replicates, "seed": seed, "resampled": "speakers",
            "n_speakers": len(set(first_speakers) | set(second_speakers)),
            **{name: interval.to_dict() for name, interval in intervals.items()}}


def comparison_part(scores: np.ndarray, other_scores: np.ndarray, labels: np.ndarray, *, first_speakers: Sequence[str],
                    second_speakers: Sequence[str], other: str, replicates: int = DEFAULT_REPLICATES,
                    seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """This system minus ``other`` on the same trials, each difference with its paired bootstrap interval."""
    diff = paired_difference(scores, other_scores, labels, first_speakers=first_speakers,
                             second_speakers=second_speakers, replicates=replicates,
                             seed=seed)
    return {"other": other, "level": 0.95, "replicates": replicates, "seed": seed, "resampled": "speakers",
            **{name: interval.to_dict() for name, interval in diff.items()}}


def find_calibration(encoder: str, model_identity: str, *, model: str | os.PathLike | None,
                     score_norm: ScoreNorm) -> tuple[CalibrationRecord | None, str]:
    """The calibration that applies without being named: ``MODEL.calibration.json`` beside ``model``, else the
    packaged model's card when that is the model; with a line saying what was found or why none applies."""
    candidates: list[CalibrationRecord] = []
    if model is not None and beside_model(model).is_file():
        candidates.append(read_calibration(beside_model(model)))
    if encoder == "deep-speaker":
        from ..encoders.deepspeaker import PACKAGED_MODEL_DIR

        card_path = PACKAGED_MODEL_DIR / "model_card.json"
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        if card.get("calibration") and card.get("model_identity") == model_identity:
            candidates.append(CalibrationRecord.from_dict(card["calibration"], f"{card_path} (packaged model card)"))
    for record in candidates:
        try:
            record.check_applies(encoder, model_identity, score_norm)
        except DeepSpeakerError as e:
            return None, f"calibration not used: {e}"
        return record, f"calibration: {record.path}"
    return None, "no calibration for this model (deep-speaker calibrate fits one)"
