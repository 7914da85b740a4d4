"""Calibrated scores (docs metrics.md): linear score-to-LLR calibration, Cllr, minCllr (PAV), actDCF, Bayes decisions.

Conventions are BOSARIS / NIST SRE: a log-likelihood ratio ``llr = log p(s | target) / p(s | non-target)``
(natural log); at prior ``p`` the Bayes decision accepts when ``llr > log(C_fa (1-p) / (C_miss p))``; Cllr is
in bits, 1 for a system that always says llr = 0 and 0 for a perfect one.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numpy as np

from ..errors import DeepSpeakerError
from .verification import _check_trials

LN2 = math.log(2.0)


def logit(p: float) -> float:
    """``log(p / (1 - p))`` for a prior strictly inside (0, 1)."""
    if not 0.0 < p < 1.0:
        raise DeepSpeakerError(f"a prior must lie strictly between 0 and 1, got {p}")
    return math.log(p / (1.0 - p))


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The LLR threshold of the Bayes decision: ``θ = log(C_fa (1-p) / (C_miss p)) = -logit(p) + log(C_fa/C_miss)``."""
    return -logit(p_target) + math.log(c_fa / c_miss)


class Calibration(NamedTuple):
    """A linear calibration ``llr = scale · score + offset``, fitted at ``prior``."""

    scale: float
    offset: float
    prior: float

    def llr(self, scores: Any) -> np.ndarray:
        """``scale · score + offset`` (float64)."""
        return self.scale * np.asarray(scores, dtype=np.float64) + self.offset

    def posterior(self, scores: Any, p_target: float = 0.5) -> np.ndarray:
        """P(same speaker | score) at prior ``p_target``: ``σ(llr + logit(p))``."""
        return 1.0 / (1.0 + np.exp(-(self.llr(scores) + logit(p_target))))


def fit_calibration(scores: Any, labels: Any, prior: float = 0.5) -> Calibration:
    """Prior-weighted logistic regression (BOSARIS' linear calibration): minimise the Cllr-like objective
    ``p/N_t Σ_t log(1+e^{-(a s+b+logit p)}) + (1-p)/N_n Σ_n log(1+e^{a s+b+logit p})``; llr = a s + b.

    scikit-learn's unregularised LogisticRegression gives the log posterior odds at the weighted prior; the
    LLR is that minus ``logit(prior)``. Constant scores are an error (no score can separate the classes).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression  # heavy import, only where a fit is made

    s, lab = _check_trials(scores, labels)
    if np.ptp(s) == 0:
        raise DeepSpeakerError("cannot calibrate constant scores: every trial has the same score")
    n_t, n_n = int(lab.sum()), int((~lab).sum())
    weights = np.where(lab, prior / n_t, (1.0 - prior) / n_n) * s.size  # scaled to mean 1 for the solver
    centre, spread = float(s.mean()), float(s.std())  # standardised input: the solver's tolerance is scale-free
    model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000)  # C = inf: unregularised
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # an unconverged fit is an error, not an approximation
        try:
            model.fit(((s - centre) / spread)[:, None], lab, sample_weight=weights)
        except ConvergenceWarning as w:
            raise DeepSpeakerError(f"calibration did not converge ({w}); are the classes perfectly separated?") from None
    scale = float(model.coef_[0, 0]) / spread
    offset = float(model.intercept_[0]) - scale * centre - logit(prior)
    return Calibration(scale, offset, prior)


def cllr(llrs: Any, labels: Any) -> float:
    """``Cllr = 1/(2 ln 2) [mean_t log(1 + e^{-llr}) + mean_n log(1 + e^{llr})]`` in bits."""
    x, lab = _check_infinite(llrs, labels)
    target_cost = np.logaddexp(0.0, -x[lab]).mean()
    nontarget_cost = np.logaddexp(0.0, x[~lab]).mean()
    return float((target_cost + nontarget_cost) / (2.0 * LN2))


def _check_infinite(llrs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """LLRs that may be ±inf (PAV's end bins), checked like scores otherwise."""
    x = np.asarray(llrs, dtype=np.float64).ravel()
    if np.any(np.isnan(x)):
        raise DeepSpeakerError("LLRs hold NaN")
    _, lab = _check_trials(np.where(np.isfinite(x), x, 0.0), labels)
    return x, lab


def pav_llrs(scores: Any, labels: Any) -> np.ndarray:
    """The optimal monotone score-to-LLR map on these trials (PAV, via scikit-learn's isotonic regression):
    ``llr = logit(P_pav(target | s)) - log(N_t / N_n)``; tied scores share one value; ends may be ±inf."""
    from sklearn.isotonic import IsotonicRegression

    s, lab = _check_trials(scores, labels)
    posterior = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True).fit_transform(s, lab.astype(np.float64))
    with np.errstate(divide="ignore"):
        log_odds = np.log(posterior) - np.log1p(-posterior)
    return log_odds - math.log(lab.sum() / (~lab).sum())


def min_cllr(scores: Any, labels: Any) -> float:
    """minCllr: Cllr after the optimal monotone calibration of these very trials (:func:`pav_llrs`)."""
    return cllr(pav_llrs(scores, labels), labels)


def act_dcf(llrs: Any, labels: Any, *, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """actDCF: ``[C_miss p P_miss(θ) + C_fa (1-p) P_fa(θ)] / min(C_miss p, C_fa (1-p))`` at the Bayes threshold θ,
    accepting when ``llr > θ``."""
    x, lab = _check_trials(llrs, labels)
    accept = x > bayes_threshold(p_target, c_miss, c_fa)
    p_miss, p_fa = float(np.mean(~accept[lab])), float(np.mean(accept[~lab]))
    dcf = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    return dcf / min(c_miss * p_target, c_fa * (1.0 - p_target))
