"""The main job's configuration and its degraded copies; the job itself runs end to end, through the CLI as a user
runs it, in test_determinism.py (its runs are shared by the end-to-end and the determinism checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "librispeech"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_corpus(root: Path, train_speakers: int, test_speakers: int) -> Path:
    """Links to a few bundled speakers in the layout the main job expects."""
    for subset, count in (("train-clean-100", train_speakers), ("test-other", test_speakers)):
        for speaker in sorted((SAMPLES / subset).iterdir())[:count]:
            (root / subset).mkdir(parents=True, exist_ok=True)
            (root / subset / speaker.name).symlink_to(speaker)
    return root


def test_run_options_default_to_the_job_config() -> None:
    from deep_speaker.cli import build_parser
    from deep_speaker.cli.options import config_values
    from deep_speaker.errors import DeepSpeakerError
    from deep_speaker.pipeline import JobConfig

    parser = build_parser(["run"])
    assert JobConfig(**config_values(parser.parse_args(["run"]), JobConfig)) == JobConfig()
    args = parser.parse_args(["run", "--data", "d", "-o", "o", "--width", "0.5", "--softmax-steps", "3",
                              "--triplet-steps", "4", "--batch-size", "6", "--seed", "1", "--precision",
                              "mixed_bfloat16", "--workers", "2", "--degrade", "codec@0.97, noise@10"])
    assert JobConfig(**config_values(args, JobConfig)) == JobConfig(
        data_dir=Path("d"), output_dir=Path("o"), width=0.5, softmax_steps=3, triplet_steps=4, batch_size=6, seed=1,
        precision="mixed_bfloat16", workers=2, degradations=(("codec", 0.97), ("noise", 10.0)))
    assert JobConfig(**config_values(parser.parse_args(["run", "--degrade", "none"]), JobConfig)).degradations == ()
    with pytest.raises(DeepSpeakerError, match="named twice"):  # the Python API checks what the option checks
        JobConfig(degradations=(("noise", 10), ("noise", 10.0)))
    with pytest.raises(DeepSpeakerError, match=r"--keep_every must be 0 or a multiple of --save_every \(50\)"):
        JobConfig(keep_every=30)  # before any cache is built, not when the first phase starts
    assert JobConfig(keep_every=100).keep_every == 100


@pytest.mark.parametrize(("text", "refused"), [
    ("noise", "'noise' is not KIND@LEVEL"), ("noise@loud", "'noise@loud' is not KIND@LEVEL"),
    ("hiss@10", "hiss@10 is not KIND@LEVEL with KIND one of noise,"), ("noise@nan", "noise@nan is not KIND@LEVEL"),
    ("noise@10,noise@10.0", "noise@10 named twice"), ("", "'' is not KIND@LEVEL"),
])
def test_a_bad_degrade_option_is_a_usage_error_before_any_work(tmp_path: Path, capsys, text: str,
                                                               refused: str) -> None:
    from deep_speaker.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["run", "--data", str(SAMPLES), "-o", str(tmp_path / "run"), "--degrade", text])
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert exited.value.code == 2 and len(lines) == 1 and refused in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_a_degraded_copy_killed_mid_write_is_written_again(tmp_path: Path, monkeypatch) -> None:
    """'Skip if present' only for a complete copy: the job writes each copy beside its final name first."""
    from deep_speaker import pipeline
    from deep_speaker.data.corpus import find_audio_files
    from deep_speaker.eval import degrade
    from test_encoders import MeanFbank  # the toy encoder of the interface tests: no model to load

    data = small_corpus(tmp_path / "data", train_speakers=0, test_speakers=2)
    cfg = pipeline.JobConfig(data_dir=data, output_dir=tmp_path / "run", degradations=(("noise", 10.0),),
                             compare_subsets=2)
    files = sorted(Path(p).relative_to(data / "test-other") for p in find_audio_files(data / "test-other")[0])
    assert len(files) == 20
    real_write = degrade.sf.write
    written: list[int] = []

    def dies_after_three(*args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt("killed mid-write")
        written.append(1)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(degrade.sf, "write", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        pipeline.compare_degraded(MeanFbank(), cfg, tmp_path / "report")
    copy_dir = cfg.output_dir / "degraded" / "noise@10"
    assert not copy_dir.exists()  # only the .partial folder is left, never a half copy under the final name
    monkeypatch.setattr(degrade.sf, "write", real_write)
    reports, _ = pipeline.compare_degraded(MeanFbank(), cfg, tmp_path / "report")
    assert sorted(p.relative_to(copy_dir) for p in copy_dir.rglob("*.flac")) == files
    assert reports["noise@10"]["generated"]["n"] == len(files)
