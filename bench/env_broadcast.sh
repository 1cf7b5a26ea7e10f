#!/usr/bin/env bash
# Env broadcast to 1, 2, 4 and 8 namespace nodes vs one transfer over one link; pack/unpack vs
# conda-pack's defaults (needs root; see bench/env_broadcast.py). Extra arguments go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/env_broadcast.py "$@"
