#!/usr/bin/env bash
# Wall time of `clusterkit doctor` on a GPU machine: the GPUs, then RUNS runs (default 5) and their
# median, by bench/doctor_local.sh. Issue 2 asks for this figure beside the one from this machine.
# scripts/gpu/device-run calls it on the device tool's machine, where python3 holds torch and the
# carried wheels sit in /tmp/site. Usage: bench/gpu_doctor.sh [extra doctor flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
if [ -d "$SITE" ]; then
  case ":${PYTHONPATH:-}:" in
    *":$SITE:"*) ;;
    *) export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" ;;
  esac
fi
nvidia-smi --query-gpu=index,name,driver_version,pci.bus_id,pcie.link.gen.current,pcie.link.width.current \
  --format=csv,noheader 2>&1 || echo "nvidia-smi: not available here"
exec bench/doctor_local.sh "$@"
