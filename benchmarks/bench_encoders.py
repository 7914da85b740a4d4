"""Throughput and EER of every registered encoder that can be built here, in one run, on the same speech.

    python benchmarks/bench_encoders.py [AUDIO_DIR] [--encoders NAME,...] [--repeats N]
    (default: the bundled samples/librispeech/test-other, 10 speakers x 10 utterances)

Each encoder is built with its defaults (Deep Speaker with the packaged demo model); one whose package or
weights are missing is reported as skipped, with its one-line reason (e.g. "weights not found at ..."), and
the others still run. Throughput = audio seconds / wall seconds of ``embed_files`` on all files (decoding,
preprocessing and the model; median of ``--repeats``), after a warm-up on two files (graph tracing, lazy
initialisation excluded). EER over all unordered pairs of the files (``metrics.pair_scores`` +
``equal_error_rate``): 450 same-speaker and 4500 different-speaker pairs on the bundled set.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from deep_speaker.data.corpus import scan_corpus  # noqa: E402
from deep_speaker.encoders import available_encoders, get_encoder  # noqa: E402
from deep_speaker.errors import DeepSpeakerError  # noqa: E402
from deep_speaker.metrics import equal_error_rate, pair_scores  # noqa: E402

DEFAULT_AUDIO = Path(__file__).resolve().parents[1] / "samples" / "librispeech" / "test-other"


def build(name: str):
    """The encoder with its defaults (Deep Speaker: the packaged model), or the one-line reason it cannot be built."""
    try:
        if name == "deep-speaker":
            from deep_speaker.encoders.deepspeaker import packaged_model

            return get_encoder(name, model=packaged_model())
        return get_encoder(name)
    except DeepSpeakerError as exc:
        return str(exc)
    except ImportError as exc:  # a registered module that this checkout does not have yet
        return f"module not available ({exc})"


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio_dir", nargs="?", default=str(DEFAULT_AUDIO))
    parser.add_argument("--encoders", default=",".join(available_encoders()),
                        help="comma-separated encoder names (default: all registered)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    utterances, failures, _ = scan_corpus(args.audio_dir)
    if failures or not utterances:
        raise SystemExit(f"{args.audio_dir}: {len(utterances)} usable files, {len(failures)} rejected")
    paths = [u.path for u in utterances]
    speakers = np.array([u.speaker for u in utterances])
    audio_seconds = sum(sf.info(p).duration for p in paths)
    print(f"{len(paths)} files of {len(set(speakers))} speakers, {audio_seconds / 60:.1f} min of audio "
          f"({args.audio_dir}), {os.cpu_count()} CPU cores")
    print(f"{'encoder':<14} {'dim':>4} {'seconds':>8} {'audio s/s':>10} {'EER %':>7}")
    for name in args.encoders.split(","):
        encoder = build(name)
        if isinstance(encoder, str):
            print(f"{name:<14} skipped: {encoder}")
            continue
        encoder.embed_files(paths[:2])  # warm-up
        seconds, embeddings = timed(lambda: encoder.embed_files(paths), args.repeats)
        eer = equal_error_rate(*pair_scores(embeddings, speakers))
        print(f"{name:<14} {encoder.embedding_size:>4} {seconds:8.1f} {audio_seconds / seconds:10.1f} {100 * eer:7.2f}")


if __name__ == "__main__":
    main()
