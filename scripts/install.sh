#!/usr/bin/env bash
# Create .venv (once) and install the pinned dependencies and deep-speaker itself into it (offline-safe re-runs).
# --extras also installs the optional extras whose tests run offline (export, the pretrained encoders): CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.deep-speaker-installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
    touch "$stamp"
fi
extras_stamp=.venv/.deep-speaker-extras-installed
if [ "${1:-}" = "--extras" ] && { [ ! -f "$extras_stamp" ] || [ requirements-extras.txt -nt "$extras_stamp" ] \
        || [ requirements-nodeps.txt -nt "$extras_stamp" ]; }; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-extras.txt
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
    touch "$extras_stamp"
fi
