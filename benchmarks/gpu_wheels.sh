#!/usr/bin/env bash
# Run HERE (a machine with pip access) before `benchmarks/gpu_suite.sh` runs on a GPU machine that cannot reach a
# package registry. That machine's image has torch and the Hugging Face stack, but its transformers may be older than
# the floor in pyproject.toml; this downloads the transformers wheel installed here (pure Python) into .whl/, which
# git ignores through .git/info/exclude and the device tool carries (`carry: [".whl"]`). The suite installs it.
#     bash benchmarks/gpu_wheels.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
version=$("$python" -c 'import transformers; print(transformers.__version__)')
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
"$python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d .whl \
    "transformers==$version"
ls -l .whl
