"""The metrics' choices and defaults that command lines show, in a module that imports nothing: building the
``deep-speaker`` parser (``--help``, a usage error) must not wait for numpy, SciPy or scikit-learn. The modules
that use them keep these names (``metrics.bootstrap.DEFAULT_REPLICATES``, ``metrics.similarity.FAR_TARGET``, ...)."""

DEFAULT_REPLICATES = 1000  # verification bootstrap resamples
DEFAULT_SEED = 0
SCORE_NORMS = ("none", "snorm", "asnorm")
DEFAULT_TOP_K = 300  # WeSpeaker's and the AS-norm literature's usual cohort size for VoxCeleb
DEFAULT_SET_REPLICATES = 200  # each replicate recomputes FD and KD: a fifth of the verification bootstrap's 1000
FAR_TARGET = 0.01  # the false-accept rate of the second operating point
MIN_REPLICATES = 100  # the fewest bootstrap resamples whose 2.5 and 97.5 percentiles mean anything


# The range checks of those numbers, written once: the metrics refuse them, and every command (compare, similarity,
# evaluate-verification) refuses its options through the same lines before anything is embedded.
def check_replicates(replicates: int, what: str = "a bootstrap", zero: bool = False) -> int:
    """``replicates`` when it gives a 95 % interval (at least :data:`MIN_REPLICATES`; ``zero``: 0, none, too);
    one line naming ``what`` otherwise."""
    if (replicates != 0 or not zero) and replicates < MIN_REPLICATES:
        from ..errors import DeepSpeakerError

        raise DeepSpeakerError(f"{what} needs at least {MIN_REPLICATES} resamples for a 95 % interval"
                               f"{' (or 0)' if zero else ''}, got {replicates}")
    return replicates


def check_far(far: float, what: str = "the false-accept target") -> float:
    """``far`` when it is a false-accept rate strictly between 0 and 1; one line naming ``what`` otherwise."""
    if not 0.0 < far < 1.0:
        from ..errors import DeepSpeakerError

        raise DeepSpeakerError(f"{what} must lie in (0, 1), got {far:g}")
    return far
