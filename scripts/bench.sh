#!/usr/bin/env bash
# Set up and run the benchmark suite (needs root the first time, to install docker.io).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
install_once -e '.[dev,postgres]' --config-settings editable_mode=strict
exec .venv/bin/python -m bench.run "$@"
