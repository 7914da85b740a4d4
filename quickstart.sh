#!/usr/bin/env bash
# The main job on the bundled speech (samples/librispeech): install into .venv, then `deep-speaker run`.
# Extra arguments go to `deep-speaker run` (see `.venv/bin/deep-speaker run --help`).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh
exec .venv/bin/deep-speaker run "$@"
