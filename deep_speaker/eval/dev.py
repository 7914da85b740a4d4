"""The development protocol of the packaged model (issue #33): speakers held out of its training, judged clean and
in channels its training never simulated, apart from the README's test speakers (``test-other``).

:func:`dev_speakers` picks a gender-balanced set of the bundled ``train-clean-100`` speakers (the model is trained
on the others); :func:`make_dev_set` writes their audio at 16 kHz once per condition of :data:`DEV_CONDITIONS`;
:func:`evaluate_dev` scores all pairs of each utterance's segments per condition (``eval.verification.evaluate``),
the mean EER over the out-of-domain conditions with a speaker bootstrap that draws the same speakers for every
condition, and the paired difference to a baseline encoder (the ``mean-mfcc`` cosine, the issue's floor).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf

from ..atomic import atomic_write, read_json_document, write_json
from ..data.audio import SAMPLE_RATE, load_audio
from ..encoders import Encoder
from ..errors import DeepSpeakerError
from ..metrics.bootstrap import VERIFICATION_METRICS, Interval, bootstrap_replicates, percentile_interval
from ..settings import settings_difference
from .config import EvaluateConfig
from .constants import copy_name
from .degrade import degrade_folder
from .scoring import comparison_part
from .trials import find_gender_file, read_genders
from .verification import Evaluation, evaluate, folder_utterances

CLEAN = "clean"
# The out-of-domain channels, each of a kind training never applies: data.augment adds noise (white, pink, brown,
# babble), reverberates (simulated rooms), band-passes (narrowband 3.4-6 kHz) and changes the speed by 0.9/1.1,
# which moves pitch, formants and timing together by at most 10 % (1.65 semitones).
DEV_CONDITIONS: tuple[tuple[str, float | None], ...] = (
    (CLEAN, None),
    ("codec", 0.97),  # Opus at about 14 kbit/s: coding artefacts, neither additive noise, a room nor a band-pass
    ("pitch", 3.0),  # pitch and formants x1.19 at the same timing: beyond speed's 1.1, and without its tempo
    ("tempo", 1.25),  # timing x1.25 at the same pitch and spectrum (phase vocoder): speed never parts the two
    ("melvocoder", 40.0),  # a 40-band mel bottleneck and Griffin-Lim phase: no augmentation resynthesises speech
)
MANIFEST = ".deep-speaker-dev.json"  # written first: says the folder is ours, with its settings and what is done
FORMAT_VERSION = 1
GENDERS = ("f", "m")


def condition_name(kind: str, level: float | None) -> str:
    """``clean``, else ``kind@level`` (``tempo@1.25``), as the main job names its degraded copies."""
    return kind if level is None else copy_name(kind, level)


def dev_speakers(train_audio_dir: str | os.PathLike, count: int = 32, seed: int = 0) -> list[str]:
    """``count`` speakers of the folder, half female and half male (its corpus' ``SPEAKERS.TXT``), drawn without
    replacement by ``seed`` from each gender's sorted list; sorted."""
    if count < 2 or count % 2:
        raise DeepSpeakerError(f"the dev speakers are half female, half male: give an even count of 2 or more, "
                               f"got {count}")
    gender_file = find_gender_file(train_audio_dir)
    if gender_file is None:
        raise DeepSpeakerError(f"{train_audio_dir}: no SPEAKERS.TXT (or other gender list) in it or its parent")
    genders = read_genders(gender_file)
    utterances, _ = folder_utterances(train_audio_dir)
    speakers = sorted({u.speaker for u in utterances})
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for gender in GENDERS:
        pool = [s for s in speakers if genders.get(s) == gender]
        if len(pool) < count // 2:
            raise DeepSpeakerError(f"{train_audio_dir}: {len(pool)} speakers of gender {gender} in {gender_file}, "
                                   f"{count // 2} needed")
        chosen += rng.choice(pool, count // 2, replace=False).tolist()
    return sorted(chosen)


def _check_manifest(document: object, path: Path) -> None:
    if not (isinstance(document, dict) and isinstance(document.get("settings"), dict)
            and isinstance(document.get("done"), list)):
        raise DeepSpeakerError(f"{path}: not a dev-set manifest (settings and done expected)")
    if document["settings"].get("format_version") != FORMAT_VERSION:
        raise DeepSpeakerError(f"{path}: dev-set format {document['settings'].get('format_version')!r}, this "
                               f"version reads {FORMAT_VERSION}")


def read_manifest(dev_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a folder :func:`make_dev_set` wrote (``settings``, ``done``); one line otherwise."""
    path = Path(dev_dir) / MANIFEST
    if not path.is_file():
        raise DeepSpeakerError(f"{dev_dir}: not a dev set (no {MANIFEST}; make_dev_set writes one)")
    return read_json_document(path, "dev-set manifest", _check_manifest)


def make_dev_set(audio_dir: str | os.PathLike, speakers: Sequence[str], out_dir: str | os.PathLike, *,
                 seed: int = 0) -> Path:
    """``out_dir/<condition>/<speaker>/<utt>.flac`` (16 kHz mono, 16-bit) for every condition of
    :data:`DEV_CONDITIONS`: the speakers' files as they are (``clean``), then each degraded copy of those.

    A folder written by the same call (same source, speakers, seed and conditions) is reused, and a condition left
    unfinished is written again; a non-empty folder without our manifest, or with other settings, is refused.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DeepSpeakerError(f"{out}: is a file; give a folder for the dev set")
    if not speakers:
        raise DeepSpeakerError("a dev set needs speakers: none given")
    utterances, _ = folder_utterances(audio_dir, speakers=list(speakers))  # an unknown speaker before any write
    settings = {"format_version": FORMAT_VERSION, "source": str(Path(audio_dir).resolve()),
                "speakers": sorted(speakers), "seed": seed, "sample_rate": SAMPLE_RATE,
                "conditions": [condition_name(kind, level) for kind, level in DEV_CONDITIONS]}
    if out.is_dir() and any(out.iterdir()):
        manifest = read_manifest(out)  # refuses a folder we did not write
        if manifest["settings"] != settings:
            difference = settings_difference(manifest["settings"], settings)
            raise DeepSpeakerError(f"{out}: a dev set of other settings ({difference}); give a new folder or remove it")
        done = list(manifest["done"])
    else:
        done = []
        write_json(out / MANIFEST, {"settings": settings, "done": done})
    for kind, level in DEV_CONDITIONS:
        name = condition_name(kind, level)
        if name in done:
            continue
        if level is None:
            for u in utterances:  # resampled to 16 kHz mono once, so every condition starts from the same samples
                with atomic_write(out / name / u.speaker / f"{Path(u.path).stem}.flac") as f:
                    sf.write(f, load_audio(u.path, SAMPLE_RATE), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        else:
            degrade_folder(out / CLEAN, out / name, kind=kind, level=level, seed=seed)
        done.append(name)
        write_json(out / MANIFEST, {"settings": settings, "done": done})
    return out


def read_finished_manifest(dev_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a dev set whose every condition is written; else one line saying what is missing."""
    manifest = read_manifest(dev_dir)
    missing = [n for n in manifest["settings"]["conditions"] if n not in manifest["done"]]
    if missing:
        raise DeepSpeakerError(f"{dev_dir}: the dev set is unfinished ({', '.join(missing)} not written): run "
                               f"make_dev_set again")
    return manifest


def condition_evaluations(encoder: Encoder, dev_dir: str | os.PathLike, *,
                          segments: int = 3) -> dict[str, Evaluation]:
    """Each condition's evaluation (the same trials in each; no bootstrap): for analyses over subsets of the dev
    speakers or many checkpoints, which :func:`evaluate_dev`'s report does not carry."""
    dev = Path(dev_dir)
    names = read_finished_manifest(dev)["settings"]["conditions"]
    return _evaluate_conditions(encoder, dev, names, segments, EvaluateConfig(bootstrap=0))


def _trial_items(result: Evaluation, folder: Path) -> list[str]:
    """The scored segments relative to their condition's folder: equal lists mean the same trials, in order."""
    return [os.path.relpath(p, folder) for p in result.trials.items.paths]


def _evaluate_conditions(encoder: Encoder, dev: Path, names: Sequence[str], segments: int,
                         config: EvaluateConfig) -> dict[str, Evaluation]:
    results = {name: evaluate(encoder, {"audio_dir": str(dev / name), "segments": segments}, config)
               for name in names}
    reference = _trial_items(results[names[0]], dev / names[0])
    for name in names[1:]:
        if _trial_items(results[name], dev / name) != reference:
            raise DeepSpeakerError(f"{encoder.name}: the trials of {name} differ from those of {names[0]} (files "
                                   f"failed in one of them): the conditions must share their trials")
    return results


def _mean_eer(systems: Sequence[Sequence[Evaluation]], config: EvaluateConfig) -> dict[str, Any]:
    """The mean EER over conditions of each system (the first minus the second when two are given), with the
    percentile interval of a speaker bootstrap that draws the same speakers for every condition and system."""
    means = [float(np.mean([r.report["eer"] for r in system])) for system in systems]
    value = means[0] if len(systems) == 1 else means[0] - means[1]
    if not config.bootstrap:
        return {"eer": {"value": value}}
    first = systems[0][0]
    speakers_a, speakers_b = first.trial_speakers()
    values = bootstrap_replicates([r.scores for system in systems for r in system], first.labels,
                                  first_speakers=speakers_a, second_speakers=speakers_b,
                                  metrics={"eer": VERIFICATION_METRICS["eer"]}, replicates=config.bootstrap,
                                  seed=config.seed)[:, :, 0].reshape(config.bootstrap, len(systems), -1).mean(axis=2)
    replicate = values[:, 0] if len(systems) == 1 else values[:, 0] - values[:, 1]
    return {"eer": Interval(value, *percentile_interval(replicate)).to_dict(), "level": 0.95,
            "replicates": config.bootstrap, "seed": config.seed, "resampled": "speakers, jointly across conditions"}


def evaluate_dev(encoder: Encoder, dev_dir: str | os.PathLike, *, segments: int = 3, bootstrap: int = 1000,
                 seed: int = 0, baseline: Encoder | None = None) -> dict[str, Any]:
    """The dev report (JSON-ready): per condition the verification report of all pairs of the ``segments`` parts
    of every utterance, the mean EER over the out-of-domain conditions with its joint speaker-bootstrap interval,
    and with a ``baseline`` the paired differences (this encoder minus the baseline) per condition and of that mean.
    """
    dev = Path(dev_dir)
    manifest = read_finished_manifest(dev)
    names = manifest["settings"]["conditions"]
    config = EvaluateConfig(bootstrap=bootstrap, seed=seed)
    ours = _evaluate_conditions(encoder, dev, names, segments, config)
    ood = [n for n in names if n != CLEAN]
    report: dict[str, Any] = {
        "dev_dir": str(dev), "encoder": encoder.name, "model_identity": encoder.identity,
        "weights": encoder.weights.to_dict(), "segments": segments, "speakers": manifest["settings"]["speakers"],
        "conditions": {name: result.report for name, result in ours.items()},
        "ood": {"conditions": ood, **_mean_eer([[ours[n] for n in ood]], config)}}
    if baseline is None:
        return report
    theirs = _evaluate_conditions(baseline, dev, names, segments, config)
    if _trial_items(theirs[names[0]], dev / names[0]) != _trial_items(ours[names[0]], dev / names[0]):
        raise DeepSpeakerError(f"{encoder.name} and {baseline.name} scored different trials (files failed for "
                               f"one of them): a paired difference needs the same trials")
    differences = {}
    for name in names:
        a, b = ours[name], theirs[name]
        if bootstrap:
            first, second = a.trial_speakers()
            differences[name] = comparison_part(a.scores, b.scores, a.labels, first_speakers=first,
                                                second_speakers=second, other=baseline.name,
                                                replicates=bootstrap, seed=seed)
        else:
            differences[name] = {"other": baseline.name, "eer": {"value": a.report["eer"] - b.report["eer"]}}
    report["baseline"] = {
        "encoder": baseline.name, "model_identity": baseline.identity,
        "eer": {name: theirs[name].report["eer"] for name in names},
        "ood_eer": float(np.mean([theirs[n].report["eer"] for n in ood])),
        "difference": differences,
        "ood_difference": _mean_eer([[ours[n] for n in ood], [theirs[n] for n in ood]], config)}
    return report
