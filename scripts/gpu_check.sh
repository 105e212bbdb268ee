#!/usr/bin/env bash
# The prepared GPU check (see scripts/gpu_check.py): installs what is missing from a wheel folder
# (no network), then runs the check; results land in $OUT/results.json (default gpu-check/).
#
#   scripts/gpu_check.sh                 # on an NVIDIA GPU machine, under 8 minutes
#   scripts/gpu_check.sh --dry-run       # the same path on a CPU, tiny model, few steps
#
# Environment: PYTHON (default python3), WHEELS (default .whl; how to fill it:
# scripts/gpu_check_wheels.txt), OUT (default gpu-check). Extra arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
OUT="${OUT:-gpu-check}"

if [ -d "$WHEELS" ]; then
    echo "installing from $WHEELS (no index, no deps)"
    grep -v '^#' scripts/gpu_check_wheels.txt | grep -v '^$' > "${TMPDIR:-/tmp}/textinv-wheels.txt"
    "$PYTHON" -m pip install --no-index --no-deps --find-links "$WHEELS" \
        -r "${TMPDIR:-/tmp}/textinv-wheels.txt"
    if ls "$WHEELS"/textinv-[0-9]*.whl >/dev/null 2>&1; then
        "$PYTHON" -m pip install --no-index --no-deps --find-links "$WHEELS" textinv-client textinv
    fi
fi
if ! "$PYTHON" -c "import diffusers, grpc, torch" 2>/dev/null; then
    echo "error: diffusers, grpcio or torch is missing and $WHEELS has no wheels for it;" \
         "see scripts/gpu_check_wheels.txt" >&2
    exit 2
fi

# This checkout's packages come first on the path, so the check runs this checkout's code: the
# core at the root, and the package inside each project folder (README: layout).
export PYTHONPATH="$PWD:$PWD/export:$PWD/server:$PWD/client${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
# timeout: a hung phase must not outlive the 8 minutes (the driver's own budget is 7.5).
exec timeout --signal=INT 470 "$PYTHON" scripts/gpu_check.py --out "$OUT" "$@"
