"""Several speaker spaces in one ``stats``/``compare`` run, acceptance at real-trial thresholds, rescaled SECS,
per-utterance results, two-level bootstrap intervals, the unbounded AM score and paper tables.

Real speech: the 10 bundled test-other speakers (10 utterances each); "generated": their copies with white noise
at 5 dB (at 20 dB the packaged model of 2026-12-07, trained on noisy copies, accepts them at least as often as the real
files). Two spaces: Deep Speaker's packaged model and the toy encoder of test_encoders. Every number is
recomputed here by plain loops over the embeddings, thresholds by scikit-learn's roc_curve, AM by scipy.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from conftest import roc_thresholds
from test_encoders import HELD_OUT, TOY, MeanFbank, link_speakers
from test_metrics_verification import sklearn_eer

from deep_speaker import metrics
from deep_speaker.cli import main
from deep_speaker.encoders import register_encoder
from deep_speaker.errors import DeepSpeakerError
from deep_speaker.eval.degrade import degrade_folder
from deep_speaker.eval.embedded import Embedded, make_stats
from deep_speaker.eval.formats import read_stats as load_stats
from deep_speaker.eval.generated import compare, compute_stats
from deep_speaker.eval.generated_report import format_table, report_table
from deep_speaker.eval.tables import render_table, write_table

ENCODERS = ("deep-speaker", TOY)
SMALL = ["--num-subsets", "10", "--ndb-bins", "5", "--fd-inf-points", "5", "--bootstrap", "100", "--seed", "3"]


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    register_encoder(TOY, MeanFbank, replace=True)


def strict_json(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spaces")
    link_speakers(root / "real", sorted(p.name for p in HELD_OUT.iterdir() if p.is_dir()))
    degrade_folder(root / "real", root / "noisy", kind="noise", level=5.0, seed=1)
    return root


@pytest.fixture(scope="module")
def runs(work: Path) -> dict:
    """``stats`` of both sets in both spaces (one command each), then ``compare`` with both spaces in one run (the
    generated side a folder, embedded in the run) and with each space alone (statistics files); what they wrote
    and printed."""
    import contextlib
    import io

    out: dict = {}
    both = ",".join(ENCODERS)
    for side in ("real", "noisy"):
        assert main(["stats", str(work / side), "-o", str(work / f"{side}.{{encoder}}.npz"), "--encoder", both]) == 0
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["compare", str(work / "real.{encoder}.npz"), str(work / "noisy"), "--encoder", both,
                     "-o", str(work / "both.json"), "--per-utterance", str(work / "utterances.csv"),
                     "--table", str(work / "table.csv"), "--table", str(work / "table.md"),
                     "--table", str(work / "table.tex"), *SMALL])
    assert code == 0
    out["printed"] = printed.getvalue()
    for name in ENCODERS:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["compare", str(work / f"real.{name}.npz"), str(work / f"noisy.{name}.npz"), "--encoder",
                         name, "-o", str(work / f"{name}.json"), *SMALL]) == 0
        out[name] = strict_json(work / f"{name}.json")
    out["both"] = strict_json(work / "both.json")
    return out


@pytest.fixture(scope="module")
def spaces(work: Path, runs) -> dict:
    """Per space: the real and generated statistics ``stats`` wrote."""
    return {name: (load_stats(work / f"real.{name}.npz"), load_stats(work / f"noisy.{name}.npz")) for name in ENCODERS}


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x)


def by_loops(real, generated, far: float = 0.01) -> dict:
    """Every similarity number of one space with plain loops: real trials (leave-one-out targets, other speakers'
    centroids as non-targets), thresholds from sklearn's ROC, acceptance of each generated file."""
    speakers = sorted(set(real.labels.tolist()))
    members = {s: [unit(e) for e, lab in zip(real.embeddings, real.labels) if lab == s] for s in speakers}
    centroid = {s: unit(np.sum(members[s], axis=0)) for s in speakers}
    scores, labels = [], []
    for e, lab in zip(real.embeddings, real.labels):
        others = [m for m in members[lab] if not np.array_equal(m, unit(e))]
        scores.append(unit(e) @ unit(np.sum(others, axis=0)))
        labels.append(1)
        for s in speakers:
            if s != lab:
                scores.append(unit(e) @ centroid[s])
                labels.append(0)
    scores, labels = np.array(scores), np.array(labels)
    thresholds = roc_thresholds(scores, labels, far)
    theta_eer, eer, theta_far = thresholds["theta_eer"], thresholds["eer"], thresholds["theta_far"]
    rows = []
    for e, lab, path in zip(generated.embeddings, generated.labels, generated.paths):
        cos = {s: unit(e) @ centroid[s] for s in speakers}
        nearest = max(cos, key=cos.get)
        rows.append({"path": path, "speaker": lab, "similarity": cos[lab], "accepted_eer": cos[lab] > theta_eer,
                     "accepted_far": cos[lab] > theta_far, "nearest_speaker": nearest,
                     "nearest_similarity": cos[nearest],
                     "nontarget": [cos[s] for s in speakers if s != lab]})
    target, nontarget = scores[labels == 1], scores[labels == 0]
    secs = np.mean([r["similarity"] for r in rows])
    gen_scores = np.concatenate([[r["similarity"] for r in rows], np.concatenate([r["nontarget"] for r in rows])])
    gen_labels = np.concatenate([np.ones(len(rows)), np.zeros(len(rows) * (len(speakers) - 1))])
    return {"theta_eer": theta_eer, "theta_far": theta_far, "eer": eer, "rows": rows, "secs": secs,
            "ceiling": target.mean(), "different": nontarget.mean(),
            "accept_eer": np.mean([r["accepted_eer"] for r in rows]),
            "accept_far": np.mean([r["accepted_far"] for r in rows]),
            "real_accept_eer": np.mean(target > theta_eer), "real_accept_far": np.mean(target > theta_far),
            "gen_eer": sklearn_eer(gen_scores, gen_labels),
            "identified": np.mean([r["nearest_speaker"] == r["speaker"] for r in rows])}


def test_two_spaces_in_one_run_equal_two_single_runs(runs, work):
    both = runs["both"]
    assert both["encoders"] == list(ENCODERS)
    for name in ENCODERS:
        one = both["spaces"][name]
        assert one["generated"]["source"] == str(work / "noisy")  # embedded in the run; the single run read a file
        assert runs[name]["generated"]["source"] == str(work / f"noisy.{name}.npz")
        one["generated"]["source"] = runs[name]["generated"]["source"]
        assert one == runs[name]  # every number, message and setting
        assert one["settings"]["encoder"] == name
    # One table: each metric once, a generated and a baseline column per encoder.
    header = next(line for line in runs["printed"].splitlines() if line.startswith("metric"))
    assert [h in header for h in ("deep-speaker: generated vs real", f"{TOY}: real baseline")] == [True, True]
    assert sum(line.startswith("FD, full sets") for line in runs["printed"].splitlines()) == 1
    # stats wrote one file per encoder, each what a single-encoder embedding gives.
    toy = load_stats(work / f"real.{TOY}.npz")
    np.testing.assert_allclose(toy.embeddings, compute_stats(work / "real", MeanFbank()).embeddings, atol=1e-6)
    assert load_stats(work / "real.deep-speaker.npz").encoder == "deep-speaker" and toy.encoder == TOY


@pytest.mark.parametrize("name", ENCODERS)
def test_acceptance_rescaled_secs_and_eer_against_loops_and_sklearn(runs, spaces, name):
    real, generated = spaces[name]
    report = runs["both"]["spaces"][name]
    ref = by_loops(real, generated)
    sim = report["similarity"]
    assert sim["thresholds"]["eer"] == pytest.approx(ref["theta_eer"], abs=1e-9)
    assert sim["thresholds"]["far"] == pytest.approx(ref["theta_far"], abs=1e-12)
    assert sim["real"]["eer"] == pytest.approx(ref["eer"], abs=1e-12)
    g, r = sim["generated"], sim["real"]
    for key in ("accept_eer", "accept_far", "identified"):
        assert g[key] == pytest.approx(ref[key], abs=1e-12), key
    assert (r["accept_eer"], r["accept_far"]) == pytest.approx((ref["real_accept_eer"], ref["real_accept_far"]))
    assert r["false_accept_far"] <= 0.01
    assert g["eer"] == pytest.approx(ref["gen_eer"], abs=1e-9)
    # Rescaled SECS by hand: 0 at the real different-speaker mean, 1 at the real same-speaker (leave-one-out) mean.
    assert report["speaker_similarity"]["secs"] == pytest.approx(ref["secs"], rel=1e-9)
    assert (r["same_speaker_mean"], r["different_speaker_mean"]) == pytest.approx((ref["ceiling"], ref["different"]))
    assert g["secs_rescaled"] == pytest.approx((ref["secs"] - ref["different"]) / (ref["ceiling"] - ref["different"]),
                                               rel=1e-9)
    # Noise at 5 dB costs acceptance in both spaces, and real speech is accepted far more often. The stricter of
    # the two thresholds accepts no more: the 1 % FAR one, unless the real EER is itself below 1 %.
    strict, lenient = sorted(("accept_eer", "accept_far"), key=lambda k: -sim["thresholds"][k.split("_")[1]])
    assert 0 < g[strict] <= g[lenient] < r["accept_eer"] and 0 < g["secs_rescaled"] < 1


def test_per_utterance_csv_and_worst_files(runs, spaces, work):
    with open(work / "utterances.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["encoder", "path", "speaker", "similarity", "accepted_eer", "accepted_far",
                             "nearest_speaker", "nearest_similarity"]
    for name in ENCODERS:
        mine = [r for r in rows if r["encoder"] == name]
        ref = by_loops(*spaces[name])["rows"]
        assert [r["path"] for r in mine] == [r["path"] for r in ref] and len(mine) == 100
        for got, want in zip(mine, ref):
            assert got["speaker"] == want["speaker"] and got["nearest_speaker"] == want["nearest_speaker"]
            assert float(got["similarity"]) == pytest.approx(want["similarity"], abs=1e-12)
            assert float(got["nearest_similarity"]) == pytest.approx(want["nearest_similarity"], abs=1e-12)
            assert (int(got["accepted_eer"]), int(got["accepted_far"])) == (want["accepted_eer"], want["accepted_far"])
        worst = sorted(mine, key=lambda r: float(r["similarity"]))[:5]
        listed = runs["both"]["spaces"][name]["worst"]
        assert [w["path"] for w in listed] == [w["path"] for w in worst]
        assert all(f"{w['similarity']:.4f}  {w['path']}" in runs["printed"] for w in listed)


def test_bootstrap_is_seeded_and_intervals_hold_the_values(runs, spaces):
    real, generated = spaces[TOY]
    report = runs["both"]["spaces"][TOY]
    values = report["intervals"]["values"]
    assert report["intervals"]["replicates"] == 100 and report["intervals"]["seed"] == 3
    assert set(values) == {"secs", "secs_rescaled", "accept_eer", "accept_far", "eer", "fd", "kd", "real_eer",
                           "real_accept_eer", "real_accept_far"}
    for key, iv in values.items():
        assert iv["low"] <= iv["value"] <= iv["high"] and iv["low"] < iv["high"], key
    assert values["secs"]["value"] == report["speaker_similarity"]["secs"]
    assert values["fd"]["value"] == pytest.approx(report["fd"]["full"], rel=1e-9)
    assert values["kd"]["value"] == report["kd"]["kd"]
    assert values["accept_eer"]["value"] == report["similarity"]["generated"]["accept_eer"]
    # The same seed gives the same intervals, another seed others.
    args = (real.embeddings, real.labels)
    options = {"gen": generated.embeddings, "gen_labels": generated.labels, "far": 0.01, "num_subsets": 10,
               "subset_size": 1000}
    again = metrics.set_intervals(*args, **options, seed=3, replicates=100)
    assert {k: iv.to_dict() for k, iv in again.items()} == values
    assert metrics.set_intervals(*args, **options, seed=4, replicates=100)["secs"] != again["secs"]
    # The SECS interval recomputed by a loop over the same resamples: speakers, then each one's utterances.
    rng = np.random.default_rng(3)
    secs = []
    for _ in range(100):
        ri, gi = metrics.two_level_indices(real.labels, generated.labels, rng)
        counts_real = {s: int(np.sum(real.labels[ri] == s)) for s in set(real.labels)}
        counts_gen = {s: int(np.sum(generated.labels[gi] == s)) for s in set(real.labels)}
        assert counts_real == counts_gen and all(c % 10 == 0 for c in counts_real.values())  # whole speakers
        assert sum(counts_real.values()) == 100
        centroid = {s: unit(np.sum([unit(e) for e in real.embeddings[ri][real.labels[ri] == s]], axis=0))
                    for s in set(real.labels[ri])}
        secs.append(np.mean([unit(e) @ centroid[s] for e, s in zip(generated.embeddings[gi], generated.labels[gi])]))
    assert (values["secs"]["low"], values["secs"]["high"]) == pytest.approx(tuple(np.quantile(secs, [0.025, 0.975])),
                                                                          abs=1e-12)


def test_frechet_distance_of_sets_is_the_textbook_formula(spaces):
    for name in ENCODERS:
        real, generated = spaces[name]
        x, y = real.embeddings.astype(np.float64), generated.embeddings.astype(np.float64)
        s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        # Tr((S1 S2)^½) as the sum of square roots of the eigenvalues of S1 S2 (real, non-negative up to rounding).
        lam = np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)
        diff = x.mean(0) - y.mean(0)
        fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(lam).sum()
        assert metrics.frechet_distance_sets(x, y) == pytest.approx(fd, rel=1e-5)
        # Fewer samples than dimensions (the bootstrap's case, for both spaces): the eigenvalue route carries
        # about d sqrt(eps |S|) of rounding from its clipped near-zero eigenvalues, the nuclear norm none.
        assert metrics.frechet_distance_sets(x[:40], y[:30]) == pytest.approx(
            metrics.frechet_distance(*metrics.gaussian_stats(x[:40]), *metrics.gaussian_stats(y[:30])), rel=1e-5)
    x, y = (s.embeddings.astype(np.float64) for s in spaces[TOY])  # 100 samples > 64 dimensions: the eigh route
    assert metrics.frechet_distance_sets(x, y) == metrics.frechet_distance(*metrics.gaussian_stats(x),
                                                                           *metrics.gaussian_stats(y))


def test_am_score_is_unbounded_when_generated_never_predicts_a_real_class(spaces, work, capsys):
    real, generated = spaces[TOY]
    speakers = sorted(set(real.labels.tolist()))
    names, centroids = metrics.speaker_centroids(real.embeddings, real.labels)

    def probs(stats, classes):
        """p(y|x): a softmax over the cosines to the real speakers' centroids, limited to ``classes``."""
        logits = 20.0 * metrics.normalize_rows(stats.embeddings) @ centroids.T
        e = np.where(np.isin(names, classes), np.exp(logits - logits.max(axis=1, keepdims=True)), 0.0)
        return e / e.sum(axis=1, keepdims=True)

    ref, gen = probs(real, speakers), probs(generated, speakers[:6])  # never the last 4 speakers
    assert metrics.am_score(ref, gen) == np.inf
    assert metrics.am_unbounded_classes(ref, gen).tolist() == [6, 7, 8, 9]
    # With the same classes on both sides it is finite and equals scipy's KL plus the mean entropy.
    ref6 = probs(real, speakers[:6])
    expected = scipy.stats.entropy(ref6.mean(0), gen.mean(0)) + np.mean([scipy.stats.entropy(p) for p in gen])
    assert metrics.am_score(ref6, gen) == pytest.approx(expected, rel=1e-12)
    np.save(work / "gen_probs.npy", gen)
    np.save(work / "ref_probs.npy", ref)
    assert main(["compare", str(work / f"real.{TOY}.npz"), str(work / "noisy"), "--encoder", TOY, "--probs",
                 str(work / "gen_probs.npy"), "--ref-probs", str(work / "ref_probs.npy"), "-o", str(work / "am.json"),
                 "--bootstrap", "0", "--num-subsets", "5", "--ndb-bins", "5", "--fd-inf-points", "5"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^AM score\s+inf$", out, re.M)
    c = strict_json(work / "am.json")["classifier"]
    assert c["am"] is None and c["am_unbounded"].startswith("+inf: the generated set never predicts 4 class(es)")
    assert any(m.startswith("AM: unbounded") for m in strict_json(work / "am.json")["messages"])


def test_tables_parse_back(runs, work, tmp_path):
    header, rows = report_table(runs["both"])
    with open(work / "table.csv", newline="") as f:
        assert list(csv.reader(f)) == [header, *rows]
    assert header[0] == "metric" and len(header) == 5
    md = (work / "table.md").read_text().splitlines()
    assert len(md) == len(rows) + 2 and re.fullmatch(r"\|(---\|){5}", md[1])
    assert all(len(re.split(r"(?<!\\)\|", line)) == 7 and line.startswith("| ") and line.endswith(" |")
               for line in md if line != md[1])  # 5 cells between unescaped pipes
    tex = (work / "table.tex").read_text().splitlines()
    assert tex[0] == r"\begin{tabular}{lrrrr}" and tex[-1] == r"\end{tabular}"
    assert [tex[1], tex[3], tex[-2]] == [r"\toprule", r"\midrule", r"\bottomrule"]
    body = tex[2:3] + tex[4:-2]
    assert len(body) == len(rows) + 1
    assert all(len(re.findall(r"(?<!\\)&", line)) == 4 and line.endswith(r" \\") for line in body)
    assert not any(re.search(r"(?<!\\)[%_#]", line) for line in body) and r"$\pm$" in tex[4]
    # Awkward cells survive the round trip: commas and quotes in CSV, pipes in Markdown, specials in LaTeX.
    cells = [["a, b", 'say "x"', "x|y"], ["50 %", "a_b & c", None]]
    write_table(tmp_path / "t.csv", ["one", "two", "three"], cells)
    with open(tmp_path / "t.csv", newline="") as f:
        assert list(csv.reader(f)) == [["one", "two", "three"], ["a, b", 'say "x"', "x|y"], ["50 %", "a_b & c", ""]]
    assert r"x\|y" in render_table(["one", "two", "three"], cells, "markdown")
    assert r"50 \% & a\_b \& c &  \\" in render_table(["one", "two", "three"], cells, "latex")
    write_table(tmp_path / "t.txt", ["one", "two", "three"], cells)
    assert (tmp_path / "t.txt").read_text().splitlines()[0].split() == ["one", "two", "three"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.txt"]  # no temporaries left
    with pytest.raises(DeepSpeakerError, match=r"t\.docx: a table file ends in \.txt, \.csv, \.md, \.tex"):
        write_table(tmp_path / "t.docx", ["a"], [["b"]])
    with pytest.raises(DeepSpeakerError, match="row 0 has 1 cells for 2 columns"):
        render_table(["a", "b"], [["c"]], "csv")


def test_unlabelled_generated_set_and_too_few_speakers(spaces):
    real, generated = spaces[TOY]
    flat = make_stats(Embedded(generated.embeddings, [""] * len(generated.paths), generated.paths.tolist(), [], TOY,
                               generated.model_identity), generated.feature_settings, "flat folder")
    report = compare(real, flat, num_subsets=5, ndb_bins=5, fd_inf_points=5, bootstrap=100)
    assert report["similarity"]["generated"]["secs"] is None and report["worst"] == []
    assert set(report["intervals"]["values"]) == {"fd", "kd", "real_eer", "real_accept_eer", "real_accept_far"}
    assert report["similarity"]["real"]["eer"] == pytest.approx(by_loops(real, generated)["eer"], abs=1e-12)
    two = np.isin(real.labels, sorted(set(real.labels))[:2])
    few = make_stats(Embedded(real.embeddings[two], real.labels[two].tolist(), real.paths[two].tolist(), [], TOY,
                              real.model_identity), real.feature_settings, "two speakers")
    report = compare(few, generated, num_subsets=5, ndb_bins=5, fd_inf_points=5, bootstrap=100)
    assert report["intervals"]["skipped"].startswith("a speaker bootstrap needs at least 3 speakers")
    assert "no intervals: a speaker bootstrap needs at least 3 speakers" in format_table(report)
    json.dumps(report, allow_nan=False)


def test_command_line_refusals_are_one_line(work, runs, capsys):  # runs: writes the statistics files
    real, noisy = str(work / "real.{encoder}.npz"), str(work / "noisy")
    cases = [
        (["--encoder", f"deep-speaker,{TOY},deep-speaker"], "give distinct names"),
        (["--encoder", f"{TOY},wavlm-nope"], "unknown encoder 'wavlm-nope'"),
        (["--encoder", TOY + ",", "--bootstrap", "0"], "give distinct names"),
        (["--encoder", f"{TOY},wavlm-sv", "--model", "x.keras"], "--model applies to deep-speaker only"),
        (["--encoder", TOY, "--bootstrap", "50"], "at least 100 resamples"),
        (["--encoder", TOY, "--far", "1.5"], "--far must lie in (0, 1)"),
        (["--encoder", TOY, "--table", "t.docx"], "a table file ends in"),
    ]
    for extra, message in cases:
        assert main(["compare", real, noisy, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
    # With several encoders a statistics file must be that encoder's own.
    assert main(["compare", str(work / f"real.{TOY}.npz"), noisy, "--encoder", f"{TOY},deep-speaker"]) == 2
    assert f"holds statistics of encoder {TOY}, not deep-speaker" in capsys.readouterr().err
