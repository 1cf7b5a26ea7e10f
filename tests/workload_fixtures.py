"""Real logs of real failing workload runs (``tests/fixtures/workload-logs``) and what each must be diagnosed as.

Each fixture is the ``--log`` record ``clusterkit bench`` wrote on the namespace cluster's head node
after a fault was planted (``tests/cluster/test_workload_faults.py``, which also rewrites them when
``CLUSTERKIT_WRITE_FIXTURES=1``); ``produced_by`` in each file says how.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterkit.workloads.run import RunOutcome
from clusterkit.workloads.session import outcome_from_record

FIXTURES = Path(__file__).parent / "fixtures" / "workload-logs"


@dataclass(frozen=True)
class Expected:
    """The finding a fixture's diagnosis must lead with: its check id and the host it names."""

    check: str
    host: str
    #: Words the finding's message must contain.
    says: tuple[str, ...] = ()


#: fixture name -> what the diagnosis must say first.
EXPECTED: dict[str, Expected] = {
    "launcher-pdsh-missing": Expected("workload-launcher-missing", "cluster", ("pdsh launcher is not installed",)),
    "deepspeed-env-blank-line": Expected("workload-deepspeed-env-line", "cluster", (".deepspeed_env",)),
    "ssh-key-refused": Expected("workload-ssh-denied", "node3", ("refused (publickey",)),
    "ssh-host-key-unknown": Expected("workload-ssh-host-key-unknown", "node2", ("known_hosts",)),
    "master-port-busy": Expected("workload-master-port-busy", "node1", ("another process holds it",)),
    "rendezvous-unreachable": Expected("workload-rendezvous-timeout", "", ("could not reach the master",)),
    "interpreter-missing": Expected("workload-interpreter-missing", "node3", ("/opt/ckenv/bin/python",)),
    # node2 or node3, whichever printed first.
    "launch-dir-missing": Expected("workload-launch-dir-missing", "", ("/tmp/only-on-node1 does not exist",)),
    "module-missing": Expected("workload-module-missing", "node3", ("deepspeed",)),
    "shared-library-missing": Expected("workload-shared-library-missing", "node3", ("libc10.so",)),
    "ninja-missing": Expected("workload-ninja-missing", "node2", ("ninja is not on the PATH",)),
    "compiler-missing": Expected("workload-compiler-missing", "node2", ("c++",)),
    "torch-without-cuda": Expected("workload-torch-without-cuda", "", ("CPU-only torch",)),
    "gloo-interface": Expected("workload-gloo-interface", "", ("ib0",)),
    "cpu-oom": Expected("workload-cpu-oom", "node3", ("could not allocate",)),
    "rank-sigkill": Expected("workload-rank-killed", "node2", ("SIGKILL",)),
    "frozen-node": Expected("workload-ranks-silent", "node3", ("printed nothing",)),
}

#: Rules with no real log yet: they need a GPU machine (``scripts/gpu/workloads-run`` produces them).
AWAITING_GPU = {
    "cuda-library-missing": "a CUDA library missing on a GPU node",
    "cuda-driver-old": "a driver older than torch's CUDA",
    "no-nvidia-driver": "a GPU node without its driver",
    "duplicate-gpu": "more ranks than GPUs on a node",
    "cuda-error": "a CUDA runtime error",
    "nccl-system-error": "NCCL on an interface that does not exist",
    "nccl-timeout": "NCCL's watchdog",
    "gpu-oom": "a GPU out of memory",
    "cuda-home-missing": "a CUDA op build without CUDA_HOME",
    "nvcc-torch-mismatch": "nvcc of another CUDA than torch's",
}


def load(name: str) -> tuple[RunOutcome, dict[int, str], str, dict[str, Any]]:
    """(outcome, rank -> host, workload, the record) of a fixture's failing run (its last run)."""
    doc = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    record = doc["runs"][-1]
    outcome, rank_hosts = outcome_from_record(record)
    return outcome, rank_hosts, str(record["workload"]), doc


def save(name: str, log_text: str, produced_by: str) -> Path:
    """Keep a ``--log`` document as fixture ``name``, with the note of how it was produced."""
    doc = json.loads(log_text)
    doc["produced_by"] = produced_by
    path = FIXTURES / f"{name}.json"
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path
