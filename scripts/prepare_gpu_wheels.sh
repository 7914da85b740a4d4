#!/usr/bin/env bash
# Build the wheel folder benchmarks/gpu_check.sh installs from on a GPU host without internet (JAX with CUDA,
# numpy, scipy, h5py, scikit-learn, no TensorFlow, no Keras): Keras and the audio stack with what they need.
#
#   scripts/prepare_gpu_wheels.sh [WHEEL_DIR]          (default: wheels/, beside this checkout; not committed)
#
# PYTHON_VERSION=3.12 downloads for another interpreter than this one (binary wheels only, manylinux x86-64).
# The pins are requirements.txt's, so the GPU host runs the versions CI tests. Wheels of what such a host already
# has (numpy, scipy, h5py, scikit-learn and theirs, JAX) are left out; KEEP_ALL=1 keeps them.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-wheels}
python=${PYTHON:-python3}
mkdir -p "$dest"
pins=$(grep -E '^(keras|librosa|soundfile|soxr|python_speech_features|filelock|tqdm)==' requirements.txt)
target=()
if [ -n "${PYTHON_VERSION:-}" ]; then
    target=(--python-version "$PYTHON_VERSION" --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64
            --implementation cp)
fi
# python_speech_features 0.6 exists only as a source archive: build its (pure-Python) wheel here, then
# download everything else as binary wheels, so the host never compiles anything.
psf=$(grep -E '^python_speech_features==' <<<"$pins")
"$python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$dest" "$psf"
grep -v -E '^python_speech_features==' <<<"$pins" >"$dest/.requirements"
"$python" -m pip download -q --disable-pip-version-check --only-binary=:all: "${target[@]}" -d "$dest" \
    -r "$dest/.requirements"
rm -f "$dest/.requirements"
if [ -z "${KEEP_ALL:-}" ]; then
    for name in numpy scipy h5py scikit_learn joblib threadpoolctl ml_dtypes jax jaxlib opt_einsum; do
        rm -f "$dest/$name"-*.whl
    done
fi
echo "$(ls "$dest" | wc -l) wheels, $(du -sh "$dest" | cut -f1), in $dest"
