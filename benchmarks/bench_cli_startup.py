"""How fast the command line answers --help and a usage error, beside the time of importing TensorFlow (what
building the parser cost when it imported the model code).

Run: python benchmarks/bench_cli_startup.py [--runs 3]
Each figure is the median wall time of whole processes, interpreter start included.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

# A usage error: an option no command takes (argparse exits 2 before anything runs).
COMMANDS = (["--help"], ["verify", "--help"], ["train", "softmax", "--help"], ["cache", "build", "--help"],
            ["compare", "--help"], ["verify", "a.wav", "b.wav", "--no-such-option"])
REFERENCE = [sys.executable, "-c", "import tensorflow"]


def deep_speaker() -> list[str]:
    """The installed command beside this interpreter, else ``python -m deep_speaker``."""
    script = Path(sys.executable).with_name("deep-speaker")
    return [str(script)] if script.exists() else [sys.executable, "-m", "deep_speaker"]


def median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each command; the median is shown")
    args = parser.parse_args()
    reference = median_seconds(REFERENCE, args.runs)
    print(f"reference: python -c 'import tensorflow': {reference:.3f} s (median of {args.runs})")
    base = deep_speaker()
    for words in COMMANDS:
        seconds = median_seconds(base + words, args.runs)
        print(f"deep-speaker {' '.join(words):<45s} {seconds:.3f} s   {reference / seconds:5.1f}x faster "
              f"than importing TensorFlow")


if __name__ == "__main__":
    main()
