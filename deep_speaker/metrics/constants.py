"""The metrics' choices and defaults that command lines show, in a module that imports nothing: building the
``deep-speaker`` parser (``--help``, a usage error) must not wait for numpy, SciPy or scikit-learn. The modules
that use them keep these names (``metrics.bootstrap.DEFAULT_REPLICATES``, ``metrics.similarity.FAR_TARGET``, ...)."""

DEFAULT_REPLICATES = 1000  # verification bootstrap resamples
DEFAULT_SEED = 0
SCORE_NORMS = ("none", "snorm", "asnorm")
DEFAULT_TOP_K = 300  # WeSpeaker's and the AS-norm literature's usual cohort size for VoxCeleb
DEFAULT_SET_REPLICATES = 200  # each replicate recomputes FD and KD: a fifth of the verification bootstrap's 1000
FAR_TARGET = 0.01  # the false-accept rate of the second operating point
