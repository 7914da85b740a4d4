"""The data layer's choices and defaults that command lines show, in a module that imports nothing: building
the ``deep-speaker`` parser (``--help``, a usage error) must not wait for numpy, SciPy or Arrow.

Each value keeps its home module's name there too (``data.audio.TRIM_MODES``, ``data.store.DEFAULT_SHARD_SIZE``).
"""

TRIM_MODES = ("percentile", "vad", "none")
DEFAULT_TRIM = "percentile"
# The one list of audio file types: what soundfile's libsndfile decodes (no .m4a/.aac: it cannot).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".sph")
# Less speech than this after trimming is too little to learn or recognise a speaker from: such a file is
# reported and skipped, by the cache build and by the encoder alike.
MIN_SPEECH_SECONDS = 0.25
AUDIO_AUGMENTATIONS = ("noise", "reverb", "band", "speed")
LAYOUTS = ("auto", "vctk", "librispeech", "folders")
MIC_CHOICES = ("mic1", "mic2")
DEFAULT_CROP_FRAMES = 160  # 1.6 s, the original NUM_FRAMES
DEFAULT_SHARD_SIZE = 1000


def check_shard_size(shard_size: int) -> int:
    """``shard_size`` (utterances per shard of a sharded store) when it is at least 1; one line otherwise. The one
    check of every store build, conversion and augmentation, and of the command line's --shard_size."""
    if shard_size < 1:
        from ..errors import DeepSpeakerError

        raise DeepSpeakerError(f"--shard_size must be at least 1, got {shard_size}")
    return shard_size
