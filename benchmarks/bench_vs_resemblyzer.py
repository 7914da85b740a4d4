"""The packaged default model against Resemblyzer's own package API, side by side on the same files (issue #33:
the default model must stay at least 10x faster than the teacher it distils from).

    python benchmarks/bench_vs_resemblyzer.py [AUDIO_DIR] [--repeats N] [--model PATH] [--pooling P]
    (default: the bundled samples/librispeech/test-other, 100 files, 12.8 min of speech)

Rows, each the median wall time of --repeats passes over every file, from the path to the embedding (decoding and
preprocessing included), after a warm-up on two files:
- Resemblyzer's package API as its README shows it: ``VoiceEncoder("cpu").embed_utterance(preprocess_wav(path))``,
  one file at a time (the reference);
- ``deep-speaker`` (the packaged model): ``Embedder().embed_files(paths)``;
- this toolkit's ``resemblyzer`` encoder (the same package, the partial utterances of many files batched).
Prints audio seconds per wall second of each and its speed relative to the reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import soundfile as sf  # noqa: E402

from deep_speaker.encoders import get_encoder  # noqa: E402
from deep_speaker.encoders.constants import POOLINGS  # noqa: E402
from deep_speaker.encoders.deepspeaker import packaged_model  # noqa: E402

DEFAULT_AUDIO = Path(__file__).resolve().parents[1] / "samples" / "librispeech" / "test-other"


def timed(run: Callable[[], object], repeats: int) -> float:
    """The median wall seconds of ``run()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio_dir", nargs="?", type=Path, default=DEFAULT_AUDIO)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None, help="a candidate model; default: the packaged one")
    parser.add_argument("--pooling", choices=POOLINGS, default=None,
                        help="the deep-speaker rows' pooling (default: the model card's, else windows)")
    args = parser.parse_args()
    from resemblyzer import VoiceEncoder, preprocess_wav

    files = sorted(str(p) for p in args.audio_dir.rglob("*.flac"))
    audio_seconds = sum(sf.info(f).duration for f in files)
    package = VoiceEncoder("cpu", verbose=False)
    model = args.model or packaged_model()
    ours = get_encoder(model=model, pooling=args.pooling)
    batched = get_encoder("resemblyzer")
    rows = {
        "resemblyzer package API (embed_utterance(preprocess_wav(path)), file by file)":
            lambda paths: [package.embed_utterance(preprocess_wav(p)) for p in paths],
        f"deep-speaker ({model.name}, pooling {ours.pooling})": ours.embed_files,
        "resemblyzer through this toolkit (partials of many files batched)": batched.embed_files,
    }
    seconds = {}
    for name, embed in rows.items():
        embed(files[:2])  # warm-up: graph tracing, lazy initialisation
        seconds[name] = timed(lambda: embed(files), args.repeats)
    reference = next(iter(seconds.values()))
    print(f"{len(files)} files, {audio_seconds / 60:.1f} min of audio, median of {args.repeats} passes, "
          f"{os.cpu_count()} CPU cores")
    width = max(len(n) for n in seconds)
    for name, wall in seconds.items():
        print(f"{name:<{width}}  {wall:7.2f} s  {audio_seconds / wall:7.1f} audio-s/s  {reference / wall:5.1f}x")


if __name__ == "__main__":
    main()
