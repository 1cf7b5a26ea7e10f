#!/usr/bin/env bash
# Doctor, env push and the monitor (--commands monitor) over SSH and over Slurm on the same namespace nodes,
# interleaved: wall time and the head's CPU time at 1, 3 and 16 nodes, and the line extrapolated to 1,000
# (needs root; see bench/slurm_vs_ssh.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/slurm_vs_ssh.py "$@"
