"""Which runner trains a phase: :class:`phases.Trainer` in one process, or this worker's part of a multi-worker
run (``--strategy multiworker``: :mod:`multiworker`, whose runner overrides Trainer's hooks). Above both, so that
neither imports the other back."""

from __future__ import annotations

from .config import TrainConfig
from .multiworker import train_worker
from .phases import Trainer


def train(config: TrainConfig) -> dict:
    """Run one training phase (see Trainer.train); with --strategy multiworker, this worker's part of it (see
    multiworker.train_worker: also the step resumed from and the global samples/s)."""
    if config.strategy == "multiworker":
        return train_worker(config)
    return Trainer(config).train()
