#!/usr/bin/env bash
# Set up and run `idlewatch serve` against the local Docker engine; state goes to ./data/.
# Extra arguments go to `idlewatch serve` (see `idlewatch serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
install_once .
exec .venv/bin/idlewatch serve "$@"
