"""Where the main job's minutes go (#34): `deep-speaker run` under several machine settings, one after another,
each phase's wall seconds (summary.json's ``phase_seconds``: caches, softmax, triplet, verification, generated)
side by side, with the ratio to the first setting.

    python benchmarks/bench_job_phases.py [--variants native,avx2,jax] [--keep DIR] [-- RUN OPTIONS...]

Settings: ``native`` (TensorFlow, oneDNN picks the CPU's widest vector instructions), ``avx2`` (TensorFlow with
oneDNN capped at AVX2 by its own ONEDNN_MAX_CPU_ISA: an AVX-512 machine runs the kernels an AVX2-only CPU gets, so
one machine shows what the vector width costs each phase), ``jax`` (KERAS_BACKEND=jax: XLA compiles the steps).
The run options default to a small job on the bundled speech (``--softmax-steps 60 --triplet-steps 20 --width
0.25``); pass the quickstart's own (none: ``--``) to time the README's job. Each setting writes into its own
fresh folder (under ``--keep DIR`` if given, else a temporary one), so every run builds its caches and trains from
scratch, as a first quickstart does. After the table, each setting's figures as the job printed them (the README's
quickstart block and its spread across settings come from here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "native": {"KERAS_BACKEND": "tensorflow"},
    "avx2": {"KERAS_BACKEND": "tensorflow", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "jax": {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
}
SMALL_JOB = ["--softmax-steps", "60", "--triplet-steps", "20", "--width", "0.25"]


def run_job(variant: str, options: list[str], out: Path) -> tuple[dict, list[str]]:
    """The job's summary.json after one run under ``variant``'s environment, and the figures it printed (from the
    ``Unseen speakers`` line to the last degraded copy's)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **VARIANTS[variant]}
    cmd = [sys.executable, "-m", "deep_speaker", "run", "-o", str(out), *options]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{variant}: the job failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    printed = done.stdout.splitlines()
    first = next(i for i, line in enumerate(printed) if line.startswith("Unseen speakers"))
    last = next(i for i, line in enumerate(printed) if line.startswith("Summary:"))
    return json.loads((out / "summary.json").read_text()), printed[first:last]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="native,avx2", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--keep", type=Path, help="write each run into DIR/VARIANT (must not exist) and keep it")
    parser.add_argument("options", nargs="*", help="options of `deep-speaker run` (after --)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    options = args.options if "--" in sys.argv else SMALL_JOB
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep} exists; name a new folder")
    summaries, printed = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-job-") as tmp:
        for variant in variants:
            summaries[variant], printed[variant] = run_job(variant, options, (args.keep or Path(tmp)) / variant)
            print(f"{variant}: {summaries[variant]['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
    first = summaries[variants[0]]
    print(f"deep-speaker run {' '.join(options)}")
    print(f"machine: {first['machine']['cpu']} ({', '.join(first['machine']['cpu_flags']) or 'no vector flags'}), "
          f"{first['machine']['cores']} cores")
    header = f"{'phase':14s}" + "".join(f"{v:>12s}" for v in variants) + "".join(
        f"{v + '/' + variants[0]:>14s}" for v in variants[1:])
    print(header)
    for phase in [*first["phase_seconds"], "wall"]:
        seconds = [s["wall_seconds"] if phase == "wall" else s["phase_seconds"][phase] for s in summaries.values()]
        print(f"{phase:14s}" + "".join(f"{t:11.1f}s" for t in seconds)
              + "".join(f"{t / seconds[0]:13.2f}x" for t in seconds[1:]))
    eers = ", ".join(f"{v} {100 * s['verification']['eer']:.2f} %" for v, s in summaries.items())
    print(f"test EER: {eers}")
    for variant, lines in printed.items():
        print(f"\n{variant}:", *lines, sep="\n")


if __name__ == "__main__":
    main()
