"""``deep-speaker cache build|update|convert|info|inputs``: turn a speech corpus into the feature cache (per-file, or
a sharded store for large corpora) that training reads."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..data.cluster import check_scheduler
from ..data.config import FORMATS, BuildConfig, build_options
from ..data.constants import DEFAULT_CROP_FRAMES, DEFAULT_SHARD_SIZE, check_shard_size
from ..errors import DeepSpeakerError, Failure
from ..settings import check_choice
from . import EXIT_OK, EXIT_PARTIAL
from .options import add_config_options, config_values, finite_float

WIPE_COUNTDOWN_S = 3


def worker_count(workers: int | None, multi_threading: bool) -> int:
    """``--workers N``, or every core for ``--multi_threading``, else 1."""
    if workers is not None:
        return max(1, workers)
    return os.cpu_count() or 1 if multi_threading else 1


def confirm_wipe(cache_dir: Path, yes: bool, seconds: int = WIPE_COUNTDOWN_S) -> None:
    """Say exactly what a rebuild deletes and give the user a few seconds to press Ctrl+C."""
    from ..data.sources import folder_format, wipe_plan

    plan = wipe_plan(cache_dir)  # refuses a folder that is not a cache of ours
    if yes or not plan:
        return
    arrays = [p for p in plan if p.suffix == ".npy"]
    others = ", ".join(p.name for p in plan if p.suffix not in (".npy", ".arrow"))
    size = sum(p.stat().st_size for p in plan if p.exists()) / 1e6
    what = (f"{len(arrays)} shards (frames and index) of its store listing" if folder_format(cache_dir) == "sharded"
            else f"{len(arrays)} feature arrays listed in its manifest")
    print(f"Rebuilding the feature cache in {cache_dir} deletes {what} and {others} ({size:.1f} MB), nothing else, "
          f"in {seconds} s; Ctrl+C to stop (--yes skips this wait).", file=sys.stderr, flush=True)
    time.sleep(seconds)


def cache_format(cache_dir: str | os.PathLike, fmt: str | None) -> str:
    """``--format`` when given, else the format of what the folder holds (a sharded store or not), else files."""
    from ..data.sources import folder_format

    if fmt is not None:
        return check_choice(fmt, FORMATS, "cache format")
    return "sharded" if folder_format(cache_dir) == "sharded" else "files"


def build_config(args: argparse.Namespace, update: bool) -> BuildConfig:
    """The :class:`~deep_speaker.data.config.BuildConfig` of a parsed ``cache build`` / ``cache update`` command
    line (the options ``update`` lacks keep their defaults)."""
    return BuildConfig(args.audio_dir, args.cache_dir, update, worker_count(args.workers, args.multi_threading),
                       progress=not args.no_progress, **config_values(args, BuildConfig))


def run_build(config: BuildConfig) -> int:
    """Build or update a cache or a sharded store (then add augmented copies with ``augment``), print the summary;
    exit code 1 when some files failed."""
    from ..data.augment import check_augmentations
    from ..data.build import parse_shard
    from ..data.sources import augment_features, build_features, open_features

    audio_dir, cache_dir, update, workers = config.audio_dir, config.cache_dir, config.update, config.workers
    augment, scheduler = config.augment, config.scheduler
    fmt = cache_format(cache_dir, config.fmt)
    if fmt == "files" and (config.float16 or scheduler):
        raise DeepSpeakerError(f"{'--float16' if config.float16 else '--scheduler'} needs a sharded store (--format "
                               f"sharded)")
    if fmt == "sharded":
        check_shard_size(config.shard_size)  # before the wipe warning, not after it
    if scheduler:
        check_scheduler(scheduler)  # a typo is refused now, not after the wipe warning and the corpus scan
    if augment:
        augment = ",".join(check_augmentations(augment))  # a typo is refused before the build, not after it
    if augment and config.shard is not None:
        raise DeepSpeakerError("--augment works on the whole cache: build the shards, update, then build --augment")
    if not update and config.shard is None:
        confirm_wipe(Path(cache_dir), config.yes)
    shard_part = parse_shard(config.shard) if config.shard else None
    store_options = {"dtype": "float16" if config.float16 else None, "shard_size": config.shard_size,
                     "scheduler": scheduler}
    summary = build_features(audio_dir, cache_dir, fmt == "sharded", update=update, shard=shard_part,
                             layout=config.layout, workers=workers, trim=config.trim, min_seconds=config.min_seconds,
                             progress=config.progress, mic=config.mic, **(store_options if fmt == "sharded" else {}))
    for line in summary.lines():
        print(line)
    failed = bool(summary.failed)
    if augment:
        added = augment_features(cache_dir, augment, config.copies, seed=config.augment_seed, progress=config.progress,
                                 workers=workers, scheduler=scheduler, shard_size=config.shard_size)
        print(f"augmented copies ({augment}, seed {config.augment_seed}): {added} entries added")
        for failure in open_features(cache_dir).manifest.get("augment", {}).get("failures", []):
            print(f"{Failure.from_dict(failure)} (no augmented copy)")
            failed = True
    return EXIT_PARTIAL if failed else EXIT_OK


def run_inputs(cache_dir: str, output: str | None = None, *, crop_frames: int = DEFAULT_CROP_FRAMES,
               holdout: float = 0.2, seed: int = 0) -> int:
    """Generate the training inputs of a cache and say where they are."""
    from ..data.inputs import generate_training_inputs

    path = generate_training_inputs(cache_dir, output, crop_frames=crop_frames, holdout=holdout, seed=seed)
    print(f"training inputs written to {path}")
    return EXIT_OK


def run_convert(cache_dir: str, store_dir: str, *, float16: bool = False, shard_size: int = DEFAULT_SHARD_SIZE,
                yes: bool = False, progress: bool = True) -> int:
    """Convert a cache into a sharded store, print the summary; exit code 1 when some arrays could not be kept."""
    from ..data.sources import convert_features

    check_shard_size(shard_size)  # before the wipe warning, not after it
    confirm_wipe(Path(store_dir), yes)
    summary = convert_features(cache_dir, store_dir, "float16" if float16 else "float32", shard_size=shard_size,
                               progress=progress)
    for line in summary.lines():
        print(line)
    return EXIT_PARTIAL if summary.failed else EXIT_OK


def info(args: argparse.Namespace) -> int:
    """Print what a cache holds."""
    from ..data.sources import open_features
    from ..data.store import FeatureStore

    cache = open_features(args.cache_dir)
    settings = ", ".join(f"{k}={v}" for k, v in cache.settings.items())
    print(f"cache:      {cache.path} (built from {cache.manifest.get('audio_dir')}, "
          f"{cache.manifest.get('layout')} layout)")
    if isinstance(cache, FeatureStore):
        print(f"format:     sharded store, {len(cache.shards)} shards, {cache.dtype} frames")
    print(f"speakers:   {len(cache.speakers)}")
    print(f"utterances: {len(cache)}")
    print(f"audio:      {cache.hours:.2f} h")
    print(f"settings:   {settings}")
    print(f"failures:   {len(cache.failures)}")
    for failure in cache.failures:
        print(f"  {failure}")
    return EXIT_OK


def add_build_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by build and update."""
    parser.add_argument("audio_dir", help="folder of the corpus (VCTK, LibriSpeech or speaker_id/*.wav folders)")
    parser.add_argument("cache_dir", help="folder of the cache (manifest.json + features/) or of the store "
                                          "(store.json + shards/)")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="processes to use (default 1)")
    parser.add_argument("--multi_threading", action="store_true", help="use every CPU core (like --workers $(nproc))")
    # Defaults, help texts and choices written once, on data.config.BuildConfig.
    add_config_options(parser, BuildConfig, dashes=False, only=build_options(only_build=False))
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def dispatch_build(update: bool):
    """The ``func`` of build / update."""
    def run(args: argparse.Namespace) -> int:
        return run_build(build_config(args, update))
    return run


def register(subparsers) -> None:
    """Add ``cache`` and its subcommands."""
    parser = subparsers.add_parser(
        "cache", help="build, update or inspect a feature cache",
        description="A feature cache holds the features (64 filterbank energies per 10 ms frame) of every "
                    "utterance of a corpus, computed once so that training and evaluation do not decode "
                    "audio again. Files that cannot be used are reported (path: reason) and skipped.",
        epilog="Exit codes: 0 ok, 1 some files failed (listed, the rest cached), 2 usage error.")
    sub = parser.add_subparsers(dest="cache_command", metavar="SUBCOMMAND", required=True)
    build = sub.add_parser("build", help="compute the features of every file (wipes the cache folder first)",
                           description="Compute the features of every audio file of AUDIO_DIR into CACHE_DIR. "
                                       "An existing cache there is wiped after a 3 s warning.",
                           epilog="example: deep-speaker cache build ~/VCTK-Corpus ~/ds-cache --multi_threading")
    add_build_options(build)
    add_config_options(build, BuildConfig, dashes=False, only=build_options(only_build=True))
    build.set_defaults(func=dispatch_build(update=False))
    update = sub.add_parser("update", help="add only new or changed files, keep the rest",
                            description="Compute the features of the files of AUDIO_DIR that CACHE_DIR lacks "
                                        "or that changed (size or time), keep everything else. Also finishes "
                                        "a build that was interrupted. Refuses a cache built with other settings.")
    add_build_options(update)
    update.set_defaults(func=dispatch_build(update=True))
    convert = sub.add_parser("convert", help="copy a cache into a new sharded store (optionally float16)",
                             description="Copy the features, index, settings and failures of CACHE_DIR (a per-file "
                                         "cache or a store) into STORE_DIR, a sharded store (docs/STORE.md); "
                                         "STORE_DIR is wiped first after a 3 s warning. The store then updates "
                                         "from the same audio and reads like the cache everywhere.",
                             epilog="example: deep-speaker cache convert ~/ds-cache ~/ds-store --float16")
    convert.add_argument("cache_dir", help="folder of the cache to read")
    convert.add_argument("store_dir", help="folder of the new store")
    convert.add_argument("--float16", action="store_true", help="keep the frames as float16")
    convert.add_argument("--shard_size", type=int, default=DEFAULT_SHARD_SIZE, metavar="N",
                         help=f"utterances per shard (default {DEFAULT_SHARD_SIZE})")
    convert.add_argument("--yes", action="store_true", help="wipe an existing store without the 3 s warning")
    convert.add_argument("--no_progress", action="store_true", help="no progress bar")
    convert.set_defaults(func=lambda a: run_convert(a.cache_dir, a.store_dir, float16=a.float16,
                                                    shard_size=a.shard_size, yes=a.yes, progress=not a.no_progress))
    show = sub.add_parser("info", help="print speakers, utterances, hours, failures and settings of a cache")
    show.add_argument("cache_dir", help="folder of the cache")
    show.set_defaults(func=info)
    inputs = sub.add_parser("inputs", help="make the training inputs (fixed-length crops per speaker)",
                            description="Cut fixed-length crops of every speaker's features, with a held-out "
                                        "part per speaker, into one .npz that softmax pre-training reads.")
    inputs.add_argument("cache_dir", help="folder of the cache")
    inputs.add_argument("--output", default=None, help="file to write (default CACHE_DIR/full_inputs.npz; "
                                                       "a .pkl name writes the .npz beside it)")
    inputs.add_argument("--crop_frames", type=int, default=DEFAULT_CROP_FRAMES,
                        help=f"frames per crop (default {DEFAULT_CROP_FRAMES} = 1.6 s)")
    inputs.add_argument("--holdout", type=finite_float, default=0.2, help="fraction held out per speaker (default 0.2)")
    inputs.add_argument("--seed", type=int, default=0, help="random seed of the crop positions and the split")
    inputs.set_defaults(func=lambda a: run_inputs(a.cache_dir, a.output, crop_frames=a.crop_frames,
                                                  holdout=a.holdout, seed=a.seed))
