#!/usr/bin/env bash
# Set up and run idlewatch against the local Docker engine, storing its state in ./data/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q .
exec .venv/bin/idlewatch serve "$@"
