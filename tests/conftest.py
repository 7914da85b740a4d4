"""Shared fixtures: the real speech of ../shared/data (as CI has it beside the clone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LIBRI_MINI = SHARED_DATA / "librispeech-mini"
REFERENCE_CHECKPOINT = SHARED_DATA / "reference-checkpoint"


@pytest.fixture(scope="session")
def libri_mini() -> Path:
    """librispeech-mini: test-other (10 speakers x 10) and train-clean-100 (251 x 1)."""
    if not LIBRI_MINI.is_dir():
        pytest.fail(f"real speech data missing: {LIBRI_MINI}")
    return LIBRI_MINI


@pytest.fixture(scope="session")
def reference_checkpoint() -> Path:
    if not REFERENCE_CHECKPOINT.is_dir():
        pytest.fail(f"reference checkpoint missing: {REFERENCE_CHECKPOINT}")
    return REFERENCE_CHECKPOINT
