"""Encoders declare themselves: a toy encoder registered with an option of its own (``--toy-frames``) runs through
``embed``, ``verify``, ``compare``, ``stats`` and ``evaluate-verification`` with nothing in ``cli/`` knowing it, its
numbers checked against plain numpy; each of several encoders gets its own options, an option no chosen encoder
takes is one line (exit 2); the weights an encoder loaded find its calibration; the embedding cache is a wrapper."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import sklearn_eer

from deep_speaker.cli import main
from deep_speaker.data.audio import AudioError, read_audio
from deep_speaker.data.features import fbank_features
from deep_speaker.encoders import Encoder, encoder_declaration, get_encoder, register_encoder
from deep_speaker.encoders.options import EncoderDeclaration, EncoderOption
from deep_speaker.eval.degrade import degrade_folder

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = REPO / "samples" / "librispeech" / "test-other"
FRAMES, OFFSET = "toy-frames", "toy-offset"


def at_least_one(n: int) -> str | None:
    return None if n >= 1 else "must be at least 1"


class FirstFrames(Encoder):
    """Toy encoder: the L2-normalised mean of the first ``frames`` filterbank frames of the untrimmed signal."""

    name = FRAMES
    sample_rate = 16000
    embedding_size = 64
    declaration = EncoderDeclaration(options=(
        EncoderOption("frames", "--toy-frames", int, "frames averaged from the start", 300, "N", check=at_least_one),))

    def __init__(self, frames: int = 300):
        self.frames = frames

    @property
    def settings(self) -> dict:
        return {"features": "fbank", "reduce": "mean of the first frames", "frames": self.frames}

    @property
    def identity(self) -> str:
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]

    def prepare_signal(self, signal: np.ndarray, sample_rate: int, where: str) -> np.ndarray:
        if signal.size < 4000:
            raise AudioError(where, "too short for the toy encoder")
        return fbank_features(np.asarray(signal, np.float32))[:self.frames]

    def embed_prepared(self, inputs) -> np.ndarray:
        means = np.stack([f.mean(axis=0, dtype=np.float64) for f in inputs])
        return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


class SpreadFrom(FirstFrames):
    """Second toy: the L2-normalised standard deviation of the frames from ``offset`` on (its own option)."""

    name = OFFSET
    declaration = EncoderDeclaration(options=(
        EncoderOption("offset", "--toy-offset", int, "frames skipped at the start", 0, "N"),))

    def __init__(self, offset: int = 0):
        self.offset = offset

    @property
    def settings(self) -> dict:
        return {"features": "fbank", "reduce": "std from an offset", "offset": self.offset}

    def prepare_signal(self, signal: np.ndarray, sample_rate: int, where: str) -> np.ndarray:
        return fbank_features(np.asarray(signal, np.float32))[self.offset:]

    def embed_prepared(self, inputs) -> np.ndarray:
        spread = np.stack([f.std(axis=0, dtype=np.float64) for f in inputs])
        return (spread / np.linalg.norm(spread, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def toys_registered():
    register_encoder(FRAMES, FirstFrames, replace=True)
    register_encoder(OFFSET, SpreadFrom, replace=True)


def first_frames(path, frames: int) -> np.ndarray:
    """The toy by hand: numpy on the decoded, untrimmed file."""
    mean = fbank_features(read_audio(path, trim=False))[:frames].astype(np.float64).mean(axis=0)
    return mean / np.linalg.norm(mean)


def spread_from(path, offset: int) -> np.ndarray:
    spread = fbank_features(read_audio(path, trim=False))[offset:].astype(np.float64).std(axis=0)
    return spread / np.linalg.norm(spread)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """real/: four held-out speakers (40 files); noisy/: their copies with white noise at 20 dB SNR."""
    root = tmp_path_factory.mktemp("declared")
    for speaker in ("1688", "1998", "2033", "2414"):
        (root / "real" / speaker).mkdir(parents=True)
        for flac in sorted((HELD_OUT / speaker).rglob("*.flac")):
            (root / "real" / speaker / flac.name).symlink_to(flac)
    degrade_folder(root / "real", root / "noisy", kind="noise", level=20.0, seed=1)
    return root


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_the_declaration_is_read_without_the_class_and_is_the_class_own():
    assert encoder_declaration(FRAMES) is FirstFrames.declaration
    assert encoder_declaration("deep-speaker").embeds_cached_features
    assert [o.flag for o in encoder_declaration("deep-speaker").options] == [
        "--model", "--pooling", "--window", "--hop", "--batch-size", "--precision"]
    assert not encoder_declaration("wespeaker").embeds_cached_features
    from deep_speaker.encoders.deepspeaker import Embedder

    assert Embedder.declaration is encoder_declaration("deep-speaker")
    assert get_encoder(FRAMES, frames=7).frames == 7


def test_embed_and_verify_take_the_toy_option(work, tmp_path, capsys):
    out = tmp_path / "toy.npz"
    assert main(["embed", str(work / "real" / "2033"), "-o", str(out), "--encoder", FRAMES, "--toy-frames", "50"]) == 0
    with np.load(out, allow_pickle=False) as data:
        assert str(data["encoder"]) == FRAMES and str(data["model_identity"]) == FirstFrames(50).identity
        expected = np.stack([first_frames(p, 50) for p in data["paths"]])
        np.testing.assert_allclose(data["embeddings"], expected, atol=1e-5)
        assert not np.allclose(expected, np.stack([first_frames(p, 300) for p in data["paths"]]), atol=1e-3)
    a, b = sorted((work / "real" / "1688").glob("*.flac"))[:2]
    capsys.readouterr()
    assert main(["verify", str(a), str(b), "--encoder", FRAMES, "--toy-frames", "80"]) == 0
    score = float(re.search(r"score \(cosine similarity\) = (\S+)", capsys.readouterr().out).group(1))
    assert score == pytest.approx(first_frames(a, 80) @ first_frames(b, 80), abs=6e-5)


def test_compare_takes_the_toy_option(work, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    assert main(["compare", str(work / "real"), str(work / "noisy"), "--encoder", FRAMES, "--toy-frames", "200",
                 "-o", str(report_path), "--bootstrap", "0", "--num-subsets", "5", "--ndb-bins", "5",
                 "--fd-inf-points", "5"]) == 0
    report = json.loads(report_path.read_text())
    assert report["settings"]["encoder"] == FRAMES
    real_files, noisy_files = sorted((work / "real").rglob("*.flac")), sorted((work / "noisy").rglob("*.flac"))
    real = np.stack([first_frames(p, 200) for p in real_files])
    gen = np.stack([first_frames(p, 200) for p in noisy_files])
    # SECS: the cosine of each noisy copy to its speaker's mean real embedding.
    centroids = {s: real[[p.parent.name == s for p in real_files]].mean(0) for s in {p.parent.name for p in real_files}}
    secs = [g @ centroids[p.parent.name] / np.linalg.norm(centroids[p.parent.name]) for g, p in zip(gen, noisy_files)]
    assert report["speaker_similarity"]["secs"] == pytest.approx(np.mean(secs), rel=1e-5)


def test_evaluate_verification_takes_the_toy_option(work, tmp_path, capsys):
    report_path = tmp_path / "verification.json"
    assert main(["evaluate-verification", str(work / "real"), "--encoder", FRAMES, "--toy-frames", "120",
                 "--bootstrap", "0", "-o", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["model_identity"] == FirstFrames(120).identity
    assert report["weights"] == {"identity": FirstFrames(120).identity, "path": None, "package": None}
    files = sorted((work / "real").rglob("*.flac"))
    emb = np.stack([first_frames(f, 120) for f in files])
    speakers = np.array([f.parent.name for f in files])
    rows, cols = np.triu_indices(len(files), 1)
    scores = np.einsum("ij,ij->i", emb[rows], emb[cols])
    labels = (speakers[rows] == speakers[cols]).astype(int)
    assert report["sap"] == pytest.approx(scores[labels == 1].mean(), abs=1e-6)
    assert report["eer"] == pytest.approx(sklearn_eer(scores, labels), abs=1e-4)


def test_several_encoders_each_take_their_own_options(work, tmp_path):
    out = str(tmp_path / "real.{encoder}.npz")
    assert main(["stats", str(work / "real" / "1998"), "-o", out, "--encoder", f"{FRAMES},{OFFSET}",
                 "--toy-frames", "40", "--toy-offset", "25"]) == 0
    for name, by_hand in ((FRAMES, lambda p: first_frames(p, 40)), (OFFSET, lambda p: spread_from(p, 25))):
        with np.load(out.format(encoder=name), allow_pickle=False) as data:
            assert str(data["encoder"]) == name
            np.testing.assert_allclose(data["embeddings"], np.stack([by_hand(p) for p in data["paths"]]), atol=1e-5)


def test_an_option_no_chosen_encoder_takes_is_one_line(work, capsys):
    a = str(sorted(HELD_OUT.rglob("*.flac"))[0])
    err = one_line_error(capsys, ["verify", a, a, "--encoder", FRAMES, "--toy-offset", "3"])
    assert f"--toy-offset applies to {OFFSET} only, which is not among --encoder {FRAMES}" in err
    err = one_line_error(capsys, ["verify", a, a, "--encoder", FRAMES, "--window", "2"])
    assert "--window applies to deep-speaker only" in err
    err = one_line_error(capsys, ["stats", a, "-o", "x.npz", "--encoder", f"{FRAMES},deep-speaker",
                                  "--toy-offset", "3"])
    assert f"--toy-offset applies to {OFFSET} only" in err
    # A weights path names one encoder's weights: of several, --model is deep-speaker's alone.
    err = one_line_error(capsys, ["stats", a, "-o", "x.npz", "--encoder", f"{FRAMES},wespeaker", "--model", "m"])
    assert "--model applies to deep-speaker only" in err
    # --window with utterance pooling: refused before the model loads (the path does not exist), nothing written.
    err = one_line_error(capsys, ["embed", a, "-o", "x.npz", "--pooling", "utterance", "--hop", "1.6", "--model",
                                  "/nonexistent.keras"])
    assert "--window and --hop apply to --pooling windows, not utterance" in err and not Path("x.npz").exists()
    # The declaration's check refuses a value before anything is embedded.
    assert "--toy-frames 0: must be at least 1" in one_line_error(
        capsys, ["embed", a, "-o", "x.npz", "--encoder", FRAMES, "--toy-frames", "0"])


def test_verify_without_model_finds_the_calibration_beside_the_default_checkpoint(work, tmp_path, monkeypatch,
                                                                                   capsys):
    from test_encoders import tiny_rescnn

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "checkpoints" / "triplet"
    run.mkdir(parents=True)
    tiny_rescnn(run / "last.keras")
    (run / "state.json").write_text("{}")
    assert main(["calibrate", str(work / "real"), "--model", str(run / "last.keras")]) == 0
    assert (run / "last.calibration.json").is_file()
    a, b = sorted((work / "real" / "1688").glob("*.flac"))[:2]
    capsys.readouterr()
    assert main(["verify", str(a), str(b)]) == 0  # no --model: the newest triplet checkpoint, and its calibration
    out = capsys.readouterr().out
    assert "log-likelihood ratio" in out and "no calibration" not in out


def test_the_embedding_cache_wraps_an_encoder(tmp_path):
    from deep_speaker.encoders.embedding_cache import CachedEncoder, with_embedding_cache

    toy = FirstFrames(60)
    assert with_embedding_cache(toy, None) is toy and with_embedding_cache(toy, "") is toy
    cached = with_embedding_cache(toy, tmp_path / "cache")
    assert isinstance(cached, CachedEncoder) and cached.inner is toy and not hasattr(toy, "embedding_cache")
    assert (cached.name, cached.identity, cached.settings, cached.weights) == (
        toy.name, toy.identity, toy.settings, toy.weights)
    assert cached.declaration is FirstFrames.declaration
    files = sorted((HELD_OUT / "2414").rglob("*.flac"))[:3]
    np.testing.assert_array_equal(cached.embed_files(files), toy.embed_files(files))
    assert list((tmp_path / "cache").glob(f"{FRAMES}-*.sqlite"))
