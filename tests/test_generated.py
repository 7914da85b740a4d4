"""Statistics files, compare and its CLI on real speech (a few test-other speakers) and degraded copies of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deep_speaker import metrics
from deep_speaker.cli import main
from deep_speaker.data.audio import load_audio
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.eval.degrade import degrade_folder
from deep_speaker.eval.generated import (
    check_compatible,
    compare,
    compute_stats,
)
from deep_speaker.eval.embedded import Embedded, make_stats
from deep_speaker.eval.formats import read_stats as load_stats
from deep_speaker.eval.formats import write_stats as save_stats
from deep_speaker.eval.generated_report import format_table

REAL_SPEAKERS = ("1688", "2414", "3005", "533")
GEN_SPEAKERS = REAL_SPEAKERS[:2]  # the other two are the "other conditioning" of cFD/cKD
SNRS = (30.0, 20.0, 10.0, 0.0)
SMALL = {"num_subsets": 20, "ndb_bins": 5, "fd_inf_points": 5}  # cheap on 2 cores: each FD is two 512² eighs


def tiny_model(path: Path, seed: int) -> Path:
    """A width-0.25 ResCNN with seeded random weights: a real embedding function, fast on CPU."""
    import keras

    from deep_speaker.model.rescnn import build_rescnn

    keras.utils.set_random_seed(seed)
    build_rescnn(width=0.25).save(path)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, libri_mini: Path) -> Path:
    root = tmp_path_factory.mktemp("generated")
    for spk in REAL_SPEAKERS:
        shutil.copytree(libri_mini / "test-other" / spk, root / "real" / spk)
        if spk in GEN_SPEAKERS:
            shutil.copytree(libri_mini / "test-other" / spk, root / "clean" / spk)
    tiny_model(root / "model.keras", seed=0)
    return root


@pytest.fixture(scope="module")
def embedder(work: Path):
    from deep_speaker.encoders.deepspeaker import Embedder

    return Embedder(work / "model.keras")


@pytest.fixture(scope="module")
def real(work: Path, embedder):
    return compute_stats(work / "real", embedder)


@pytest.fixture(scope="module")
def noisy(work: Path, embedder) -> dict:
    """Stats of noisy copies of the generated speakers' utterances at each SNR."""
    out = {}
    for snr in SNRS:
        degrade_folder(work / "clean", work / f"snr{snr:g}", kind="noise", level=snr, seed=1)
        out[snr] = compute_stats(work / f"snr{snr:g}", embedder)
    return out


def assert_finite_json(value, where="report"):
    """Only finite real numbers, strings, bools, None, lists and dicts, and strict JSON serialisable."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str)
            assert_finite_json(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            assert_finite_json(v, f"{where}[{i}]")
    elif isinstance(value, float):
        assert np.isfinite(value), where
    else:
        assert value is None or isinstance(value, (str, bool, int)), f"{where}: {type(value)}"


def test_stats_round_trip(real, tmp_path: Path) -> None:
    assert real.embeddings.shape == (40, 512) and sorted(set(real.labels)) == sorted(REAL_SPEAKERS)
    path = tmp_path / "real.npz"
    save_stats(path, real)
    with np.load(path, allow_pickle=False) as raw:  # readable without pickle; no object arrays inside
        assert all(raw[k].dtype != object for k in raw.files)
        assert raw["labels"].dtype.kind == "U" and raw["paths"].dtype.kind == "U"
    back = load_stats(path)
    np.testing.assert_array_equal(back.embeddings, real.embeddings)
    np.testing.assert_array_equal(back.mu, real.mu)
    np.testing.assert_array_equal(back.sigma, real.sigma)
    assert back.labels.tolist() == real.labels.tolist() and back.paths.tolist() == real.paths.tolist()
    assert back.model_identity == real.model_identity and back.feature_settings == real.feature_settings
    assert back.encoder == real.encoder == "deep-speaker"
    # mu/sigma are the sample mean and the ddof-1 covariance of the stored embeddings.
    emb = real.embeddings.astype(np.float64)
    np.testing.assert_allclose(back.mu, emb.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.sigma, np.cov(emb, rowvar=False, ddof=1), rtol=0, atol=1e-12)


def test_stats_file_written_before_encoders_reads_as_deep_speaker(real, tmp_path: Path) -> None:
    save_stats(tmp_path / "new.npz", real)
    with np.load(tmp_path / "new.npz", allow_pickle=False) as data:
        old = {k: data[k] for k in data.files if k != "encoder"}  # the keys a file had before the Encoder interface
    np.savez(tmp_path / "old.npz", **old)
    back = load_stats(tmp_path / "old.npz")
    assert back.encoder == "deep-speaker"
    check_compatible(real, back)  # still compares with statistics made now


def test_different_models_or_settings_are_refused(work: Path, real, tmp_path: Path) -> None:
    from deep_speaker.encoders.deepspeaker import Embedder

    other = Embedder(tiny_model(tmp_path / "other.keras", seed=1))
    files = sorted((work / "real" / REAL_SPEAKERS[0]).rglob("*.flac"))[:3]
    other_stats = compute_stats(files, other)
    save_stats(tmp_path / "other.npz", other_stats)
    with pytest.raises(DeepSpeakerError, match="different models"):
        compare(real, load_stats(tmp_path / "other.npz"))
    changed = load_stats(tmp_path / "other.npz")
    changed.embedded.identity = real.model_identity
    changed.feature_settings = {**changed.feature_settings, "trim": "none"}
    with pytest.raises(DeepSpeakerError, match="feature settings.*trim"):
        check_compatible(real, changed)


@pytest.mark.slow  # five full comparisons: each FD is two 512² eigendecompositions
def test_noise_increases_fd_and_kd_strictly(work: Path, real, noisy) -> None:
    reports = [compare(real, noisy[snr], seed=0, **SMALL) for snr in SNRS[:-1]]
    reports.append(compare(real, noisy[0.0], seed=0, paired_folders=(str(work / "clean"), str(work / "snr0")),
                           **SMALL))
    fds = [r["fd"]["full"] for r in reports]
    split_fds = [r["fd"]["splits"]["fd"] for r in reports]
    kds = [r["kd"]["kd"] for r in reports]
    cfds = [r["conditional"]["generated"]["cfd"] for r in reports]
    secs = [r["speaker_similarity"]["secs"] for r in reports]
    assert all(a < b for a, b in zip(fds, fds[1:])), fds
    assert all(a < b for a, b in zip(split_fds, split_fds[1:])), split_fds
    assert all(a < b for a, b in zip(kds, kds[1:])), kds
    assert all(a < b for a, b in zip(cfds, cfds[1:])), cfds
    assert all(a > b for a, b in zip(secs, secs[1:])), secs
    for r in reports:
        assert_finite_json(r)
        json.dumps(r, allow_nan=False)


def test_set_against_itself_is_zero(real) -> None:
    report = compare(real, real, **SMALL)
    scale = float(np.trace(real.sigma))
    assert abs(report["fd"]["full"]) < 1e-5 * scale  # rank-deficient (40 < 512): rounding-size eigenvalues
    # Subsets of m = n = 40 are the whole set: unbiased MMD² of a set with itself is -O(1/m) x kernel spread.
    assert abs(report["kd"]["kd"]) < 1e-4
    assert report["speaker_similarity"]["secs"] > report["baseline"]["speaker_similarity"]["secs"]


def test_report_equals_metrics_called_directly(real, noisy) -> None:
    gen = noisy[10.0]
    r = compare(real, gen, seed=3, num_splits=4, subset_size=15, num_subsets=10, ndb_bins=5, fd_inf_points=5)
    x, y = real.embeddings, gen.embeddings
    xs, ys = x.astype(np.float64), y.astype(np.float64)
    assert r["fd"]["full"] == pytest.approx(metrics.frechet_distance(xs.mean(0), np.cov(xs, rowvar=False),
                                                                     ys.mean(0), np.cov(ys, rowvar=False)), rel=1e-9)
    splits = metrics.frechet_distance_splits(x, y, num_splits=4, seed=3)
    assert r["fd"]["splits"]["fd"] == splits["fd"] and r["fd"]["splits"]["fd_std"] == splits["fd_std"]
    kd_mean, kd_std = metrics.kernel_distance(x, y, num_subsets=10, subset_size=15, seed=3)
    assert (r["kd"]["kd"], r["kd"]["kd_std"], r["kd"]["subset_size"]) == (kd_mean, kd_std, 15)
    assert r["fd_inf"]["fd_inf"] == metrics.fd_infinity(x, y, num_points=5, seed=3)["fd_inf"]
    cond = metrics.conditional_distances(x, real.labels, gen=y, gen_labels=gen.labels, num_subsets=10, subset_size=15,
                                         seed=3)
    assert r["conditional"]["generated"] == cond["generated"]
    assert r["conditional"]["real_baseline"] == cond["real_baseline"]
    secs = metrics.speaker_similarity(y, gen.labels, real=x, real_labels=real.labels)
    assert r["speaker_similarity"]["secs"] == secs["secs"]
    assert r["speaker_similarity"]["per_speaker"] == secs["per_speaker"]
    ceiling = metrics.speaker_similarity_ceiling(x, real.labels, 3)
    assert r["baseline"]["speaker_similarity"]["secs"] == ceiling["secs"]
    assert (r["sap_san"]["sap"], r["sap_san"]["san"]) == metrics.sap_san(y, gen.labels)
    # SECS by hand: cosine of each generated embedding to its speaker's mean real (unit) embedding.
    by_hand = []
    for e, spk in zip(ys, gen.labels):
        centroid = xs[real.labels == spk].mean(axis=0)
        by_hand.append(e @ centroid / np.linalg.norm(e) / np.linalg.norm(centroid))
    assert r["speaker_similarity"]["secs"] == pytest.approx(np.mean(by_hand), rel=1e-9)


def test_too_few_samples_give_messages_not_nan(real, noisy) -> None:
    gen = noisy[20.0]
    idx = np.arange(3)
    few = make_stats(Embedded(gen.embeddings[idx], gen.labels[idx].tolist(), gen.paths[idx].tolist(),
                              identity=gen.model_identity), gen.feature_settings, "three files")
    report = compare(real, few, **SMALL)
    assert_finite_json(report)
    json.dumps(report, allow_nan=False)
    assert report["fd"]["full"] is not None and np.isfinite(report["fd"]["full"])
    assert report["fd"]["splits"] is None  # 5 splits of 3 samples: impossible, said in a message
    assert any(m.startswith("FD: not computed") for m in report["messages"])
    assert any("512 dimensions" in m for m in report["messages"])
    assert "n/a" in format_table(report)


def test_cli_stats_compare_degrade(work: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = str(work / "model.keras")
    assert main(["stats", str(work / "real"), "-o", str(tmp_path / "real.npz"), "--model", model]) == 0
    assert main(["degrade", str(work / "clean"), str(tmp_path / "gen"), "--kind", "lowpass", "--level", "2000"]) == 0
    code = main(["compare", str(tmp_path / "real.npz"), str(tmp_path / "gen"), "--model", model,
                 "-o", str(tmp_path / "report.json"), "--plots", str(tmp_path / "plots"),
                 "--num-subsets", "10", "--ndb-bins", "5", "--seed", "2", "--fd-inf-points", "5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "FD, full sets" in out and "SECS" in out and "real half vs half" in out

    def refuse(constant: str):
        raise AssertionError(f"non-finite number {constant} in the JSON")

    report = json.loads((tmp_path / "report.json").read_text(), parse_constant=refuse)
    assert_finite_json(report)
    assert report["settings"]["seed"] == 2 and report["kd"]["num_subsets"] == 10
    assert report["generated"]["n"] == 20 and report["real"]["n"] == 40
    import matplotlib.image

    for name in ("speaker_similarity.png", "fd_infinity.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.05  # not blank

    # Stats made by another model are refused with a one-line error (exit 2).
    other = tiny_model(tmp_path / "other.keras", seed=5)
    assert main(["compare", str(tmp_path / "real.npz"), str(tmp_path / "gen"), "--model", str(other)]) == 2
    assert "different models" in capsys.readouterr().err


def test_paired_mr_stft_for_two_folders(work: Path, noisy) -> None:  # noisy: writes the snr0 copies
    from deep_speaker.eval.generated import _mr_stft

    messages: list[str] = []
    mr = _mr_stft(messages, str(work / "clean"), str(work / "snr0"))
    assert mr["pairs"] == 20 and mr["only_generated"] == 0 and mr["only_real"] == 0 and not messages
    # The same files pair by relative path (degrade keeps names): the mean of the per-pair distances.
    clean = sorted((work / "clean").rglob("*.flac"))
    direct = [metrics.mr_stft_distance(load_audio(work / "snr0" / p.relative_to(work / "clean")), load_audio(p),
                                       16000)["spectral_convergence"] for p in clean]
    assert mr["spectral_convergence"] == pytest.approx(np.mean(direct), rel=1e-9)
