#!/usr/bin/env bash
# Wall time of `clusterkit doctor` on this machine: RUNS runs (default 5), each printed, then the median.
# Usage: bench/doctor_local.sh [extra doctor flags...]      Target: median under 5 s.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" - "$@" <<'PY'
import platform, statistics, subprocess, sys, time
runs = int(__import__("os").environ.get("RUNS", "5"))
argv = [sys.executable, "-m", "clusterkit", "doctor", "--json", *sys.argv[1:]]
times = []
for i in range(1, runs + 1):
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    times.append(time.perf_counter() - start)
    if proc.returncode not in (0, 1):  # 1 only means findings
        sys.exit(f"doctor failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    print(f"run {i}: {times[-1]:.2f} s")
print(f"clusterkit doctor on {platform.node()} ({platform.machine()}, {__import__('os').cpu_count()} CPUs): "
      f"median of {runs} runs = {statistics.median(times):.2f} s")
PY
