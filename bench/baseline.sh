#!/usr/bin/env bash
# Saved runs: the comparison's time and memory at 64 nodes (this machine) and the noise band of the bench
# figures on the 3-node namespace cluster (needs root). See bench/baseline.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/baseline.py "$@"
