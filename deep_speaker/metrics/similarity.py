"""Speaker similarity that compares across embedding spaces (docs metrics.md): acceptance by a verifier at
thresholds set on real trials, and SECS rescaled between the real different-speaker mean and same-speaker ceiling.

The verifier of a space enrols each real speaker as the centroid of its real utterances (the normalised mean of
unit rows, as SECS does) and scores a query by its cosine to a centroid; a query is accepted as a speaker when
``score > θ``. The real trials are in the same form: each real utterance against its own speaker's centroid
*without it* (leave-one-out: target trials) and against every other speaker's full centroid (non-target trials).
A generated utterance is scored against its speaker's full centroid: that score is exactly its SECS term.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DeepSpeakerError
from .constants import FAR_TARGET, check_far
from .verification import equal_error_rate_threshold, normalize_rows, operating_points


def speaker_centroids(x: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(names, centroids)``: the sorted labels and ``normalise(Σ_{i of s} x_i / |x_i|)`` of each (repeated rows
    count as often as they occur)."""
    unit = normalize_rows(x)
    names, inverse = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    sums = np.zeros((names.size, unit.shape[1]))
    np.add.at(sums, inverse, unit)
    return names, normalize_rows(sums)


def real_trials(real: Any, real_labels: Any, origins: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels (1 = target) of the real trials: each utterance against its speaker's centroid without it
    (target; speakers with one utterance give none) and against every other speaker's centroid (non-target).

    ``origins`` names the source utterance of each row (a resample repeats rows): leaving one out removes every copy
    of it, so a duplicated utterance never scores against itself. Targets first, then non-targets, row by row.
    """
    unit = normalize_rows(real)
    labels = np.asarray(real_labels, dtype=str)
    origins = np.arange(unit.shape[0]) if origins is None else np.asarray(origins)
    if labels.shape != (unit.shape[0],) or origins.shape != labels.shape:
        raise DeepSpeakerError("need one speaker label (and origin) per real embedding")
    names, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((names.size, unit.shape[1]))
    np.add.at(sums, inverse, unit)
    # Copies of each row's utterance: Σ over them is copies · u_i (the copies are the same row).
    _, origin_inverse, origin_counts = np.unique(origins, return_inverse=True, return_counts=True)
    copies = origin_counts[origin_inverse].astype(np.float64)
    rest = sums[inverse] - copies[:, None] * unit
    pairs = np.unique(inverse * (origin_counts.size + 1) + origin_inverse)  # distinct (speaker, utterance) pairs
    distinct = np.bincount(pairs // (origin_counts.size + 1), minlength=names.size)
    has_target = distinct[inverse] >= 2  # some other utterance of the speaker is left to enrol
    target = np.einsum("ij,ij->i", unit[has_target], normalize_rows(rest[has_target]))
    cross = unit @ normalize_rows(sums).T
    other = np.ones_like(cross, dtype=bool)
    other[np.arange(unit.shape[0]), inverse] = False
    nontarget = cross[other]
    return (np.concatenate([target, nontarget]),
            np.concatenate([np.ones(target.size, np.int8), np.zeros(nontarget.size, np.int8)]))


def far_threshold(scores: Any, labels: Any, far: float = FAR_TARGET) -> float:
    """The lowest ROC threshold θ (accept ``score > θ``) whose false-accept rate is at most ``far``."""
    check_far(far)
    p = operating_points(scores, labels)
    # FAR falls along the ascending thresholds and reaches 0 at the largest score, so a threshold always exists.
    return float(p.thresholds[int(np.argmax(p.false_accepts <= far * p.n_nontarget))])


def _accepted_share(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(scores > threshold))


def comparable_similarity(gen: Any, gen_labels: Any, *, real: Any, real_labels: Any, far: float = FAR_TARGET,
                          real_origins: Any | None = None) -> dict[str, Any]:
    """Acceptance, rescaled SECS, EER and nearest speakers of a generated set in one space, from real trials.

    - thresholds: ``θ_EER`` (FAR = FRR on the real trials, interpolated) and ``θ_far`` (:func:`far_threshold`).
    - ``real``: EER of the real trials, the share of real target trials accepted at each θ, the same-speaker
      ceiling ``C`` (mean target score) and the different-speaker mean ``D`` (mean non-target score).
    - ``generated``: SECS (mean score against the own speaker's full centroid), ``(SECS - D) / (C - D)``, the
      share accepted at each θ, the EER of generated targets against real non-targets (each generated
      utterance against every other real speaker's centroid), and the share whose nearest centroid is its own.
    - ``per_utterance``: each generated row's score (NaN when its speaker has no real utterance), acceptance,
      nearest real speaker and its score.
    """
    gen_labels, real_labels = np.asarray(gen_labels, dtype=str), np.asarray(real_labels, dtype=str)
    scores, labels = real_trials(real, real_labels, real_origins)
    messages: list[str] = []
    if not labels.any() or labels.all():
        raise DeepSpeakerError("the real trials need a speaker with 2 utterances and 2 speakers: no verifier threshold")
    eer, theta_eer = equal_error_rate_threshold(scores, labels)
    theta_far = far_threshold(scores, labels, far)
    target, nontarget = scores[labels == 1], scores[labels == 0]
    ceiling, different = float(target.mean()), float(nontarget.mean())
    names, centroids = speaker_centroids(real, real_labels)
    cross = normalize_rows(gen) @ centroids.T
    pos = np.minimum(np.searchsorted(names, gen_labels), names.size - 1)
    known = names[pos] == gen_labels
    own = np.where(known, cross[np.arange(cross.shape[0]), pos], np.nan)
    nearest = np.argmax(cross, axis=1)
    generated: dict[str, Any] = {"n": int(known.sum()), "secs": None, "secs_rescaled": None, "accept_eer": None,
                                 "accept_far": None, "eer": None, "identified": None}
    if known.any():
        secs = float(own[known].mean())
        generated.update(secs=secs, accept_eer=_accepted_share(own[known], theta_eer),
                         accept_far=_accepted_share(own[known], theta_far),
                         identified=float(np.mean(nearest[known] == pos[known])))
        if ceiling > different:
            generated["secs_rescaled"] = (secs - different) / (ceiling - different)
        else:
            messages.append(f"rescaled SECS: the real same-speaker mean {ceiling:.4g} does not exceed the "
                            f"different-speaker mean {different:.4g}; the space does not separate speakers")
        other = np.ones_like(cross, dtype=bool)
        other[np.arange(cross.shape[0]), pos] = False
        gen_nontarget = cross[known][other[known]]
        generated["eer"] = equal_error_rate_threshold(
            np.concatenate([own[known], gen_nontarget]),
            np.concatenate([np.ones(int(known.sum())), np.zeros(gen_nontarget.size)]))[0]
    else:
        messages.append("no generated utterance has a speaker with real utterances: no SECS or acceptance")
    if not known.all() and known.any():
        messages.append(f"{int((~known).sum())} generated utterance(s) of speakers without real utterances left out")
    return {
        "thresholds": {"eer": theta_eer, "far": theta_far, "far_target": far},
        "real": {"eer": eer, "accept_eer": _accepted_share(target, theta_eer),
                 "accept_far": _accepted_share(target, theta_far),
                 "false_accept_far": _accepted_share(nontarget, theta_far),
                 "same_speaker_mean": ceiling, "different_speaker_mean": different,
                 "n_target": int(target.size), "n_nontarget": int(nontarget.size)},
        "generated": generated,
        "per_utterance": {"similarity": own, "known": known, "accepted_eer": own > theta_eer,
                          "accepted_far": own > theta_far, "nearest_speaker": names[nearest],
                          "nearest_similarity": cross[np.arange(cross.shape[0]), nearest]},
        "messages": messages,
    }
