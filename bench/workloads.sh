#!/usr/bin/env bash
# Workload figures: the collective bench against a bare torch.distributed loop (3 namespace nodes,
# needs root) and the ZeRO suite's wall time split into JIT build, start-up and training (this
# machine). See bench/workloads.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/workloads.py "$@"
