"""Rebuild samples/ (the speech bundled with the repository) from librispeech-mini.

samples/librispeech/test-other: all 10 speakers x 10 utterances (held out: never trained on).
samples/librispeech/train-clean-100: 116 female + 116 male speakers, 1 utterance each (lowest ids among those
whose utterance lasts at least 4 s, so that triplet training can cut an anchor and a positive from it).

    python scripts/make_samples.py ../shared/data/librispeech-mini
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import soundfile as sf

TRAIN_PER_SEX = 116
MIN_TRAIN_SECONDS = 4.0


def speaker_sexes(speakers_txt: Path) -> dict[str, str]:
    """Reader id -> 'F'/'M' from LibriSpeech's SPEAKERS.TXT."""
    sexes = {}
    for line in speakers_txt.read_text().splitlines():
        fields = [f.strip() for f in line.split("|")]
        if not line.startswith(";") and len(fields) >= 2:
            sexes[fields[0]] = fields[1]
    return sexes


def main(src: Path, dst: Path) -> None:
    sexes = speaker_sexes(src / "SPEAKERS.TXT")
    train = sorted((p.name for p in (src / "train-clean-100").iterdir()
                    if all(sf.info(f).duration >= MIN_TRAIN_SECONDS for f in p.rglob("*.flac"))), key=int)
    chosen = [s for sex in "FM" for s in [s for s in train if sexes.get(s) == sex][:TRAIN_PER_SEX]]
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src / "test-other", dst / "test-other")
    for speaker in sorted(chosen, key=int):
        shutil.copytree(src / "train-clean-100" / speaker, dst / "train-clean-100" / speaker)
    shutil.copy(src / "LICENSE.TXT", dst / "LICENSE.TXT")
    kept = set(chosen) | {p.name for p in (src / "test-other").iterdir()}
    lines = [l for l in (src / "SPEAKERS.TXT").read_text().splitlines()
             if l.startswith(";") or l.split("|")[0].strip() in kept]
    (dst / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parents[1] / "samples" / "librispeech")
