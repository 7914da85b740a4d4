"""Training the ResCNN: configuration (config), devices (strategy), Keras callbacks (callbacks), batches
(batching) and the original's three phases (phases)."""

from .config import DEFAULT_STEPS, MONITORS, OPTIMIZERS, PHASES, STRATEGIES, TrainConfig, phase_defaults
from .phases import Trainer, train

__all__ = ["DEFAULT_STEPS", "MONITORS", "OPTIMIZERS", "PHASES", "STRATEGIES", "TrainConfig", "Trainer",
           "phase_defaults", "train"]
