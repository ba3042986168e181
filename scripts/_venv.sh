# Sourced by serve.sh and test.sh: make ./.venv with Python >= 3.11, installing venv support
# from Debian/Ubuntu packages when it is missing and we are root. pip stays quiet (no
# version nag, no root warning): the first thing a user reads is idlewatch's own line.
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
fi
.venv/bin/python -m pip install -q --upgrade pip
