"""The evaluation layer's choices and defaults that command lines show, in a module that imports nothing: building
the ``deep-speaker`` parser (``--help``, a usage error) must not wait for numpy or SciPy. The modules that use
them keep these names (``eval.scoring.DEFAULT_PRIOR``, ``eval.degrade.KINDS``, ...)."""

DEFAULT_PRIOR = 0.5  # the prior verify states its probability at, and calibrations are fitted at
DEGRADATION_KINDS = ("noise", "lowpass", "griffinlim", "melvocoder", "codec", "pitch", "tempo")
GENDER_RULES = ("any", "same", "different")
EXPORT_SUFFIXES = (".npz", ".npy", ".csv")
KALDI_SUFFIX = ".ark"


def copy_name(kind: str, level: float) -> str:
    """The name of a degraded copy, ``kind@level`` (``noise@30``, ``codec@0.97``): its folder, its report keys and
    how ``deep-speaker run --degrade`` spells it."""
    return f"{kind}@{level:g}"
