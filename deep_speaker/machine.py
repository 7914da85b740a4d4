"""What a run ran on, the one home of that policy: the CPU kind and the versions of Python and the frameworks.

The main job's ``summary.json`` and the default model's card (``scripts/train_default_model.py``) record it. A job
is deterministic on one machine (``tests/test_determinism.py``), but the CPU's vector extensions choose the
kernels (oneDNN's AVX2, AVX-512, bfloat16 or AMX paths, Eigen's packet size), which may sum in other orders, and
over hundreds of training steps a last-bit difference moves the figures (README, the main job). So a figure is
reported with the CPU kind and the versions that made it. The module imports no framework.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# The /proc/cpuinfo flags that choose float kernels: AVX2 (with FMA) is the x86-64 baseline of TensorFlow's
# wheels, AVX-512 (avx512f) doubles the vector width, avx512_bf16 and AMX (amx_tile, amx_bf16) are the bfloat16
# paths of oneDNN (the mixed_bfloat16 precision).
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
# module -> the name printed; the versions recorded beside the CPU.
FRAMEWORKS = {"numpy": "numpy", "tensorflow": "TensorFlow", "keras": "Keras", "jax": "JAX"}


def cpu_kind(cpuinfo: str | None, processor: str) -> dict[str, Any]:
    """The CPU's model name and its :data:`VECTOR_FLAGS` from the text of /proc/cpuinfo; where there is none (or
    it names no model: macOS, Windows, some ARM kernels), ``processor`` (what ``platform.processor()`` says) and
    no flags. Pure: the caller reads the file."""
    lines = (cpuinfo or "").splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    return {"cpu": name or processor or "unknown CPU", "cpu_flags": [f for f in VECTOR_FLAGS if f in flags]}


@functools.lru_cache(maxsize=None)
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def module_version(module: str) -> str | None:
    """The installed version of an importable module (``tensorflow`` from tensorflow-cpu too), without importing
    it; None when it is not installed."""
    loaded = sys.modules.get(module)
    if loaded is not None and isinstance(getattr(loaded, "__version__", None), str):
        return loaded.__version__
    if importlib.util.find_spec(module) is None:
        return None
    for dist in _distributions().get(module, [module]):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def describe() -> dict[str, Any]:
    """This machine: CPU model, cores, vector flags, Python and framework versions, and the Keras backend."""
    text = CPUINFO.read_text(errors="replace") if CPUINFO.is_file() else None
    info = {**cpu_kind(text, platform.processor() or platform.machine()), "cores": os.cpu_count() or 1,
            "python": platform.python_version()}
    info.update({module: module_version(module) for module in FRAMEWORKS})
    info["keras_backend"] = None
    if info["keras"] is not None:
        import keras  # already imported wherever a job or a model runs

        info["keras_backend"] = keras.backend.backend()
    return info


def cpu_text(info: dict[str, Any]) -> str:
    """``2-core AMD EPYC (avx2, avx512f)``: the CPU part of :func:`describe`, for a card or a line."""
    return f"{info['cores']}-core {info['cpu']} ({', '.join(info['cpu_flags']) or 'no x86 vector flags'})"


def machine_text(info: dict[str, Any]) -> str:
    """One line of :func:`describe`: the CPU, then Python and each installed framework's version."""
    versions = [f"Python {info['python']}"]
    for module, label in FRAMEWORKS.items():
        if info.get(module):
            backend = info.get("keras_backend") if module == "keras" else None
            versions.append(f"{label} {info[module]}" + (f" ({backend} backend)" if backend else ""))
    return f"{cpu_text(info)}; {', '.join(versions)}"
