#!/usr/bin/env bash
# Set up and run the demo: a private Docker engine, sample agents, the dashboard. Ctrl-C ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
.venv/bin/python -m pip install -q .
exec .venv/bin/idlewatch demo "$@"
