"""Embedding on a Dask LocalCluster of 2 worker processes (127.0.0.1) against the single-process run, and the Kaldi
ark/scp export read back by kaldiio and by a plain byte parse."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import local_cluster

from deep_speaker.cli import main
from deep_speaker.encoders.deepspeaker import packaged_model

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "librispeech" / "test-other"
# Rows of one utterance computed in different batches may differ in the last float32 bits (oneDNN picks kernels by
# batch shape); chunks of files change the batches, so the cluster's rows are compared at that rounding.
ATOL = 1e-6


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(death_timeout=60) as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """Twelve real utterances of 6 speakers, an empty file and a file that is not audio."""
    work = tmp_path_factory.mktemp("bad")
    (work / "empty.flac").write_bytes(b"")
    (work / "notes.wav").write_text("not audio")
    speakers = sorted(SAMPLES.iterdir())[:6]
    real = [str(f) for s in speakers for f in sorted(s.rglob("*.flac"))[:2]]
    return real[:6] + [str(work / "empty.flac")] + real[6:] + [str(work / "notes.wav")]


@pytest.fixture(scope="module")
def model() -> str:
    return str(packaged_model())


@pytest.fixture(scope="module")
def single(inputs, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert main(["embed", *inputs, "-o", str(out / "e.npz"), "--model", model]) == 1
    assert main(["embed", *inputs, "-o", str(out / "e.ark"), "--model", model]) == 1
    with np.load(out / "e.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}, out


def test_cluster_embeddings_equal_the_single_process_run(cluster, inputs, model, single, tmp_path, capsys):
    reference, _ = single
    capsys.readouterr()
    assert main(["embed", *inputs, "-o", str(tmp_path / "e.npz"), "--model", model, "--scheduler", cluster]) == 1
    err = capsys.readouterr().err
    # The bad files are reported with their paths and reasons, as in one process; the rest are embedded in order.
    assert f"skipped {inputs[6]}: " in err and f"skipped {inputs[-1]}: " in err
    with np.load(tmp_path / "e.npz", allow_pickle=False) as data:
        assert data["paths"].tolist() == reference["paths"].tolist() == inputs[:6] + inputs[7:-1]
        assert str(data["model_identity"]) == str(reference["model_identity"])
        np.testing.assert_allclose(data["embeddings"], reference["embeddings"], rtol=0, atol=ATOL)


def test_cluster_statistics_equal_the_single_process_ones(cluster, model, tmp_path):
    folder = tmp_path / "real"
    for speaker in sorted(SAMPLES.iterdir())[:3]:  # LibriSpeech layout: speaker/chapter/files
        for f in sorted(speaker.rglob("*.flac"))[:3]:
            (folder / speaker.name / f.parent.name).mkdir(parents=True, exist_ok=True)
            (folder / speaker.name / f.parent.name / f.name).symlink_to(f)
    assert main(["stats", str(folder), "-o", str(tmp_path / "one.npz"), "--model", model]) == 0
    assert main(["stats", str(folder), "-o", str(tmp_path / "dask.npz"), "--model", model, "--scheduler",
                 cluster]) == 0
    with np.load(tmp_path / "one.npz", allow_pickle=False) as one, np.load(tmp_path / "dask.npz") as dask:
        for key in ("paths", "labels", "model_identity", "feature_settings", "encoder"):
            assert dask[key].tolist() == one[key].tolist(), key
        for key in ("embeddings", "mu", "sigma"):
            np.testing.assert_allclose(dask[key], one[key], rtol=0, atol=ATOL, err_msg=key)


def test_an_unreachable_scheduler_is_a_one_line_error(monkeypatch, inputs, model, tmp_path, capsys):
    from deep_speaker.data import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "2s")
    # Port 9 (discard) on the loopback: nothing listens there in a test machine.
    assert main(["embed", inputs[0], "-o", str(tmp_path / "e.npz"), "--model", model, "--scheduler",
                 "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err[0]
    assert not (tmp_path / "e.npz").exists()


def parse_ark(data: bytes) -> dict[str, np.ndarray]:
    """Kaldi's binary archive by hand: '<id> ' then '\\0B', 'FV ' (float32 vector), '\\4' + int32 length, values."""
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        uid = data[pos:space].decode()
        assert data[space + 1:space + 3] == b"\0B" and data[space + 3:space + 6] == b"FV " and data[space + 6] == 4
        (dim,) = struct.unpack("<i", data[space + 7:space + 11])
        out[uid] = np.frombuffer(data, "<f4", dim, space + 11)
        pos = space + 11 + 4 * dim
    return out


def test_kaldi_export_reads_back_with_kaldiio_and_by_hand(single, inputs):
    import kaldiio

    reference, out = single
    ids = [Path(p).stem for p in reference["paths"]]  # LibriSpeech names are speaker-chapter-utterance already
    expected = dict(zip(ids, reference["embeddings"]))
    scp = (out / "e.scp").read_text().splitlines()
    assert [line.split()[0] for line in scp] == sorted(ids)  # Kaldi's sorted order
    by_hand = parse_ark((out / "e.ark").read_bytes())
    assert list(by_hand) == sorted(ids)
    with kaldiio.ReadHelper(f"scp:{out / 'e.scp'}") as reader:
        from_scp = dict(reader)
    for uid, row in expected.items():
        np.testing.assert_array_equal(by_hand[uid], row)
        np.testing.assert_array_equal(from_scp[uid], row)
