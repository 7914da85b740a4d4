"""Speaker encoders: audio in, embeddings out, behind one interface (:class:`Encoder`) and a registry of names.

``get_encoder("deep-speaker", model=PATH)`` is the Deep Speaker ResCNN (:class:`deepspeaker.Embedder`); the
pretrained encoders of the field (``resemblyzer``, ``wespeaker``, ``wavlm-sv``, ``wavlm-large-sv``) are
optional extras; ``mean-mfcc`` is the mean-MFCC baseline (:mod:`.mfcc`); other encoders plug in with
``register_encoder(name, factory)``. A module is imported only when its encoder is asked for, so listing the
encoders (or importing this package) loads no model framework; each encoder's declaration (:mod:`.options`: its
options and capabilities) is kept beside its factory, so the command line reads them without importing the
encoder either.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any, Callable

from ..errors import DeepSpeakerError, InternalError
from ..settings import check_choice
from .options import (DEEP_SPEAKER, MEAN_MFCC, NO_DECLARATION, RESEMBLYZER, WAVLM_LARGE_SV, WAVLM_SV, WESPEAKER,
                      EncoderDeclaration)

if TYPE_CHECKING:
    from .base import Encoder

DEFAULT_ENCODER = "deep-speaker"
# The interface, from .base when first used (PEP 562): it loads numpy and the audio readers, which listing the
# encoders (the command line's --help) does not need.
_BASE_NAMES = ("DEFAULT_WORKERS", "FILES_PER_CHUNK", "EmbedResult", "Encoder", "EncoderWrapper", "Weights")

__all__ = ["DEFAULT_ENCODER", "DEFAULT_WORKERS", "FILES_PER_CHUNK", "EmbedResult", "Encoder", "EncoderWrapper",
           "Weights", "available_encoders", "encoder_declaration", "get_encoder", "register_encoder"]


def __getattr__(name: str) -> Any:
    if name not in _BASE_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.base"), name)


class _Lazy:
    """A factory that imports ``module`` (of this package) and calls its ``cls`` only when the encoder is asked for;
    ``declaration`` is the class's own, readable without the import."""

    def __init__(self, module: str, cls: str, declaration: EncoderDeclaration) -> None:
        self.module, self.cls, self.declaration = module, cls, declaration

    def target(self) -> Callable[..., Encoder]:
        target = getattr(importlib.import_module(f"{__name__}.{self.module}"), self.cls)
        if target.declaration is not self.declaration:  # one declaration, named by the class and the registry
            raise InternalError(f"{self.module}.{self.cls} declares other options than its registry entry")
        return target

    def __call__(self, **options: Any) -> Encoder:
        return self.target()(**options)


_FACTORIES: dict[str, Callable[..., Encoder]] = {
    DEFAULT_ENCODER: _Lazy("deepspeaker", "Embedder", DEEP_SPEAKER),  # Keras loads only when it is asked for
    "resemblyzer": _Lazy("resemblyzer", "ResemblyzerEncoder", RESEMBLYZER),
    "wespeaker": _Lazy("wespeaker", "WeSpeakerEncoder", WESPEAKER),
    "wavlm-sv": _Lazy("wavlm", "WavLMEncoder", WAVLM_SV),
    "wavlm-large-sv": _Lazy("wavlm_large_sv", "WavLMLargeSVEncoder", WAVLM_LARGE_SV),
    "mean-mfcc": _Lazy("mfcc", "MeanMFCCEncoder", MEAN_MFCC),  # the baseline a trained encoder must beat
}
_DECLARATIONS: dict[str, EncoderDeclaration] = {name: f.declaration for name, f in _FACTORIES.items()}


def register_encoder(name: str, factory: Callable[..., Encoder], *, replace: bool = False,
                     declaration: EncoderDeclaration | None = None) -> None:
    """Make ``get_encoder(name, **options)`` return ``factory(**options)``; a taken name needs ``replace=True``.

    ``declaration``: the encoder's options and capabilities (default: the factory's ``declaration``, as an
    :class:`Encoder` class has, else none); the command line offers its options.
    """
    if name in _FACTORIES and not replace:
        raise ValueError(f"an encoder named {name!r} is already registered")
    _FACTORIES[name] = factory
    _DECLARATIONS[name] = declaration or getattr(factory, "declaration", NO_DECLARATION)


def available_encoders() -> list[str]:
    """The registered encoder names, in registration order (the default first)."""
    return list(_FACTORIES)


def encoder_declaration(name: str) -> EncoderDeclaration:
    """The declaration of the encoder registered as ``name`` (its module is not imported)."""
    return _DECLARATIONS[check_choice(name, available_encoders(), "encoder")]


def get_encoder(name: str = DEFAULT_ENCODER, **options: Any) -> Encoder:
    """The encoder registered as ``name`` built with ``options``; a one-line DeepSpeakerError for an unknown name
    or an option the encoder does not take."""
    factory = _FACTORIES[check_choice(name, available_encoders(), "encoder")]
    try:
        inspect.signature(factory.target() if isinstance(factory, _Lazy) else factory).bind(**options)
    except TypeError as exc:
        raise DeepSpeakerError(f"encoder {name!r} does not take the options given ({exc})") from None
    return factory(**options)
