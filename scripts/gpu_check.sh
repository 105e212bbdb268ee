#!/usr/bin/env bash
# The prepared GPU check (see scripts/gpu_check.py): installs what is missing from a wheel folder
# (no network), then runs the check; results land in $OUT/results.json (default gpu-check/),
# rewritten after every phase, so a run cut short keeps what it measured.
#
#   scripts/gpu_check.sh                 # on an NVIDIA GPU machine, under 8 minutes
#   scripts/gpu_check.sh --dry-run       # the same path on a CPU, tiny model, few steps
#
# Environment: PYTHON (default python3), WHEELS (default .whl; how to fill it:
# scripts/gpu_check_wheels.txt), OUT (default gpu-check). Extra arguments go to gpu_check.py.
# Exit status: 0 every phase ok or skipped; 1 a phase failed; 2 something to install is missing
# (the message names it); 130/143 interrupted (SIGINT: the time limit below; SIGTERM).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
OUT="${OUT:-gpu-check}"

if [ -d "$WHEELS" ]; then
    echo "installing from $WHEELS (no index, no deps)"
    requirements="${TMPDIR:-/tmp}/textinv-wheels.txt"
    grep -v '^#' scripts/gpu_check_wheels.txt | grep -v '^$' > "$requirements"
    # protobuf as new as the gRPC stubs need (read from the stubs), so an older one is upgraded.
    "$PYTHON" scripts/gpu_check_preflight.py --requirement >> "$requirements"
    if ! "$PYTHON" -m pip install --no-index --no-deps --find-links "$WHEELS" -r "$requirements"
    then
        echo "warning: pip could not install from $WHEELS (above); the checks below say what" \
             "is missing" >&2
    fi
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
# timeout: a hung phase must not outlive the 8 minutes (the driver's own budget is 7.5). SIGINT
# first, which the driver records against the running phase; SIGKILL 20 s later if it is stuck
# in native code (the results file then still says which phase was running).
exec timeout --signal=INT --kill-after=20 470 "$PYTHON" scripts/gpu_check.py --out "$OUT" "$@"
