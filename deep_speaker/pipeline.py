"""The main job end to end: cache -> softmax pre-training -> triplet training -> unseen-speaker verification ->
generated-speech metrics of degraded copies. ``deep-speaker run`` and ``scripts/train_default_model.py`` call it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from .atomic import write_json
from .data.augment import check_augmentations
from .data.cache import FeatureCache, augment_cache, build_cache
from .data.inputs import generate_training_inputs
from .encoders import DEFAULT_ENCODER, Encoder, get_encoder
from .encoders.teacher import ensure_teacher_targets
from .errors import DeepSpeakerError
from .eval.constants import copy_name
from .eval.verification import evaluate
from .eval.verification_report import ci_text, write_plots
from .job_config import TEST_SUBSET, TRAIN_SUBSET, JobConfig
from .machine import describe, machine_text
from .model.checkpoints import best_checkpoint
from .train import TrainConfig, train

log = logging.getLogger(__name__)


def _step(title: str) -> None:
    log.info("\n== %s", title)


@contextlib.contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Adds the wall seconds of the block to ``phases[name]``: summary.json's per-phase profile (#34: where the
    job's minutes go on each CPU kind; benchmarks/bench_job_phases.py compares them)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = round(phases.get(name, 0.0) + time.perf_counter() - started, 3)


def build_caches(cfg: JobConfig) -> tuple[FeatureCache, FeatureCache]:
    """Feature caches of the training speakers and of the held-out speakers (updated, not rebuilt, on a re-run)."""
    caches = []
    for subset in (TRAIN_SUBSET, TEST_SUBSET):
        audio = cfg.data_dir / subset
        if not audio.is_dir():
            raise DeepSpeakerError(f"{audio}: missing; the main job needs {cfg.data_dir} with {TRAIN_SUBSET}/ "
                                   f"(training speakers) and {TEST_SUBSET}/ (held-out speakers)")
        summary = build_cache(audio, cfg.output_dir / "cache" / subset, workers=cfg.workers, update=True)
        log.info("\n".join(summary.lines()))
        if subset == TRAIN_SUBSET and cfg.augment:
            augmented(cfg, summary.cache_dir)
        caches.append(FeatureCache(cfg.output_dir / "cache" / subset))
    return caches[0], caches[1]


def augmented(cfg: JobConfig, cache_dir: str | os.PathLike) -> None:
    """The training cache's augmented copies of cfg's recipe, made unless the cache already has them."""
    recipe = {"kinds": list(check_augmentations(cfg.augment)), "copies": cfg.augment_copies, "seed": cfg.seed}
    if FeatureCache(cache_dir).manifest.get("augment") != recipe:
        log.info("augmented copies (%s) of the training speech", ", ".join(recipe["kinds"]))
        augment_cache(cache_dir, recipe["kinds"], cfg.augment_copies, seed=cfg.seed)


def train_phases(cfg: JobConfig, train_cache: FeatureCache, phases: dict[str, float] | None = None) -> Path:
    """Softmax pre-training then triplet training on the training speakers; the best triplet checkpoint. Each
    phase's wall seconds are added to ``phases`` (keys ``softmax``, ``triplet``) when given."""
    phases = {} if phases is None else phases
    with _timed(phases, "softmax"):
        inputs = generate_training_inputs(train_cache, crop_frames=cfg.crop_frames, seed=cfg.seed)
    common = dict(output_dir=cfg.output_dir / "checkpoints", width=cfg.width, batch_size=cfg.batch_size,
                  crop_frames=cfg.crop_frames, keep_every=cfg.keep_every,
                  save_every=cfg.save_every, seed=cfg.seed, precision=cfg.precision, verbose=cfg.verbose,
                  spec_augment=cfg.spec_augment)
    # Fresh random crops each step: the few fixed crops of one utterance per speaker are memorised within
    # hundreds of steps. The original's triplet rate (SGD 0.01) undoes the softmax start on data this small.
    softmax = TrainConfig(phase="softmax", data=inputs, steps=cfg.softmax_steps, random_crops=True,
                          softmax_head=cfg.softmax_head, teacher=cfg.teacher, teacher_weight=cfg.teacher_weight,
                          teacher_loss=cfg.teacher_loss, speaker_weight=cfg.speaker_weight,
                          **common)
    with _timed(phases, "softmax"):
        if softmax.teacher is not None:
            ensure_teacher_targets(softmax.teacher, train_cache.path, softmax.teacher_targets)
        train(softmax)
    with _timed(phases, "triplet"):
        train(TrainConfig(phase="triplet", data=inputs, cache_dir=train_cache.path, steps=cfg.triplet_steps,
                          learning_rate=cfg.triplet_learning_rate, **common))
    found = best_checkpoint(cfg.output_dir / "checkpoints", "triplet")
    if found is None:
        raise DeepSpeakerError(f"triplet training wrote no checkpoint under {cfg.output_dir / 'checkpoints'}")
    return found


def evaluate_unseen(encoder: Encoder, test_cache: FeatureCache, out_dir: Path) -> tuple[dict, list[str]]:
    """Verification report (SAP/SAN, EER, minDCF, F) over all pairs of the held-out speakers, and its PNGs."""
    result = evaluate(encoder, {"cache": str(test_cache.path)})
    pngs = write_plots(out_dir, result.scores, result.labels, eer=result.report["eer"], labelled=result.labelled)
    return result.report, pngs


def compare_degraded(encoder: Encoder, cfg: JobConfig, out_dir: Path) -> tuple[dict[str, dict], list[str]]:
    """``compare`` of the held-out speech against each degraded copy: the reports keyed ``kind@level``, the PNGs."""
    from .eval.degrade import degrade_folder
    from .eval.generated import compare, compute_stats
    from .eval.plots import plot_report

    real_dir = cfg.data_dir / TEST_SUBSET
    real = compute_stats(real_dir, encoder)
    reports, pngs = {}, []
    for kind, level in cfg.degradations:
        name = copy_name(kind, level)
        copy_dir = cfg.output_dir / "degraded" / name
        if not copy_dir.is_dir():
            # Written beside and renamed whole: a folder under the final name is complete (a kill mid-way
            # leaves only the .partial one, which the next run writes again).
            partial = copy_dir.with_name(f"{name}.partial")
            degrade_folder(real_dir, partial, kind=kind, level=level, seed=cfg.seed)
            partial.rename(copy_dir)
        generated = compute_stats(copy_dir, encoder)
        reports[name] = compare(real, generated, seed=cfg.seed, num_subsets=cfg.compare_subsets)
        write_json(out_dir / f"compare_{name}.json", reports[name])
        pngs += [str(p) for p in plot_report(reports[name], out_dir / f"compare_{name}")]
        log.info("  %-18s FD %.4f  KD %.5f  SECS %.3f", name, reports[name]["fd"]["full"], reports[name]["kd"]["kd"],
                 reports[name]["speaker_similarity"]["secs"])
    return reports, pngs


def degradation_summary(reports: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per degraded copy: FD, KD and speaker similarity, plus the real-halves baseline of the same run."""
    rows = []
    for name, rep in reports.items():
        rows.append({"set": name, "fd": rep["fd"]["full"], "kd": rep["kd"]["kd"],
                     "secs": rep["speaker_similarity"]["secs"],
                     "baseline_fd": rep["baseline"]["fd"]["full"], "baseline_kd": rep["baseline"]["kd"]["kd"],
                     "secs_ceiling": rep["baseline"]["speaker_similarity"]["secs"]})
    return rows


def run_main_job(cfg: JobConfig) -> dict[str, Any]:
    """Run every stage, write ``summary.json`` and the PNGs under ``cfg.output_dir``; return the summary."""
    started = time.perf_counter()
    phases: dict[str, float] = {}
    out = cfg.output_dir
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    _step(f"1/5 feature caches of {cfg.data_dir}")
    with _timed(phases, "caches"):
        train_cache, test_cache = build_caches(cfg)
    _step(f"2-3/5 softmax pre-training ({cfg.softmax_steps} steps), then triplet training "
          f"({cfg.triplet_steps} steps), width {cfg.width:g}")
    checkpoint = train_phases(cfg, train_cache, phases)
    _step(f"4/5 speaker verification on {len(test_cache.speakers)} speakers never seen in training")
    with _timed(phases, "verification"):
        encoder = get_encoder(DEFAULT_ENCODER, model=checkpoint)
        verification, pngs = evaluate_unseen(encoder, test_cache, report_dir)
    log.info("  SAP %.3f  SAN %.3f (mean cosine similarity, same / different speaker)  EER %.2f %%  over %d + %d "
             "trials", verification["sap"], verification["san"], 100 * verification["eer"], verification["n_target"],
             verification["n_nontarget"])
    reports = {}
    if cfg.degradations:
        _step("5/5 generated-speech metrics: held-out speech against degraded copies")
        with _timed(phases, "generated"):
            reports, compare_pngs = compare_degraded(encoder, cfg, report_dir)
        pngs += compare_pngs
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "checkpoint": str(checkpoint),
        "model_identity": encoder.identity,
        "verification": verification,
        "degradations": degradation_summary(reports),
        "pngs": pngs,
        "wall_seconds": time.perf_counter() - started,
        "phase_seconds": phases,
        # The CPU kind and versions that made these numbers: the same on this machine every run, not across kinds.
        "machine": describe(),
    }
    write_json(out / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The few lines the main job ends with."""
    v = summary["verification"]
    phases = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in summary["phase_seconds"].items())
    lines = [f"Done in {summary['wall_seconds'] / 60:.1f} min ({phases}). Model: {summary['checkpoint']}",
             f"Machine: {machine_text(summary['machine'])}",
             f"Unseen speakers: SAP {v['sap']:.3f} vs SAN {v['san']:.3f} (cosine similarity), "
             f"EER {100 * v['eer']:.2f} %{ci_text(v, 'eer', 100)}, "
             f"minDCF(0.01) {v['min_dcf']['p_target=0.01']['min_dcf']:.3f}{ci_text(v, 'min_dcf_0.01')}"]
    rows = summary["degradations"]
    if rows:
        lines += [f"Held-out speech vs degraded copies (real-halves baseline: FD {rows[0]['baseline_fd']:.4f}, "
                  f"KD {rows[0]['baseline_kd']:.5f}; SECS ceiling {rows[0]['secs_ceiling']:.3f}):",
                  f"  {'set':18s} {'FD':>9s} {'KD':>9s} {'SECS':>6s}"]
        lines += [f"  {r['set']:18s} {r['fd']:9.4f} {r['kd']:9.5f} {r['secs']:6.3f}" for r in rows]
    out = Path(summary["config"]["output_dir"])
    lines += [f"Summary: {out / 'summary.json'}", f"Reports: {out / 'report'}/compare_*.json",
              "Pictures:", *[f"  {p}" for p in summary["pngs"]]]
    return "\n".join(lines)
