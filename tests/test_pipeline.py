"""The main job end to end at a reduced size, through the CLI as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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


@pytest.mark.slow
def test_main_job_end_to_end(tmp_path: Path) -> None:
    data = small_corpus(tmp_path / "data", train_speakers=12, test_speakers=4)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "deep_speaker", "run", "--data", str(data), "-o", str(out), "--width", "0.0625",
           "--softmax-steps", "10", "--triplet-steps", "6", "--batch-size", "24", "--workers", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Unseen speakers: SAP" in done.stdout

    summary = json.loads((out / "summary.json").read_text())
    pngs = [Path(p) for p in summary["pngs"]]
    assert {p.name for p in pngs} >= {"det.png", "similarity_matrix.png", "projection_tsne.png"}
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000

    v = summary["verification"]
    assert v["n_target"] == 4 * 45 and v["n_nontarget"] == 6 * 100
    assert v["sap"] > v["san"]
    assert 0.0 <= v["eer"] <= 0.5

    # The reported SAP/SAN are those of the embeddings the job's checkpoint gives (independent numpy cosine).
    from deep_speaker.encoders.deepspeaker import Embedder

    embedder = Embedder(summary["checkpoint"])
    speakers = sorted(p.name for p in (data / "test-other").iterdir())
    files = [f for s in speakers for f in sorted((data / "test-other" / s).rglob("*.flac"))]
    labels = [f.parent.parent.name for f in files]
    emb = embedder.embed_files(files).astype(np.float64)
    sims = emb @ emb.T
    same = np.equal.outer(labels, labels)
    upper = np.triu(np.ones_like(same), 1).astype(bool)
    assert v["sap"] == pytest.approx(sims[same & upper].mean(), abs=1e-3)
    assert v["san"] == pytest.approx(sims[~same & upper].mean(), abs=1e-3)

    rows = {r["set"]: r for r in summary["degradations"]}
    assert set(rows) == {"noise@30", "noise@10", "lowpass@2000", "melvocoder@80", "melvocoder@20"}
    # More damage, larger distances and lower speaker similarity.
    assert rows["noise@10"]["fd"] > rows["noise@30"]["fd"] > 0
    assert rows["noise@10"]["kd"] > rows["noise@30"]["kd"]
    assert rows["noise@10"]["secs"] < rows["noise@30"]["secs"]
    assert rows["melvocoder@20"]["fd"] > rows["melvocoder@80"]["fd"] > 0
    for name in rows:
        report = json.loads((out / "report" / f"compare_{name}.json").read_text())
        assert report["fd"]["full"] == pytest.approx(rows[name]["fd"])


def test_run_options_default_to_the_job_config() -> None:
    from deep_speaker.cli import build_parser
    from deep_speaker.cli.options import config_values
    from deep_speaker.pipeline import JobConfig

    parser = build_parser(["run"])
    assert JobConfig(**config_values(parser.parse_args(["run"]), JobConfig)) == JobConfig()
    args = parser.parse_args(["run", "--data", "d", "-o", "o", "--width", "0.5", "--softmax-steps", "3",
                              "--triplet-steps", "4", "--batch-size", "6", "--seed", "1", "--precision",
                              "mixed_bfloat16", "--workers", "2"])
    assert JobConfig(**config_values(args, JobConfig)) == JobConfig(
        data_dir=Path("d"), output_dir=Path("o"), width=0.5, softmax_steps=3, triplet_steps=4, batch_size=6, seed=1,
        precision="mixed_bfloat16", workers=2)


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
