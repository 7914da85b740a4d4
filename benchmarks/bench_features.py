"""Feature speed: the original path (librosa + python_speech_features + a per-frame loop) vs ours, and cache scaling.

    python benchmarks/bench_features.py [AUDIO_DIR]     (default ../shared/data/librispeech-mini, 351 files)

(a) end-to-end (decode + resample + trim + features) and features only (on the same decoded, trimmed
signals), reference vs ours; (b) the whole cache build with 1 worker vs 2 workers.
Targets: features only >= 5x, cache build 2 workers vs 1 >= 1.7x.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import librosa
import numpy as np
import soundfile as sf
from python_speech_features import fbank
from threadpoolctl import threadpool_limits

from deep_speaker.data.audio import read_audio
from deep_speaker.data.cache import build_cache
from deep_speaker.data.corpus import list_utterances
from deep_speaker.data.features import fbank_features

DEFAULT_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech-mini"


def reference_load(path: str) -> np.ndarray:
    """The original read: librosa.load at 16 kHz, then the 95th-percentile trim."""
    signal, _ = librosa.load(path, sr=16000)
    energy = np.abs(signal)
    loud = np.where(energy > np.percentile(energy, 95))[0]
    return signal[loud[0]:loud[-1]]


def reference_features(signal: np.ndarray) -> np.ndarray:
    """The original features: psf.fbank(nfilt=64), then normalising each frame in a Python loop."""
    energies, _ = fbank(signal, samplerate=16000, nfilt=64)
    return np.array([(v - np.mean(v)) / max(np.std(v), 1e-12) for v in energies], dtype=np.float32)


def timed(func: Callable[[], object], repeats: int = 1) -> float:
    """Best wall time of ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def cache_build_time(audio_dir: Path, workers: int, repeats: int) -> tuple[float, float]:
    """Best wall time of a fresh cache build with ``workers`` processes, and the CPU cores it got meanwhile."""
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            before, start = os.times(), time.perf_counter()
            build_cache(audio_dir, Path(tmp) / "cache", workers=workers, progress=False)
            wall, after = time.perf_counter() - start, os.times()
        cpu = sum(getattr(after, k) - getattr(before, k) for k in ("user", "system", "children_user", "children_system"))
        best = min(best, (wall, cpu / wall))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio_dir", nargs="?", type=Path, default=DEFAULT_AUDIO)
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the best is kept")
    args = parser.parse_args()
    threadpool_limits(limits=1, user_api="blas")  # as the cache build runs: parallel by processes, not BLAS threads
    paths = [u.path for u in list_utterances(args.audio_dir)]
    audio_s = sum(sf.info(p).duration for p in paths)
    reference_features(reference_load(paths[0])), fbank_features(read_audio(paths[0]))  # warm up both paths

    ref_e2e = timed(lambda: [reference_features(reference_load(p)) for p in paths], args.repeats)
    our_e2e = timed(lambda: [fbank_features(read_audio(p)) for p in paths], args.repeats)
    signals = [read_audio(p) for p in paths]
    trimmed_s = sum(s.size for s in signals) / 16000
    ref_feat = timed(lambda: [reference_features(s) for s in signals], args.repeats)
    our_feat = timed(lambda: [fbank_features(s) for s in signals], args.repeats)
    worst = max(float(np.abs(fbank_features(s) - reference_features(s)).max()) for s in signals)
    build1, cores1 = cache_build_time(args.audio_dir, 1, args.repeats)
    build2, cores2 = cache_build_time(args.audio_dir, 2, args.repeats)

    print(f"{len(paths)} files, {audio_s:.0f} s of audio ({trimmed_s:.0f} s after trim) in {args.audio_dir}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; best of {args.repeats}")
    print(f"max |ours - reference| = {worst:.2e}")
    rows = [("end-to-end (decode+trim+features)", ref_e2e, our_e2e, audio_s, "reference", "ours"),
            ("features only (after decoding)", ref_feat, our_feat, trimmed_s, "reference", "ours"),
            ("cache build, 1 vs 2 workers", build1, build2, audio_s, "1 worker", "2 workers")]
    print(f"{'measurement':36} {'baseline':>22} {'ours':>22} {'speed-up':>9}")
    for name, base, ours, seconds, base_name, our_name in rows:
        print(f"{name:36} {f'{base_name} {base:6.2f} s':>22} {f'{our_name} {ours:6.2f} s':>22} {base / ours:8.1f}x")
        print(f"{'':36} {f'{seconds / base:8.0f} audio s/s':>22} {f'{seconds / ours:8.0f} audio s/s':>22}")
    print(f"CPU cores the cache build got (CPU time / wall time): {cores1:.2f} with 1 worker, "
          f"{cores2:.2f} with 2 workers (about 1 and 2 on an idle machine)")
    print(f"targets: features only >= 5x ({ref_feat / our_feat:.1f}x), "
          f"cache build 2 workers >= 1.7x ({build1 / build2:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
