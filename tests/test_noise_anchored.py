"""The noise-anchored score (TTSDS): the formula, the noise sets made from real speech, and compare --anchor-noise
on bundled real speech (a few test-other speakers, a tiny seeded model)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import welch

from deep_speaker import metrics
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.eval.degrade import degrade_folder
from deep_speaker.eval.generated import compare, compute_stats, noise_references
from deep_speaker.eval.generated_report import format_table
from deep_speaker.eval.noise import NOISE_KINDS, babble_sources, noise_set, pink_noise, white_noise
from deep_speaker.metrics.anchored import nearest_noise, noise_anchored_score, wasserstein_1d

REAL_SPEAKERS = ("1688", "2414", "3005", "533")
SMALL = {"num_subsets": 10, "ndb_bins": 5, "fd_inf_points": 3, "num_splits": 2}  # each FD: two 512² eighs


# ---- the formula --------------------------------------------------------------------------------------------------

def plain_score(d_real: float, d_noise: list[float]) -> float:
    """Independent: the nearest noise by a loop, then 100 d_noise / (d_noise + d_real)."""
    nearest = d_noise[0]
    for d in d_noise[1:]:
        if d < nearest:
            nearest = d
    return 100.0 * nearest / (nearest + d_real)


def test_score_hand_numbers() -> None:
    assert noise_anchored_score(0.0, [3.0]) == 100.0  # at the real reference
    assert noise_anchored_score(2.0, [2.0]) == 50.0  # as far from real as from the noise
    assert noise_anchored_score(5.0, [0.0, 4.0]) == 0.0  # on a noise set
    # The nearest of several noise sets counts: 1 (not 3 or 9) -> 100 * 1 / (1 + 3) = 25.
    assert noise_anchored_score(3.0, [9.0, 1.0, 3.0]) == 25.0
    assert nearest_noise([9.0, 1.0, 3.0]) == 1


def test_score_vectorised_equals_plain_computation() -> None:
    rng = np.random.default_rng(0)
    d_real = rng.uniform(0, 10, size=50)
    d_noise = rng.uniform(0.1, 10, size=(50, 4))
    scores = noise_anchored_score(d_real, d_noise)
    assert scores.shape == (50,)
    np.testing.assert_allclose(scores, [plain_score(r, list(n)) for r, n in zip(d_real, d_noise)], rtol=1e-12)
    np.testing.assert_array_equal(nearest_noise(d_noise), [int(np.argmin(n)) for n in d_noise])
    assert np.all((scores >= 0) & (scores <= 100))


@pytest.mark.parametrize("d_real, d_noise, match", [
    (-1.0, [1.0], "negative"), (1.0, [np.nan], "NaN"), (np.inf, [1.0], "infinite"), (0.0, [0.0, 2.0], "both 0"),
    (1.0, [], "at least one"), (1.0, 2.0, "at least one")])
def test_score_refuses_bad_input(d_real, d_noise, match) -> None:
    with pytest.raises(DeepSpeakerError, match=match):
        noise_anchored_score(d_real, d_noise)


def test_wasserstein_1d() -> None:
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=13), rng.normal(0.5, 2.0, size=29)
    assert wasserstein_1d(x, y, p=1) == pytest.approx(wasserstein_distance(x, y), rel=1e-12)
    a, b = rng.normal(size=20), rng.normal(size=20)  # equal sizes: TTSDS' RMS of the sorted differences
    assert wasserstein_1d(a, b) == pytest.approx(np.sqrt(np.mean((np.sort(a) - np.sort(b)) ** 2)), rel=1e-12)
    # Unequal sizes, p = 2, by hand: x = {0, 1}, y = {0, 1, 2}; quantiles on (0,1/3],(1/3,1/2],(1/2,2/3],(2/3,1].
    assert wasserstein_1d([0.0, 1.0], [0.0, 1.0, 2.0]) == pytest.approx(np.sqrt((0 + 1 / 6 * 1 + 0 + 1 / 3 * 1)))
    assert wasserstein_1d(x, x + 0.25) == pytest.approx(0.25)


# ---- the noise sets -----------------------------------------------------------------------------------------------

def spectral_slope(signal: np.ndarray, rate: int) -> float:
    """Slope of log10 PSD against log10 f (Welch) between 50 Hz and 5 kHz."""
    f, psd = welch(signal, fs=rate, nperseg=4096)
    band = (f >= 50) & (f <= 5000)
    return float(np.polyfit(np.log10(f[band]), np.log10(psd[band]), 1)[0])


def test_white_is_flat_and_pink_falls_as_one_over_f() -> None:
    rate = 16000
    white = white_noise(10 * rate, 0.1, np.random.default_rng(0))
    pink = pink_noise(10 * rate, 0.1, np.random.default_rng(0))
    assert abs(spectral_slope(white, rate)) < 0.1
    assert spectral_slope(pink, rate) == pytest.approx(-1.0, abs=0.1)
    for x in (white, pink):
        assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=1e-5)


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory: pytest.TempPathFactory, libri_mini: Path) -> Path:
    root = tmp_path_factory.mktemp("anchored")
    for spk in REAL_SPEAKERS:
        shutil.copytree(libri_mini / "test-other" / spk, root / "real" / spk)
    return root / "real"


def real_files(real_dir: Path) -> tuple[list[str], list[str]]:
    paths = sorted(str(p) for p in real_dir.rglob("*.flac"))
    return paths, [Path(p).relative_to(real_dir).parts[0] for p in paths]


def test_noise_sets_match_the_real_files_and_are_deterministic(real_dir: Path) -> None:
    paths, labels = real_files(real_dir)
    paths, labels = paths[::5], labels[::5]  # 8 files, 4 speakers
    for kind in NOISE_KINDS:
        made = list(noise_set(kind, paths, labels, seed=3))
        again = list(noise_set(kind, paths[::-1], labels[::-1], seed=3))[::-1]  # order-independent
        other = list(noise_set(kind, paths, labels, seed=4))
        assert [m.path for m in made] == paths and [m.label for m in made] == labels
        # Another seed gives another set. Not every babble file: for a file at least as long as each of its
        # talkers every window starts at 0, so only the pick of 4 of the 6 other speakers' files is random, and
        # the two seeds pick the same 4 with probability 1/15 (seeded by the path: in some temporary folders).
        moved = [not np.array_equal(m.signal, o.signal) for m, o in zip(made, other)]
        assert any(moved) if kind == "babble" else all(moved)
        for m, a in zip(made, again):
            info = sf.info(m.path)
            assert m.sample_rate == info.samplerate and m.signal.size == info.frames  # same length and rate
            np.testing.assert_array_equal(m.signal, a.signal)
            assert np.all(np.isfinite(m.signal)) and np.max(np.abs(m.signal)) > 1e-4  # never digital silence
            real_rms = np.sqrt(np.mean(sf.read(m.path)[0] ** 2))
            rms = np.sqrt(np.mean(m.signal.astype(np.float64) ** 2))
            assert rms == pytest.approx(1e-4 if kind == "silence" else real_rms, rel=1e-4)
            if kind == "babble":  # only other speakers' utterances are mixed in
                assert len(m.sources) == 4 and all(labels[j] != m.label for j in m.sources)
            else:
                assert m.sources == ()


def test_babble_sources_come_from_other_speakers_only() -> None:
    labels = ["a"] * 5 + ["b"] * 2 + ["c"]
    rng = np.random.default_rng(0)
    for i in range(len(labels)):
        picked = babble_sources(i, labels, rng, talkers=10)
        assert all(labels[j] != labels[i] for j in picked)
        assert len(picked) == sum(lab != labels[i] for lab in labels)  # fewer others than talkers: all of them
    unlabelled = babble_sources(2, [""] * 4, rng)
    assert 2 not in unlabelled and len(unlabelled) == 3
    with pytest.raises(DeepSpeakerError, match="other than a"):
        babble_sources(0, ["a", "a"], rng)


# ---- compare --anchor-noise on real speech ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spaces(real_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import keras

    from deep_speaker.encoders.deepspeaker import Embedder
    from deep_speaker.model.rescnn import build_rescnn

    root = tmp_path_factory.mktemp("anchored_model")
    keras.utils.set_random_seed(0)
    build_rescnn(width=0.25).save(root / "model.keras")
    embedder = Embedder(root / "model.keras")
    degrade_folder(real_dir, root / "snr5", kind="noise", level=5.0, seed=1)
    real = compute_stats(real_dir, embedder)
    # The real set's own copy: a deterministic encoder gives a copied folder the real set's embeddings.
    copy = replace(real, source="copy of the real set")
    return {"embedder": embedder, "root": root, "real": real, "copy": copy,
            "snr5": compute_stats(root / "snr5", embedder), "noise": noise_references(real, embedder, seed=0)}


@pytest.fixture(scope="module")
def reports(spaces: dict) -> dict:
    """compare of a 5 dB noisy copy with and without --anchor-noise, and the anchored block compare adds
    (``_anchored``) of the real set's copy and of a noise set of another seed: full compares cost ~30 FDs each,
    too many for 2 shared cores."""
    from deep_speaker.eval.generated import _anchored

    real, noise = spaces["real"], spaces["noise"]
    white_gen = noise_references(real, spaces["embedder"], seed=7, kinds=["white"])["white"]
    out = {"snr5": compare(real, spaces["snr5"], noise=noise, anchor_noise=True, **SMALL),
           "snr5 off": compare(real, spaces["snr5"], **SMALL)}
    for name, gen in (("copy", spaces["copy"]), ("white", white_gen)):
        messages: list[str] = []
        out[name] = {"anchored": _anchored(messages, real, gen, noise, 0), "messages": messages,
                     "fd": {"full": metrics.frechet_distance(real.mu, real.sigma, gen.mu, gen.sigma)}}
    return out


def test_compare_anchored_scores_real_degraded_noise(spaces: dict, reports: dict) -> None:
    assert sorted(spaces["noise"]) == sorted(NOISE_KINDS)
    assert all(s.embeddings.shape[0] == 40 for s in spaces["noise"].values())
    names = ("copy", "snr5", "white")
    fd = {name: reports[name]["anchored"]["fd"]["score"] for name in names}
    sim = {name: reports[name]["anchored"]["sim"]["score"] for name in names}
    print("anchored FD", fd, "SIM", sim, "FD baseline", reports["snr5"]["anchored"]["fd_baseline"]["score"],
          "nearest", {n: reports[n]["anchored"]["fd"]["nearest_noise"] for n in names})
    assert fd["copy"] > 99.9 and sim["copy"] > 80  # the real set's own copy: the real anchor
    assert fd["white"] < 10 and sim["white"] < 10  # a noise set: the noise anchor
    assert fd["white"] < fd["snr5"] < fd["copy"] and sim["white"] < sim["snr5"] < sim["copy"]
    # Deep Speaker normalises its filter banks per utterance: near-silence looks like white noise to it.
    assert reports["white"]["anchored"]["fd"]["nearest_noise"] in ("white", "silence")
    for name in names:
        r = reports[name]
        a = r["anchored"]
        # The score is the formula of the reported distances, and the raw FD sits beside it unchanged.
        assert a["fd"]["d_real"] == r["fd"]["full"]
        assert a["fd"]["score"] == pytest.approx(plain_score(max(a["fd"]["d_real"], 0.0),
                                                             list(a["fd"]["d_noise"].values())))
        assert a["sim"]["score"] == pytest.approx(plain_score(a["sim"]["d_real"], list(a["sim"]["d_noise"].values())))
        assert not [m for m in r["messages"] if "anchored" in m]
    r = reports["snr5"]
    assert r["anchored"]["fd_baseline"]["d_real"] == pytest.approx(r["baseline"]["fd"]["full"], rel=1e-12)
    json.dumps(r, allow_nan=False)
    table = format_table(r)
    assert "FD anchored" in table and "SIM anchored" in table and "(nearest: " in table


def test_option_off_leaves_the_report_unchanged(reports: dict) -> None:
    off, on = reports["snr5 off"], json.loads(json.dumps(reports["snr5"]))
    assert "anchored" not in off and "anchor_noise" not in off["settings"] and "FD anchored" not in format_table(off)
    assert on["settings"].pop("anchor_noise") is True
    assert on.pop("anchored")["fd"]["d_real"] == off["fd"]["full"]
    assert json.dumps(on, sort_keys=True) == json.dumps(off, sort_keys=True)  # every raw number as before


def test_noise_sets_embedded_through_the_real_sets_encoder(spaces: dict) -> None:
    from deep_speaker.eval.embedded import Embedded, make_stats
    from deep_speaker.eval.generated import _anchored

    real = spaces["real"]
    few = make_stats(Embedded(real.embeddings[::5], real.labels[::5].tolist(), real.paths[::5].tolist(),
                              identity=real.model_identity), real.feature_settings, "8 real files")
    messages: list[str] = []
    assert _anchored(messages, few, spaces["snr5"], None, 0) is None  # made without an encoder
    assert messages == ["anchored scores: not computed: no encoder to embed the noise sets with (statistics made "
                        "without one; pass noise= to compare)"]
    few.embedder = real.embedder  # as compute_stats and load_side set it
    made = _anchored(messages, few, spaces["snr5"], None, 0)
    given = _anchored(messages, few, spaces["snr5"], noise_references(few, spaces["embedder"], seed=0), 0)
    assert made["noise_n"] == {kind: 8 for kind in NOISE_KINDS} and len(messages) == 1
    assert json.dumps(made) == json.dumps(given)  # the same noise sets, seeded


def test_cli_option_comes_from_the_config(capsys: pytest.CaptureFixture) -> None:
    from deep_speaker.cli import build_parser
    from deep_speaker.cli.generated import _check_options

    parser = build_parser()
    args = parser.parse_args(["compare", "real", "gen", "--anchor-noise"])
    assert _check_options(args).anchor_noise is True
    assert _check_options(parser.parse_args(["compare", "real", "gen"])).anchor_noise is False
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", "--help"])
    assert "--anchor-noise" in capsys.readouterr().out
