#!/usr/bin/env bash
# The prepared GPU check (see scripts/gpu_check.py): installs what is missing from a wheel folder
# (no network), then runs the check; results land in $OUT/results.json (default gpu-check/),
# rewritten after every phase, so a run cut short keeps what it measured.
#
#   scripts/gpu_check.sh                 # on an NVIDIA GPU machine, under 8 minutes
#   scripts/gpu_check.sh --dry-run       # the same path on a CPU, tiny model, few steps
#
# Environment: PYTHON (default python3), WHEELS (default .whl; how to fill it:
# scripts/gpu_check_wheels.txt), WHEEL_LIST (default scripts/gpu_check_wheels.txt), OUT
# (default gpu-check), TIME_LIMIT_S (default 470). Extra arguments go to gpu_check.py.
# Exit status: 0 every phase ok or skipped; 1 a phase failed; 2 something to install is missing
# (the message names it); 130 the time limit (its SIGINT; the driver records the phase it cut
# short); 143 SIGTERM; 137 SIGKILL, 20 s after the time limit, when the driver did not stop.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
WHEEL_LIST="${WHEEL_LIST:-scripts/gpu_check_wheels.txt}"
OUT="${OUT:-gpu-check}"
TIME_LIMIT_S="${TIME_LIMIT_S:-470}"
not_installed=0

# One requirement at a time: a wheel missing from the folder must not keep the others out
# (`pip install -r` installs nothing when one requirement cannot be met).
install() {
    echo "installing $1"
    if ! "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "$1"; then
        echo "warning: could not install '$1' from $WHEELS (above); going on" >&2
        not_installed=$((not_installed + 1))
    fi
}

if [ -d "$WHEELS" ]; then
    echo "installing from $WHEELS (no index, no deps)"
    # First the pins the stubs need, read from them (protobuf, grpcio and its companions), so
    # that older ones on the machine are upgraded; then the list.
    while IFS= read -r requirement; do
        case "$requirement" in '' | '#'*) continue ;; esac
        install "$requirement"
    done < <("$PYTHON" scripts/gpu_check_preflight.py --requirement; cat "$WHEEL_LIST")
    if ls "$WHEELS"/textinv-[0-9]*.whl >/dev/null 2>&1; then
        install textinv-client
        install textinv
    fi
    if [ "$not_installed" -gt 0 ]; then
        echo "warning: $not_installed requirement(s) not installed; the checks below say what" \
             "is missing" >&2
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
# first, which the driver records against the running phase before it exits 130; SIGKILL 20 s
# later if it is stuck in native code (the results file then still says which phase was
# running). --preserve-status: the driver's own status comes back, not timeout's 124.
exec timeout --preserve-status --signal=INT --kill-after=20 "$TIME_LIMIT_S" \
    "$PYTHON" scripts/gpu_check.py --out "$OUT" "$@"
