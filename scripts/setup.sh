#!/usr/bin/env bash
# One command from a fresh clone: make a virtual environment (.venv), install the CPU build of
# PyTorch and selfsup with its test extras, then run `selfsup demo` or the tests.
#
#   scripts/setup.sh demo     # set up, then selfsup demo
#   scripts/setup.sh test     # set up, then the test suite (what .ci/run does)
#
# PyTorch: `pip install torch==2.13.0` takes a local CPU wheel where pip is configured with one
# (find-links); elsewhere it would pull a CUDA build of several GB, so this script then asks for
# the CPU-only build from the index in $TORCH_INDEX_URL (set it to PyTorch's CPU wheel index,
# the "CPU" choice on PyTorch's install page). Packages already installed system-wide are reused
# (--system-site-packages), so a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages "$VENV"
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        "$PY" -m pip install --quiet "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
    elif "$PY" -m pip config list 2>/dev/null | grep -q "find-links"; then
        "$PY" -m pip install --quiet "torch==2.13.0"
    else
        echo "setup.sh: no local CPU wheel of torch is configured for pip; set TORCH_INDEX_URL" \
             "to PyTorch's CPU-only wheel index (a plain install would pull GBs of CUDA)" >&2
        exit 2
    fi
fi
"$PY" -m pip install --quiet -e ".[test]"
case "${1:-test}" in
    demo) shift || true; exec "$VENV/bin/selfsup" demo "$@" ;;
    test) shift || true; exec "$PY" -m pytest -q "$@" ;;
    *) echo "usage: scripts/setup.sh demo|test" >&2; exit 2 ;;
esac
