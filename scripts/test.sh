#!/usr/bin/env bash
# Set up and run the whole test suite: ruff, mypy --strict, unit and integration tests.
# The integration tests start their own private Docker engine (tests/conftest.py) and
# never touch the machine's own Docker. Installing dockerd needs root (or run:
# sudo apt-get install -y docker.io busybox-static). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
install_once -e '.[dev,postgres]' --config-settings editable_mode=strict

# Debian packages the suite needs: a Docker engine (run privately by the tests), a static
# busybox (the test image), Chromium (the dashboard's browser test, driven by Playwright),
# the PostgreSQL server binaries (the tests run a private cluster: tests/private_postgres.py),
# and nginx and Caddy (the wake tests put them in front of idlewatch).
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v chromium >/dev/null || missing+=(chromium)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# the wake tests run real proxies from config/ on loopback (tests/integration/proxies.py)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v caddy >/dev/null || missing+=(caddy)
# the event stream is tested as a user reads it: curl -N
command -v curl >/dev/null || missing+=(curl)
# the core scenarios run on Podman's Docker-compatible API too (tests/private_podman.py)
command -v podman >/dev/null || missing+=(podman)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "the tests need: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

echo "== ruff"
.venv/bin/ruff check watcher api tests bench
echo "== mypy --strict"
# the package as installed (a link tree: the editable install's strict mode, above), whose
# import name is idlewatch; the folders watcher/ and api/ are not import names
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest "$@"
