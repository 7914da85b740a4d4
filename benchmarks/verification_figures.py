"""The README's verification table: the packaged model on the bundled test-other speakers (4950 trials), raw,
calibrated on the bundled train-clean-100 speakers, and with S-norm / AS-norm against them, with intervals.

Run: python benchmarks/verification_figures.py      (about 2 minutes on 2 CPU cores)

Nothing here is fitted on the test-other speakers: the calibration is fitted on the bundled train-clean-100
speakers (each utterance cut in two halves for same-speaker trials), the cohort is those speakers.
"""

from __future__ import annotations

from pathlib import Path

from deep_speaker.encoders import get_encoder
from deep_speaker.eval.verification import calibrate, evaluate, load_cohort
from deep_speaker.metrics import cllr

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "samples" / "librispeech" / "train-clean-100"
TEST = {"audio_dir": str(REPO / "samples" / "librispeech" / "test-other")}


def ci(report: dict, name: str, scale: float = 1.0) -> str:
    iv = report["intervals"][name]
    return f"{scale * iv['value']:.{1 if scale == 100 else 3}f} [{scale * iv['low']:.{1 if scale == 100 else 3}f}, " \
           f"{scale * iv['high']:.{1 if scale == 100 else 3}f}]"


def main() -> None:
    encoder = get_encoder()
    speakers = {f.relative_to(TRAIN).parts[0] for f in TRAIN.rglob("*.flac")}
    rows = []
    raw = evaluate(encoder, TEST)
    rows.append(("cosine, uncalibrated", raw.report, f"{cllr(raw.scores, raw.labels):.3f} (cosine read as an LLR)"))
    record, _ = calibrate(encoder, {"audio_dir": str(TRAIN), "segments": 2})
    calibrated = evaluate(encoder, TEST, calibration=record).report
    rows.append(("cosine, calibrated on the train-clean-100 speakers", calibrated, f"{calibrated['cllr']:.3f}"))
    for method, top_k in (("snorm", 300), ("asnorm", 20)):
        norm = load_cohort(encoder, TRAIN, method, top_k=top_k)
        report = evaluate(encoder, TEST, score_norm=norm).report
        name = f"{method}{f' (top {top_k})' if method == 'asnorm' else ''}"
        rows.append((f"{name}, cohort: {len(speakers)} train-clean-100 speakers", report, "-"))
    print("| scores | EER % [95 % CI] | minDCF 0.01 [95 % CI] | minDCF 0.05 | actDCF 0.01 / 0.05 | Cllr | minCllr |")
    print("|---|---|---|---|---|---|---|")
    for name, r, c in rows:
        act = (f"{r['act_dcf']['p_target=0.01']:.3f} / {r['act_dcf']['p_target=0.05']:.3f}" if r.get("calibration")
               else "-")
        print(f"| {name} | {ci(r, 'eer', 100)} | {ci(r, 'min_dcf_0.01')} | {ci(r, 'min_dcf_0.05')} | {act} | {c} | "
              f"{r['min_cllr']:.3f} |")
    print(f"\ncalibration: llr = {record.calibration.scale:.3f} * cosine {record.calibration.offset:+.3f}; intervals: "
          f"speaker bootstrap, {raw.report['intervals']['replicates']} resamples of 10 speakers, seed 0")


if __name__ == "__main__":
    main()
