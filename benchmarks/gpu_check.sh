#!/usr/bin/env bash
# GPU check for a host with JAX (CUDA), numpy, scipy, h5py and scikit-learn but no TensorFlow, no Keras and no
# internet: installs the project's few missing packages from a wheel folder built beforehand
# (scripts/prepare_gpu_wheels.sh, then copy it over), then trains on the JAX backend (benchmarks/gpu_check.py).
#
#   WHEELS=wheels PYTHON=python3 benchmarks/gpu_check.sh [gpu_check.py options, e.g. --steps 300]
#
# Runs from this checkout (PYTHONPATH), so the project itself needs no install. Packages already importable
# are not reinstalled; the pins are requirements.txt's.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
wheels=${WHEELS:-wheels}
modules="keras soundfile soxr librosa python_speech_features filelock tqdm"
missing=$("$python" -c "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" $modules)
if [ -n "$missing" ]; then
    if [ ! -d "$wheels" ]; then
        echo "gpu_check: error: $missing not installed and no wheel folder $wheels (build one with scripts/prepare_gpu_wheels.sh where there is internet, copy it here, set WHEELS=DIR)" >&2
        exit 2
    fi
    pins=$(grep -E '^(keras|librosa|soundfile|soxr|python_speech_features|filelock|tqdm)==' requirements.txt)
    # shellcheck disable=SC2086  # one argument per pin
    "$python" -m pip install -q --disable-pip-version-check --no-index --find-links "$wheels" $pins
fi
export KERAS_BACKEND=jax PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" benchmarks/gpu_check.py "$@"
