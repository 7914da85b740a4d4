#!/usr/bin/env bash
# The whole test suite on a fresh clone: create or reuse .venv, install the pinned requirements and the offline
# extras the tests need when they are missing (scripts/install.sh --extras is a no-op once done), then run pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/test_store.py -k update`); CI runs it bare.
# The suite reads its speech from samples/; the original code's reference checkpoint from
# $DEEP_SPEAKER_REFERENCE_CHECKPOINT or ../shared/data/reference-checkpoint (else those checks are one skip line).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --extras
if [ $# -eq 0 ]; then
    set -- tests
fi
# One worker process per core (at most 4: each holds a model framework), whole files per worker so that a module's
# fixtures (trained models, built caches) are made once; the slow files go first (tests/conftest.py), in that order:
# xdist would otherwise hand out the files with the most tests first, which left the 85 s README test (one test) to
# start last and end the run alone for 80 s while the other worker idled.
exec .venv/bin/python -m pytest -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder "$@"
