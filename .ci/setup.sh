# Sourced by .ci/run and .ci/demo: choose a Python environment, install the pinned torch and the requirements.
# Sets PY to that environment's python and changes to the repository root. Non-interactive (CI=true, no stdin).
#
# An active virtualenv or conda environment is used as it is. Otherwise .venv is created with
# --system-site-packages: a machine that already has the pinned torch reuses it instead of downloading
# it again, and a system Python marked "externally managed" (PEP 668) is never written to.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

if [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" ]]; then
    PY=python
else
    BASE_PY=$(command -v python3 || command -v python || true)
    if [[ -z "$BASE_PY" ]]; then
        echo "error: no python3 on PATH; install Python 3.10 or newer" >&2
        exit 1
    fi
    if [[ ! -x .venv/bin/python ]]; then
        "$BASE_PY" -m venv --system-site-packages .venv </dev/null || {
            echo "error: could not create .venv with $BASE_PY (on Debian/Ubuntu: apt-get install python3-venv)" >&2
            exit 1
        }
    fi
    PY=.venv/bin/python
fi

echo "Python environment: $("$PY" -c 'import sys; print(sys.prefix)')"
"$PY" -m pip install "torch==2.14.1" "torchvision==0.29.1" </dev/null
"$PY" -m pip install --quiet -r requirements.txt </dev/null
