#!/usr/bin/env bash
# What `clusterkit monitor` costs: agent CPU per node at 1 s, the TUI's CPU with 64 replayed nodes at 1 s,
# and the sample-to-screen latency. Prints figures, asserts nothing. Extra arguments go to the Python
# part (e.g. `bench/monitor_overhead.sh --seconds 60 --nodes 64`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" bench/monitor_overhead.py "$@"
