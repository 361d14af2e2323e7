#!/usr/bin/env bash
# Peer libraries for benchmarks/rate_limit.py, each in its own virtual environment.
#
# bespokelabs-curator and litellm pin versions that conflict with surge's own
# environment (curator: litellm==1.83.7, anthropic<0.85, rich<14, pandas==2.2.2, ...),
# so they live apart, under .peers/ (git-ignored) or the folder given as $1:
#
#     bash benchmarks/peers/setup.sh [PEERS_DIR]     # default: <repo>/.peers
#     python benchmarks/rate_limit.py --requests 400 [--peers-dir PEERS_DIR]
#
# rate_limit.py runs benchmarks/peers/{curator,litellm}_driver.py with these venvs'
# python and skips, with a note, any venv that is missing. Idempotent: an existing
# venv whose package imports is left as it is. Neither package asks for torch; should a
# later release, install `torch==2.13.0` (the CPU build on local disk) first.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
peers="${1:-$repo/.peers}"
python="${PYTHON:-python3}"
mkdir -p "$peers"

make_venv() {  # make_venv NAME IMPORT PIP-ARGS...
    local venv="$peers/$1" module="$2"
    shift 2
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import $module" 2>/dev/null; then
        echo "$venv: $module already installed"
        return
    fi
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet "$@" 2>&1 | grep -v "^WARNING: Location" || true
    "$venv/bin/python" -c "import $module" && echo "$venv: $module installed"
}

make_venv curator-venv bespokelabs.curator bespokelabs-curator
make_venv litellm-venv litellm litellm
