# Sourced by serve.sh, demo.sh, test.sh and bench.sh: make ./.venv with Python >= 3.11,
# installing venv support from Debian/Ubuntu packages when it is missing and we are root,
# and define install_once. pip stays quiet (no version nag, no root warning): the first
# thing a user reads is idlewatch's own line.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null; then
    echo "idlewatch needs Python >= 3.11: apt-get install -y python3 python3-venv" >&2
    exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "idlewatch needs Python >= 3.11 (found $("$PY" --version)); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "idlewatch: setting up ./.venv (the first run installs the dependencies: about a minute)" >&2
    if ! "$PY" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
            "$PY" -m venv .venv
        else
            echo "cannot create a virtualenv: sudo apt-get install -y python3-venv" >&2
            exit 1
        fi
    fi
    .venv/bin/python -m pip install -q --upgrade pip
fi

# install_once ARGS...: `pip install ARGS` unless the very same install was done before
# from the same project files (a stamp in .venv: the arguments, and each file's path and
# content under pyproject.toml, watcher/ and api/). A restart then starts from the venv as
# it is: in about a second, and with no package index at all.
install_once() {
    local stamp=.venv/.idlewatch-install-$(printf '%s' "$*" | sha256sum | cut -c1-16)
    local now
    now=$( { printf '%s\n' "$*"; find pyproject.toml watcher api -type f \
        ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum; } | sha256sum)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$now" ]; then
        return 0
    fi
    .venv/bin/python -m pip install -q "$@"
    printf '%s\n' "$now" > "$stamp"
}
