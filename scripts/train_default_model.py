"""Train the packaged default model from the bundled speech (samples/librispeech) with a fixed seed.

    python scripts/train_default_model.py            # about 17 minutes on 2 idle Xeon cores (AVX-512)
    python scripts/train_default_model.py --calibrate-only   # refit the card's calibration (1 minute)
    python scripts/train_default_model.py --variant DIR seed=1 softmax_steps=800 augment=none
        # the same job with some fields of CONFIG changed, trained into DIR and scored on the held-out speakers
        # and their out-of-domain copies (benchmarks/train_quality.py --evaluate); the package is not touched

Trains on the 232 bundled train-clean-100 speakers only, measures verification on the 10 held-out test-other
speakers, and writes deep_speaker/default_model/{MODEL_NAME, model_card.json}. The card's calibration is
fitted on the training speakers only (each utterance cut in two halves gives the same-speaker trials, so they
are same-session ones), then measured on the held-out speakers.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import keras
import soundfile as sf

from deep_speaker.atomic import json_text, save_model, write_json
from deep_speaker.cli import configure_logging
from deep_speaker.encoders import get_encoder
from deep_speaker.eval.verification import calibrate, evaluate
from deep_speaker.machine import cpu_text, describe
from deep_speaker.model.checkpoints import read_state, run_dir
from deep_speaker.model.rescnn import load_model, model_identity, to_embedding_model
from deep_speaker.pipeline import JobConfig, run_main_job
from deep_speaker.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "deep_speaker" / "default_model"
MODEL_NAME = "rescnn_w0.25_librispeech232.keras"
# The AAM-softmax head (ArcFace margin 0.2, scale 32: TrainConfig's defaults) on the speech and 2 augmented copies
# of each utterance (noise, rooms, narrowband channels, 0.9/1.1 speed as new speakers) with SpecAugment masks.
# The copies triple the classes and make them harder: 800 steps left the softmax at 38 % training accuracy
# (held-out EER 5.07 %), 2400 at 78 % (EER 2.44 %; without augmentation 800 steps reached 97 % and 3.04 %).
CONFIG = JobConfig(output_dir=REPO / "runs" / "default-model", width=0.25, softmax_steps=2400, triplet_steps=600,
                   batch_size=48, save_every=100, seed=0, degradations=(), softmax_head="aam",
                   augment="noise,reverb,band,speed", augment_copies=2, spec_augment=True)
HEAD = TrainConfig("softmax")  # the margin and scale the job's AAM head trains with (TrainConfig defaults)


TRAIN_AUDIO = REPO / "samples" / "librispeech" / "train-clean-100"
CALIBRATION_SOURCE = {"audio_dir": str(TRAIN_AUDIO), "segments": 2}
HELD_OUT = {"audio_dir": str(REPO / "samples" / "librispeech" / "test-other")}


def calibrated_card(card: dict) -> dict:
    """The card with a calibration fitted on the training speakers and its held-out figures (with intervals)."""
    encoder = get_encoder(model=MODEL_DIR / MODEL_NAME)
    record, _ = calibrate(encoder, CALIBRATION_SOURCE)
    record = type(record)(record.calibration, record.encoder, record.model_identity, record.score_norm,
                          {**record.fitted_on, "source": {"audio_dir": "samples/librispeech/train-clean-100",
                                                          "segments": 2}})
    held_out = evaluate(encoder, HELD_OUT, calibration=record).report
    return {**card, "calibration": record.to_dict(),
            "held_out_calibrated": {k: held_out[k] for k in ("cllr", "min_cllr", "act_dcf", "intervals")}}


def training_data() -> str:
    """The card's line on the training speech, counted from the bundled folder."""
    files = sorted(TRAIN_AUDIO.rglob("*.flac"))
    speakers = {f.relative_to(TRAIN_AUDIO).parts[0] for f in files}
    minutes = sum(sf.info(f).duration for f in files) / 60
    return (f"{len(speakers)} LibriSpeech train-clean-100 speakers bundled in samples/ "
            f"({len(files) / len(speakers):.0f} utterance each, {minutes:.0f} min)")


def machine() -> str:
    """The CPU the training ran on, for the card (its minutes differ several times between the 2-core machines used
    here): deep_speaker.machine's, as the main job's summary.json records it."""
    return cpu_text(describe())


def train_job(cfg: JobConfig, model_path: Path) -> tuple[dict, keras.Model, float]:
    """Run the job (resuming where it stopped), save its embedding network to model_path: the job's summary,
    that network and the minutes the run took."""
    configure_logging()  # the job's progress lines, as `deep-speaker run` shows them
    started = time.perf_counter()
    summary = run_main_job(cfg)
    minutes = (time.perf_counter() - started) / 60
    model = to_embedding_model(load_model(summary["checkpoint"]))
    save_model(model, model_path)
    return summary, model, minutes


def parse_field(name: str, value: str):
    """A --variant VALUE as CONFIG's field is typed: ``none`` is no augmentation, true/false a flag."""
    default = getattr(CONFIG, name)
    if name == "augment":
        return None if value == "none" else value
    return value == "true" if isinstance(default, bool) else type(default)(value)


def variant(output_dir: Path, overrides: list[str]) -> int:
    """CONFIG with FIELD=VALUE overrides (VALUE parsed as the field's default is typed; ``none`` for no
    augmentation), trained into output_dir; its embedding network scored by train_quality.py --evaluate."""
    scalars = {f.name for f in dataclasses.fields(JobConfig)
               if isinstance(getattr(CONFIG, f.name), (bool, int, float, str)) or f.name == "augment"}
    changes = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in scalars or not value:
            print(f"--variant: {item!r} is not FIELD=VALUE of a scalar JobConfig field", file=sys.stderr)
            return 2
        changes[name] = parse_field(name, value)
    cfg = dataclasses.replace(CONFIG, output_dir=output_dir, **changes)
    model_path = output_dir / "embedding.keras"
    _, _, minutes = train_job(cfg, model_path)
    print(f"{' '.join(overrides) or 'CONFIG'}: trained in {minutes:.1f} min on {machine()}")
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_quality.py"), "--data",
                           str(cfg.data_dir), "--evaluate", str(model_path), "--work", str(output_dir / "evaluate")
                           ], check=False).returncode


def main() -> int:
    """Train, then write the model and its card."""
    if sys.argv[1:2] == ["--variant"] and len(sys.argv) > 2:
        return variant(Path(sys.argv[2]), sys.argv[3:])
    if sys.argv[1:] == ["--calibrate-only"]:
        card = calibrated_card(json.loads((MODEL_DIR / "model_card.json").read_text()))
        write_json(MODEL_DIR / "model_card.json", card)
        print(json_text({k: v for k, v in card.items() if k != "calibration"}), end="")
        return 0
    summary, model, minutes = train_job(CONFIG, MODEL_DIR / MODEL_NAME)
    v = summary["verification"]
    card = {
        "model": MODEL_NAME,
        "purpose": "small demo model: lets every command run without training; not for production use",
        "training_data": training_data(),
        "held_out": "10 LibriSpeech test-other speakers in samples/ (100 utterances, 4950 trials)",
        "eer": v["eer"], "eer_threshold": v["eer_threshold"], "sap": v["sap"], "san": v["san"],
        "min_dcf_0.01": v["min_dcf"]["p_target=0.01"]["min_dcf"],
        # best.keras of the triplet phase; step 0 is its softmax starting point, kept when no triplet step
        # improved the validation EER.
        "triplet_best_step": read_state(run_dir(CONFIG.output_dir / "checkpoints", "triplet"))["best_step"],
        "width": CONFIG.width, "softmax_steps": CONFIG.softmax_steps, "triplet_steps": CONFIG.triplet_steps,
        "batch_size": CONFIG.batch_size, "seed": CONFIG.seed, "softmax_head": CONFIG.softmax_head,
        **({"margin": HEAD.margin, "scale": HEAD.scale} if CONFIG.softmax_head == "aam" else {}),
        "augment": CONFIG.augment, "augment_copies": CONFIG.augment_copies, "spec_augment": CONFIG.spec_augment,
        "training_minutes_2_cpu_cores": round(minutes, 1),
        "training_machine": machine(),
        "model_identity": model_identity(model),
        "rebuild": "python scripts/train_default_model.py",
    }
    card = calibrated_card(card)
    write_json(MODEL_DIR / "model_card.json", card)
    print(json_text(card), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
