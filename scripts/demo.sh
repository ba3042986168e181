#!/usr/bin/env bash
# Set up and run the demo: a private Docker engine, sample agents, the dashboard. Ctrl-C ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
install_once .
exec .venv/bin/idlewatch demo "$@"
