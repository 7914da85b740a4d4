"""The Encoder interface and registry: a second, toy encoder (defined here) runs end to end through ``stats``,
``compare``, ``evaluate-verification`` and ``embed``; its numbers are checked against plain numpy / scikit-learn /
scipy recomputations, and its statistics are refused against Deep Speaker's. The Embedder is an Encoder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import soundfile as sf
from conftest import sklearn_eer

from deep_speaker.cli import main
from deep_speaker.data.audio import AudioError, apply_trim, read_audio, resample
from deep_speaker.data.cache import FeatureCache, build_cache
from deep_speaker.data.features import fbank_features
from deep_speaker.encoders import DEFAULT_ENCODER, Encoder, available_encoders, get_encoder, register_encoder
from deep_speaker.errors import DeepSpeakerError, Failure
from deep_speaker.eval.degrade import degrade_folder
from deep_speaker.eval.verification import embed_cache

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = REPO / "samples" / "librispeech" / "test-other"
TOY = "toy-mean-fbank"
SMALL = ["--num-subsets", "10", "--ndb-bins", "5", "--fd-inf-points", "5"]


class MeanFbank(Encoder):
    """Toy encoder: the L2-normalised mean over frames of the trimmed signal's normalised 64-band fbank features."""

    name = TOY
    sample_rate = 16000
    embedding_size = 64

    def __init__(self, trim: str = "percentile"):
        self.trim = trim

    @property
    def settings(self) -> dict:
        return {"features": "fbank", "num_filters": 64, "reduce": "mean", "trim": self.trim}

    @property
    def identity(self) -> str:
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]

    def prepare_signal(self, signal: np.ndarray, sample_rate: int, where: str) -> np.ndarray:
        x = apply_trim(resample(np.asarray(signal, np.float32), sample_rate, 16000), self.trim)
        if x.size < 4000:
            raise AudioError(where, "too short for the toy encoder")
        return fbank_features(x)

    def embed_prepared(self, inputs) -> np.ndarray:
        # Accumulated in float64: a float32 mean over frames rounds by how the array is laid out in memory.
        means = np.stack([f.mean(axis=0, dtype=np.float64) for f in inputs])
        return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    register_encoder(TOY, MeanFbank, replace=True)


def by_hand(path: Path | str) -> np.ndarray:
    """The toy embedding in plain numpy: mean of the features of the percentile-trimmed file, unit length."""
    mean = fbank_features(read_audio(path)).astype(np.float64).mean(axis=0)
    return mean / np.sqrt(mean @ mean)


def link_speakers(root: Path, speakers: list[str]) -> Path:
    for speaker in speakers:
        (root / speaker).mkdir(parents=True)
        for flac in sorted((HELD_OUT / speaker).rglob("*.flac")):
            (root / speaker / flac.name).symlink_to(flac)
    return root


@pytest.fixture(scope="module")
def all_speakers() -> list[str]:
    return sorted(p.name for p in HELD_OUT.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def work(tmp_path_factory, all_speakers) -> Path:
    """real/: the 10 held-out speakers (100 files, more than 64 so both covariances have full rank);
    noisy/: their copies with white noise at 20 dB SNR."""
    root = tmp_path_factory.mktemp("toy")
    link_speakers(root / "real", all_speakers)
    degrade_folder(root / "real", root / "noisy", kind="noise", level=20.0, seed=1)
    return root


def tiny_rescnn(path: Path) -> Path:
    import keras

    from deep_speaker.model.rescnn import build_rescnn

    keras.utils.set_random_seed(0)
    build_rescnn(width=0.125).save(path)
    return path


def test_registry_lists_and_refuses_unknown_names(capsys):
    assert available_encoders()[0] == DEFAULT_ENCODER == "deep-speaker" and TOY in available_encoders()
    with pytest.raises(DeepSpeakerError) as exc:
        get_encoder("wavlm")
    assert str(exc.value) == f"unknown encoder 'wavlm'; choose one of {', '.join(available_encoders())}"
    with pytest.raises(ValueError, match="already registered"):
        register_encoder(TOY, MeanFbank)
    assert isinstance(get_encoder(TOY), MeanFbank) and get_encoder(TOY, trim="none").settings["trim"] == "none"
    with pytest.raises(DeepSpeakerError, match=f"encoder '{TOY}' does not take"):
        get_encoder(TOY, window_seconds=2.0)
    # From the shell: one line, exit 2, for an unknown name and for a deep-speaker option given to the toy.
    a = str(sorted(HELD_OUT.rglob("*.flac"))[0])
    assert main(["verify", a, a, "--encoder", "wavlm"]) == 2
    err = capsys.readouterr().err
    assert "unknown encoder 'wavlm'" in err and err.count("\n") == 1
    assert main(["verify", a, a, "--encoder", TOY, "--window", "2"]) == 2
    assert "--window applies to deep-speaker only" in capsys.readouterr().err


def test_embedder_is_an_encoder(tmp_path):
    from deep_speaker.data.features import FEATURE_SETTINGS
    from deep_speaker.encoders.deepspeaker import Embedder
    from deep_speaker.model.rescnn import load_model, model_identity, to_embedding_model

    path = tiny_rescnn(tmp_path / "tiny.keras")
    embedder = get_encoder("deep-speaker", model=path, hop_seconds=1.6)
    assert isinstance(embedder, Embedder) and isinstance(embedder, Encoder)
    assert embedder.name == "deep-speaker" and embedder.sample_rate == 16000 and embedder.embedding_size == 512
    # The identity of statistics files written before: the hash of the embedding model's weights.
    assert embedder.identity == model_identity(to_embedding_model(load_model(path)))
    # The settings statistics files recorded before: features, 1.6 s windows every 1.6 s (here), 0.25 s of speech.
    assert embedder.settings == {**FEATURE_SETTINGS, "trim": "percentile", "window_frames": 160, "hop_frames": 160,
                                 "min_frames": 160, "min_audio_seconds": 0.25}
    files = sorted((HELD_OUT / "1688").rglob("*.flac"))[:3]
    signals = [sf.read(f, dtype="float32")[0] for f in files]
    np.testing.assert_allclose(embedder.embed_signals(signals, 16000), embedder.embed_files(files), atol=1e-5)


def test_toy_stats_and_compare_end_to_end(work, tmp_path, capsys):
    assert main(["stats", str(work / "real"), "-o", str(tmp_path / "real.npz"), "--encoder", TOY]) == 0
    with np.load(tmp_path / "real.npz", allow_pickle=False) as data:
        assert str(data["encoder"]) == TOY and data["embeddings"].shape == (100, 64)
        assert str(data["model_identity"]) == MeanFbank().identity
        assert json.loads(str(data["feature_settings"])) == MeanFbank().settings
        expected = np.stack([by_hand(p) for p in data["paths"]])
        np.testing.assert_allclose(data["embeddings"], expected, atol=1e-5)
    bad = work / "noisy" / "1688" / "bad.wav"
    bad.write_bytes(b"RIFF, but no audio")  # a generated file that cannot be embedded
    report_path = tmp_path / "report.json"
    code = main(["compare", str(tmp_path / "real.npz"), str(work / "noisy"), "--encoder", TOY, "-o",
                 str(report_path), *SMALL])
    bad.unlink()
    captured = capsys.readouterr()
    assert code == 1 and f"skipped {bad}: unreadable audio" in captured.err
    assert f"encoder {TOY}" in captured.out and "real half vs half" in captured.out
    report = json.loads(report_path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert report["settings"]["encoder"] == TOY and report["generated"]["dimension"] == 64
    assert [Failure.from_dict(f).path for f in report["generated"]["failures"]] == [str(bad)]

    real = np.stack([by_hand(p) for p in sorted((work / "real").rglob("*.flac"))])
    noisy_files = sorted((work / "noisy").rglob("*.flac"))
    gen = np.stack([by_hand(p) for p in noisy_files])
    # FD by the textbook formula: |mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½), scipy's matrix square root.
    s1, s2 = np.cov(real, rowvar=False), np.cov(gen, rowvar=False)
    diff = real.mean(0) - gen.mean(0)
    fd = diff @ diff + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert report["fd"]["full"] == pytest.approx(fd, rel=1e-4)
    # SECS: cosine of each noisy copy to the mean real embedding of its speaker.
    speaker = [p.parent.name for p in noisy_files]
    real_speaker = [p.parent.name for p in sorted((work / "real").rglob("*.flac"))]
    centroids = {s: real[[r == s for r in real_speaker]].mean(0) for s in set(speaker)}
    secs = [g @ centroids[s] / np.linalg.norm(g) / np.linalg.norm(centroids[s]) for g, s in zip(gen, speaker)]
    assert report["speaker_similarity"]["secs"] == pytest.approx(np.mean(secs), rel=1e-5)
    assert report["fd"]["full"] > report["baseline"]["fd"]["full"] > 0  # noise moves the toy's space too


def test_toy_stats_are_refused_against_deep_speakers(work, tmp_path, capsys):
    assert main(["stats", str(work / "real" / "1688"), "-o", str(tmp_path / "toy.npz"), "--encoder", TOY]) == 0
    model = tiny_rescnn(tmp_path / "tiny.keras")
    assert main(["stats", str(work / "real" / "1688"), "-o", str(tmp_path / "ds.npz"), "--model", str(model)]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "toy.npz"), str(tmp_path / "ds.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different encoders" in err and f"{TOY} vs deep-speaker" in err
    # A folder embedded now with the toy is refused against Deep Speaker's file the same way.
    assert main(["compare", str(tmp_path / "ds.npz"), str(work / "real" / "1688"), "--encoder", TOY]) == 2
    assert f"deep-speaker vs {TOY}" in capsys.readouterr().err


def test_toy_evaluate_verification_eer_matches_sklearn(work, all_speakers, tmp_path, capsys):
    corpus = link_speakers(tmp_path / "corpus", all_speakers[:4])
    report_path = tmp_path / "verification.json"
    assert main(["evaluate-verification", str(corpus), "--encoder", TOY, "-o", str(report_path)]) == 0
    assert "EER" in capsys.readouterr().out
    report = json.loads(report_path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert report["encoder"] == TOY and report["model_identity"] == MeanFbank().identity and report["failures"] == []

    files = sorted(corpus.rglob("*.flac"))
    emb = np.stack([by_hand(f) for f in files])
    speakers = np.array([f.parent.name for f in files])
    rows, cols = np.triu_indices(len(files), 1)
    scores = np.einsum("ij,ij->i", emb[rows], emb[cols])
    labels = (speakers[rows] == speakers[cols]).astype(int)
    assert (report["n_target"], report["n_nontarget"]) == (int(labels.sum()), int((1 - labels).sum())) == (180, 600)
    assert report["sap"] == pytest.approx(scores[labels == 1].mean(), abs=1e-6)
    assert report["san"] == pytest.approx(scores[labels == 0].mean(), abs=1e-6)
    assert report["eer"] == pytest.approx(sklearn_eer(scores, labels), abs=1e-4)
    assert 0 < report["eer"] < 0.5  # the toy's space separates speakers somewhat


def test_toy_embed_command_and_feature_cache(work, tmp_path, capsys):
    out = tmp_path / "toy.npz"
    assert main(["embed", str(work / "real" / "2033"), "-o", str(out), "--encoder", TOY]) == 0
    with np.load(out, allow_pickle=False) as data:
        assert str(data["encoder"]) == TOY
        np.testing.assert_allclose(data["embeddings"], np.stack([by_hand(p) for p in data["paths"]]), atol=1e-5)
    # A feature cache holds Deep Speaker's inputs: the toy cannot embed it, and says so in one line.
    build_cache(link_speakers(tmp_path / "speech", ["2033"]), tmp_path / "cache", update=True, progress=False)
    with pytest.raises(DeepSpeakerError, match=f"encoder '{TOY}' cannot embed a feature cache"):
        embed_cache(MeanFbank(), FeatureCache(tmp_path / "cache"))
    capsys.readouterr()
    assert main(["evaluate-verification", "--cache", str(tmp_path / "cache"), "--encoder", TOY]) == 2
    assert "cannot embed a feature cache" in capsys.readouterr().err


def test_files_the_layout_rejects_are_reported_not_dropped(tmp_path, all_speakers, capsys):
    """stats and evaluate-verification on a folder name every file they cannot use and exit 1, as the cache does."""
    folder = link_speakers(tmp_path / "real", all_speakers[:2])
    loose = folder / "loose.flac"  # outside any speaker folder
    loose.symlink_to(sorted(HELD_OUT.rglob("*.flac"))[0])
    assert main(["stats", str(folder), "-o", str(tmp_path / "s.npz"), "--encoder", TOY]) == 1
    assert f"{loose}: not inside a speaker folder" in capsys.readouterr().err
    assert main(["evaluate-verification", str(folder), "--encoder", TOY, "-o", str(tmp_path / "r.json")]) == 1
    assert f"{loose}: not inside a speaker folder" in capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert [f["path"] for f in report["failures"]] == [str(loose)]
    assert report["n_utterances"] == 20  # the speakers' files all counted


def test_a_binary_trial_list_and_nan_statistics_are_one_line_errors(tmp_path, all_speakers, capsys):
    trials = tmp_path / "trials.txt"
    trials.write_bytes(bytes(range(256)) * 4)
    assert main(["evaluate-verification", "--trials", str(trials), "--root", str(HELD_OUT), "--encoder", TOY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("not a text trial list (binary content)") and len(err.splitlines()) == 1
    folder = link_speakers(tmp_path / "real", all_speakers[:2])
    assert main(["stats", str(folder), "-o", str(tmp_path / "s.npz"), "--encoder", TOY]) == 0
    with np.load(tmp_path / "s.npz") as data:
        arrays = dict(data)
    arrays["mu"][0] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    assert main(["compare", str(tmp_path / "s.npz"), str(tmp_path / "nan.npz")]) == 2
    assert "NaN or infinite" in capsys.readouterr().err
