"""Verification API and commands: trial lists, SAP/SAN against plain numpy, the CLI outputs, the original queries."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from deep_speaker.cli import configure_logging, main
from deep_speaker.data.cache import FeatureCache, build_cache
from deep_speaker.encoders import deepspeaker as embed
from deep_speaker.encoders.deepspeaker import Embedder
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.eval.config import EvaluateConfig
from deep_speaker.eval.scoring import ScoreNorm
from deep_speaker.eval.trials import read_trials
from deep_speaker.eval.verification import (
    embed_cache,
    embed_folder,
    evaluate,
    load_cohort,
    speaker_pair_similarity,
    trial_list_set,
)
from deep_speaker.model.rescnn import load_model

REPO = Path(__file__).resolve().parents[1]
SPEAKERS = ("1688", "1998", "2033")
PER_SPEAKER = 3


@pytest.fixture(scope="module")
def checkpoint(reference_checkpoint) -> str:
    return str(reference_checkpoint / "ResCNN_random_triplet.h5")


@pytest.fixture(scope="module")
def embedder(checkpoint):
    return Embedder(load_model(checkpoint))


@pytest.fixture
def shared_model(monkeypatch, embedder):
    """Commands given the checkpoint path reuse the loaded model (loading is tested in test_model/test_embed)."""
    real = embed.load_model
    monkeypatch.setattr(embed, "load_model", lambda path: embedder.model if str(path).endswith(".h5") else real(path))


@pytest.fixture(scope="module")
def corpus(libri_mini, tmp_path_factory) -> Path:
    """A small LibriSpeech-layout folder: 3 test-other speakers x 3 utterances (copies of the real files)."""
    root = tmp_path_factory.mktemp("corpus")
    for speaker in SPEAKERS:
        for path in sorted((libri_mini / "test-other" / speaker).rglob("*.flac"))[:PER_SPEAKER]:
            target = root / path.relative_to(libri_mini / "test-other")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    return root


@pytest.fixture(scope="module")
def cache_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache")
    build_cache(corpus, out, update=True, progress=False)
    return out


def plain_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_read_trials_voxceleb_format(tmp_path):
    trials = tmp_path / "list.txt"
    trials.write_text("1 id10270/5r0dWxy17C8/00001.wav id10270/5r0dWxy17C8/00002.wav\n\n"
                      "0 id10270/x/00001.wav id10300/y/00003.wav\n")
    parsed = read_trials(trials, root="/data/vox1")
    assert parsed.labels.tolist() == [1, 0]
    assert parsed.first == ["/data/vox1/id10270/5r0dWxy17C8/00001.wav", "/data/vox1/id10270/x/00001.wav"]
    assert parsed.second[1] == "/data/vox1/id10300/y/00003.wav"
    assert read_trials(trials).first[0] == str(tmp_path / "id10270/5r0dWxy17C8/00001.wav")
    trials.write_text("1 a.wav b.wav\nyes a.wav\n")
    with pytest.raises(DeepSpeakerError, match=r"list.txt:2: expected 'LABEL PATH_A PATH_B'"):
        read_trials(trials)


def test_sap_san_agree_with_plain_cosine(embedder, corpus):
    labelled = embed_folder(embedder, corpus)
    assert sorted(set(labelled.speakers)) == list(SPEAKERS) and len(labelled.speakers) == 9
    e, spk = labelled.embeddings.astype(np.float64), labelled.speakers
    same = [plain_cosine(e[i], e[j]) for i in range(9) for j in range(i + 1, 9) if spk[i] == spk[j]]
    diff = [plain_cosine(e[i], e[j]) for i in range(9) for j in range(i + 1, 9) if spk[i] != spk[j]]
    report = evaluate(embedder, {"audio_dir": str(corpus)}, EvaluateConfig(bootstrap=0)).report
    assert report["sap"] == pytest.approx(np.mean(same), abs=1e-9)
    assert report["san"] == pytest.approx(np.mean(diff), abs=1e-9)
    assert (report["n_target"], report["n_nontarget"]) == (len(same), len(diff))
    pair = speaker_pair_similarity(labelled, "1688", "1998")
    first = [i for i in range(9) if spk[i] == "1688"]
    second = [i for i in range(9) if spk[i] == "1998"]
    assert pair["sap"] == pytest.approx(np.mean([plain_cosine(e[i], e[j]) for i in first for j in first if i < j]))
    assert pair["san"] == pytest.approx(np.mean([plain_cosine(e[i], e[j]) for i in first for j in second]))


def test_cache_and_folder_give_the_same_embeddings(embedder, corpus, cache_dir):
    from_folder = embed_folder(embedder, corpus)
    from_cache = embed_cache(embedder, FeatureCache(cache_dir))
    assert from_cache.speakers == from_folder.speakers
    np.testing.assert_allclose(from_cache.embeddings, from_folder.embeddings, atol=1e-5)
    with pytest.raises(DeepSpeakerError, match="unknown speaker p999 .*known speakers: 1688, 1998, 2033"):
        embed_cache(embedder, FeatureCache(cache_dir), ["p999"])


def test_a_store_is_a_cohort_as_the_cache_it_was_converted_from(embedder, cache_dir, tmp_path):
    """--cohort takes features of either format (a sharded store was refused as a folder without audio files)."""
    from deep_speaker.data.sources import convert_features

    convert_features(cache_dir, tmp_path / "store", progress=False)
    from_cache = load_cohort(embedder, cache_dir, "snorm")
    from_store = load_cohort(embedder, tmp_path / "store", "snorm")
    assert from_store.cohort.shape == (len(SPEAKERS), embedder.embedding_size)
    np.testing.assert_allclose(from_store.cohort, from_cache.cohort, atol=1e-6)
    assert from_store.cohort_files == from_cache.cohort_files


def test_trials_score_each_file_once_and_drop_failed(embedder, corpus, tmp_path):
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*.flac"))
    trials = tmp_path / "trials.txt"
    trials.write_text(f"1 {files[0]} {files[1]}\n0 {files[0]} {files[3]}\n0 {files[1]} missing.flac\n")
    scored = trial_list_set(embedder, read_trials(trials, corpus), corpus)
    scores = ScoreNorm().scores(scored.items.embeddings, scored.first, scored.second)
    labels, failures = scored.labels, scored.items.failures
    e = embedder.embed_files([corpus / files[i] for i in (0, 1, 3)])
    np.testing.assert_allclose(scores, [plain_cosine(e[0], e[1]), plain_cosine(e[0], e[2])], atol=1e-6)
    assert labels.tolist() == [1, 0]
    assert [f.path for f in failures] == [str(corpus / "missing.flac")]


def test_embed_command_writes_npz_and_reports_bad_files(corpus, checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    out = tmp_path / "emb.npz"
    code = main(["embed", str(corpus / "1688"), str(bad), "-o", str(out), "--model", checkpoint])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{bad}: unreadable audio" in captured.err
    with np.load(out, allow_pickle=False) as data:
        assert data["embeddings"].shape == (PER_SPEAKER, 512) and data["paths"].dtype.kind == "U"
        assert len(str(data["model_identity"])) == 16
    assert main(["embed", str(corpus / "1998"), "-o", str(tmp_path / "e.csv"), "--model", checkpoint]) == 0
    assert main(["embed", str(corpus / "1998"), "-o", str(out), "--model", str(tmp_path / "none.keras")]) == 2
    assert f"model not found: {tmp_path / 'none.keras'}" in capsys.readouterr().err


def test_verify_command(corpus, checkpoint, capsys, shared_model):
    a, b = sorted(corpus.rglob("*.flac"))[:2]
    assert main(["verify", str(a), str(b), "--model", checkpoint, "--threshold", "-1"]) == 0
    out = capsys.readouterr().out
    assert "score (cosine similarity) = " in out and "SAME speaker" in out
    assert main(["verify", str(a), str(corpus / "nope.wav"), "--model", checkpoint]) == 1


def test_evaluate_verification_writes_json_and_pngs(corpus, cache_dir, checkpoint, tmp_path, capsys, shared_model):
    report_path, plots_dir = tmp_path / "report.json", tmp_path / "plots"
    code = main(["evaluate-verification", str(corpus), "--model", checkpoint, "-o", str(report_path),
                 "--plots", str(plots_dir), "--projection", "pca"])
    assert code == 0
    out = capsys.readouterr().out
    assert "EER" in out and "minDCF (p_target=0.01)" in out and "SAP" in out
    report = json.loads(report_path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert report["n_target"] == 9 and report["n_nontarget"] == 27 and 0 <= report["eer"] <= 1
    assert {"sap", "san", "min_dcf", "best_f", "model_identity", "failures"} <= set(report)
    assert report["encoder"] == "deep-speaker" and report["model_identity"] == Embedder(checkpoint).identity
    for name in ("det.png", "similarity_matrix.png", "projection_pca.png"):
        assert (plots_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate-verification", "--cache", str(cache_dir), "--model", checkpoint]) == 0
    assert main(["evaluate-verification", str(corpus), "--cache", str(cache_dir), "--model", checkpoint]) == 2


def run_original_cli(argv: list[str]) -> int:
    """The repo-root cli.py, as its users run it, in this process."""
    sys.path.insert(0, str(REPO))
    try:
        import cli as original
    finally:
        sys.path.remove(str(REPO))
    return original.main(argv)


def test_original_unseen_speakers_and_get_embeddings(corpus, cache_dir, checkpoint, tmp_path, capsys,
                                                     monkeypatch, embedder, shared_model):
    common = ["--audio_dir", str(corpus), "--cache_output_dir", str(cache_dir), "--model", checkpoint]
    assert run_original_cli(["--unseen_speakers", "1688,1998", *common]) == 0
    out = capsys.readouterr().out
    labelled = embed_cache(embedder, FeatureCache(cache_dir), ["1688", "1998"])
    expected = speaker_pair_similarity(labelled, "1688", "1998")
    assert f"SAP (mean cosine similarity, same speaker 1688) = {expected['sap']:.4f}" in out
    assert f"SAN (mean cosine similarity, 1688 vs 1998) = {expected['san']:.4f}" in out

    assert run_original_cli(["--unseen_speakers", "1688,p362", *common]) == 2
    assert "unknown speaker p362 in the cache" in capsys.readouterr().err
    assert run_original_cli(["--unseen_speakers", "p362,1688", "--audio_dir", str(corpus), "--model", checkpoint]) == 2
    assert "unknown speaker p362" in (err := capsys.readouterr().err) and "known speakers: 1688, 1998, 2033" in err

    monkeypatch.chdir(tmp_path)
    assert run_original_cli(["--get_embeddings", "2033", *common]) == 0
    assert str(tmp_path / "2033_embeddings.npz") in capsys.readouterr().out
    with np.load(tmp_path / "2033_embeddings.npz", allow_pickle=False) as data:
        assert data["embeddings"].shape == (PER_SPEAKER, 512)
        assert set(data["speakers"].tolist()) == {"2033"}


def test_unseen_speakers_of_a_folder_walk_it_once(corpus, checkpoint, capsys, monkeypatch, embedder, shared_model):
    from deep_speaker.eval import verification

    walks = []
    walk = verification.scan_corpus
    monkeypatch.setattr(verification, "scan_corpus", lambda *a, **k: walks.append(a) or walk(*a, **k))
    assert run_original_cli(["--unseen_speakers", "1688,1998", "--audio_dir", str(corpus), "--model", checkpoint]) == 0
    assert len(walks) == 1  # the speakers are checked on the same walk that lists the files to embed
    out = capsys.readouterr().out
    e = embedder.embed_files(sorted((corpus / "1688").rglob("*.flac"))).astype(np.float64)
    sap = np.mean([plain_cosine(e[i], e[j]) for i in range(PER_SPEAKER) for j in range(i + 1, PER_SPEAKER)])
    assert f"SAP (mean cosine similarity, same speaker 1688) = {sap:.4f}" in out


def test_missing_default_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/triplet here
    monkeypatch.setattr(embed, "PACKAGED_MODEL_DIR", tmp_path / "default_model")
    with pytest.raises(DeepSpeakerError, match="no model given.*pass --model PATH"):
        embed.default_model_path()


def test_default_model_is_announced_once(tmp_path, monkeypatch, capsys, checkpoint):
    packaged = tmp_path / "default_model"
    packaged.mkdir()
    load_model(checkpoint).save(packaged / "demo.keras")
    (packaged / ".demo.tmp.keras").write_text("a temporary left by a killed save")
    (packaged / "model_card.json").write_text(json.dumps({"model": "demo.keras", "training_data": "librispeech-mini",
                                                          "eer": 0.123}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(embed, "PACKAGED_MODEL_DIR", packaged)
    configure_logging()  # the notices are log records; the CLI shows INFO and above on stderr
    assert embed.default_model_path() == packaged / "demo.keras"
    assert embed.default_model_path() == packaged / "demo.keras"
    err = capsys.readouterr().err
    assert err.count("packaged default model") == 1
    assert "small demo model" in err and "librispeech-mini" in err and "12.3 %" in err
    # A triplet training run takes precedence over the packaged model; of several roots, the newest run wins.
    for root, mtime in (("checkpoints", 1_000_000), ("cache/checkpoints", 2_000_000)):
        run = tmp_path / root / "triplet"
        run.mkdir(parents=True)
        (run / "last.keras").write_text("not opened by default_model_path")
        (run / "state.json").write_text("{}")
        os.utime(run / "last.keras", (mtime, mtime))
    assert embed.default_model_path() == Path("checkpoints") / "triplet" / "last.keras"
    assert embed.default_model_path([Path("checkpoints"), Path("cache/checkpoints")]) == Path(
        "cache/checkpoints/triplet/last.keras")
    assert "newest triplet checkpoint" in capsys.readouterr().err
