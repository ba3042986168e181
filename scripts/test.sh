#!/usr/bin/env bash
# Set up and run the whole test suite: ruff, mypy --strict, unit and integration tests.
# The integration tests start their own private Docker engine (tests/conftest.py) and
# never touch the machine's own Docker. Installing dockerd needs root (or run:
# sudo apt-get install -y docker.io busybox-static). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
.venv/bin/python -m pip install -q -e '.[dev,postgres]'

if ! command -v dockerd >/dev/null || [ ! -x /bin/busybox ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io busybox-static
    else
        echo "the tests need dockerd and a static busybox: sudo apt-get install -y docker.io busybox-static" >&2
        exit 1
    fi
fi

echo "== ruff"
.venv/bin/ruff check watcher api tests
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest "$@"
