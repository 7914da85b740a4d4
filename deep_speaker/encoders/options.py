"""What an encoder declares about itself: its options (name, type, default, help, check) and its capabilities.

A declaration is plain data in a module that imports nothing heavy: the registry keeps each encoder's declaration
beside its factory, so the command line builds every encoder's options (``--help``, a usage error) without
importing the encoder's framework. The built-in encoders' declarations are here; each encoder class names its
own as ``declaration`` (the registry checks, when the class is imported, that it is the same object).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..model.constants import PRECISIONS
from .constants import DEFAULT_BATCH_SIZE, DEFAULT_HOP_SECONDS, DEFAULT_WINDOW_SECONDS, POOLINGS


@dataclass(frozen=True)
class EncoderOption:
    """One keyword of an encoder's factory, as a command-line option ``flag``.

    ``type`` converts the option's text (``float`` refuses nan and inf on the command line); ``default`` is the
    factory's own, for the help text only (an option not given is not passed, so the factory's default applies);
    ``check`` answers why a value is refused (None: accepted), before any model loads; ``several``: whether the
    option is given to this encoder when several encoders are chosen (a weights path names one encoder's).
    """

    name: str
    flag: str
    type: Callable[[str], Any]
    help: str
    default: Any = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    several: bool = True


@dataclass(frozen=True)
class EncoderDeclaration:
    """The options an encoder takes and what it can do besides embedding audio.

    ``embeds_cached_features``: it embeds Deep Speaker's cached filterbank features (``Encoder.embed_features_batch``),
    so a feature cache or store can be evaluated without the audio.
    """

    options: tuple[EncoderOption, ...] = ()
    embeds_cached_features: bool = False

    def takes(self, name: str) -> bool:
        """Whether the encoder's factory takes the keyword ``name`` (``model``) as an option."""
        return any(o.name == name for o in self.options)


NO_DECLARATION = EncoderDeclaration()  # an encoder that takes no option and embeds audio only


def positive(value: float) -> str | None:
    """A check: the value must be above zero."""
    return None if value > 0 else "must be positive"


def weights_option(help_text: str, several: bool = False) -> EncoderOption:
    """``--model PATH``: the weights an encoder loads."""
    return EncoderOption("model", "--model", str, help_text, metavar="PATH", several=several)


DEEP_SPEAKER = EncoderDeclaration(options=(
    weights_option(".keras, original .h5, or a training run folder (default: the newest triplet checkpoint under "
                   "checkpoints/, else the packaged demo model)", several=True),
    EncoderOption("pooling", "--pooling", str, "windows: the mean of overlapping windows' embeddings; utterance: "
                  "one pass over the whole utterance (default: the model card's, else windows; the packaged model's "
                  "is utterance)", choices=POOLINGS),
    EncoderOption("window_seconds", "--window", float, "--pooling windows: window of long utterances, averaged (the "
                  "training crop)", DEFAULT_WINDOW_SECONDS, "SECONDS", check=positive),
    EncoderOption("hop_seconds", "--hop", float, "--pooling windows: step between windows", DEFAULT_HOP_SECONDS,
                  "SECONDS", check=positive),
    EncoderOption("batch_size", "--batch-size", int, "windows (1.6 s of frames each) per forward pass",
                  DEFAULT_BATCH_SIZE, "N",
                  check=lambda n: None if n >= 1 else "must be at least 1"),
    EncoderOption("precision", "--precision", str, "compute precision (mixed_bfloat16 is faster on recent "
                  "CPUs/GPUs)", "float32", choices=PRECISIONS),
), embeds_cached_features=True)
RESEMBLYZER = EncoderDeclaration(options=(
    weights_option("a VoiceEncoder .pt state file (default: the one inside the resemblyzer package)"),))
WESPEAKER = EncoderDeclaration(options=(
    weights_option("a WeSpeaker .onnx file or a folder holding one (default: the model in the user cache folder)"),))
WAVLM_SV = EncoderDeclaration(options=(
    weights_option("a WavLMForXVector folder, or a model id in the local Hugging Face cache (default "
                   "microsoft/wavlm-base-plus-sv)"),))
WAVLM_LARGE_SV = EncoderDeclaration(options=(
    weights_option("UniSpeech's wavlm_large_finetune.pth or its folder (default: the one in the user cache "
                   "folder)"),))
MEAN_MFCC = EncoderDeclaration()  # no option: python_speech_features' defaults are the baseline
