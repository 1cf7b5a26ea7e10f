#!/usr/bin/env bash
# Doctor wall time on 1, 4 and 8 namespace nodes, as a table (needs root; see bench/doctor_fanout.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/doctor_fanout.py "$@"
