"""What a feature build does (``cache build`` / ``cache update``, ``cli.cache.run_build``): :class:`BuildConfig`, each
option's default and help text written once, on its field, in a module that imports nothing heavy (the command line
derives the options from it, ``deep_speaker.cli.options``, and must answer ``--help`` without numpy or Arrow)."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field, fields

from .constants import (AUDIO_AUGMENTATIONS, DEFAULT_SHARD_SIZE, DEFAULT_TRIM, LAYOUTS, MIC_CHOICES,
                        MIN_SPEECH_SECONDS, TRIM_MODES)

FORMATS = ("files", "sharded")  # a per-file cache, or a sharded store (data.sources tells them apart on disk)

# The help texts below are argparse format strings that state their default themselves ("formatted").


@dataclass(frozen=True)
class BuildConfig:
    """What ``cache build`` / ``cache update`` do: the folders, then by keyword the options. A field with a help
    text is a command-line option of both (``only_build``: of ``build`` alone)."""

    audio_dir: str
    cache_dir: str
    update: bool = False  # add only new or changed files ('update'), else wipe and build
    workers: int = 1  # the command line's --workers / --multi_threading (cli.cache.worker_count)
    _: KW_ONLY
    layout: str = field(default="auto", metadata={
        "choices": LAYOUTS, "formatted": True,
        "help": "how file paths give speaker and utterance ids (default: detected)"})
    trim: str = field(default=DEFAULT_TRIM, metadata={
        "choices": TRIM_MODES, "formatted": True,
        "help": "silence trim: percentile = the original (default, what the released model saw), vad = energy "
                "voice-activity trim, none"})
    min_seconds: float = field(default=MIN_SPEECH_SECONDS, metadata={
        "formatted": True, "help": "skip (and report) files shorter than this after trimming (default %(default)s)"})
    mic: str = field(default="mic1", metadata={
        "choices": MIC_CHOICES, "formatted": True,
        "help": "VCTK 0.92 microphone to keep (the other is used only where it is missing)"})
    shard: str | None = field(default=None, metadata={
        "metavar": "I/N",
        "help": "compute only the I-th of N parts of the files (0-based) into a part manifest or listing: a batch "
                "scheduler's job array runs the N parts anywhere on a shared folder (e.g. --shard "
                "$SLURM_ARRAY_TASK_ID/N), then 'update' merges them"})
    fmt: str | None = field(default=None, metadata={
        "option": "format", "choices": FORMATS,
        "help": "files = manifest.json + one .npy per utterance; sharded = shards of --shard_size utterances with an "
                "Arrow index each, for large corpora (docs/STORE.md). Default: what the folder holds, else files"})
    float16: bool = field(default=False, metadata={
        "help": "sharded store: keep the frames as float16 (half the size; the model reads them as float32)"})
    shard_size: int = field(default=DEFAULT_SHARD_SIZE, metadata={
        "metavar": "N", "formatted": True, "help": "sharded store: utterances per shard (default %(default)s)"})
    scheduler: str | None = field(default=None, metadata={
        "metavar": "tcp://HOST:PORT",
        "help": "sharded store: run one task per shard on this Dask cluster (its workers must see the folders); "
                "default: --workers local processes"})
    progress: bool = True  # the command line's --no_progress
    yes: bool = field(default=False, metadata={
        "only_build": True, "help": "wipe an existing cache without the 3 s warning"})
    augment: str | None = field(default=None, metadata={
        "only_build": True, "metavar": "KINDS",
        "help": f"then add augmented copies of every utterance, for training: a comma list of "
                f"{', '.join(AUDIO_AUGMENTATIONS)} (noise: babble of other speakers or coloured noise at a random "
                f"SNR; reverb: simulated room; band: a 3.4-6 kHz narrowband channel; speed: 0.9/1.1, new speaker ids "
                f"SPK-speed90/110)"})
    copies: int = field(default=1, metadata={
        "only_build": True, "metavar": "K", "formatted": True,
        "help": "augmented copies per utterance (default %(default)s)"})
    augment_seed: int = field(default=0, metadata={
        "only_build": True, "formatted": True, "help": "seed of the augmented copies (default %(default)s)"})


def build_options(only_build: bool) -> list[str]:
    """The fields of :class:`BuildConfig` that are options of both ``build`` and ``update`` (``only_build``: of
    ``build`` alone), in order."""
    return [f.name for f in fields(BuildConfig)
            if "help" in f.metadata and f.metadata.get("only_build", False) == only_build]
