"""Fixtures for tests that need a real NVIDIA GPU (run them with scripts/gpu/device-run).

``real_gpu`` skips a test, saying why, unless NVML starts and counts at least one GPU and nvidia-smi is
on PATH. The other fixtures read the machine once per session: ``nvidia-smi -L`` and ``-q -x``, a live
``collect_nvidia`` pass framed by two ``-q -x`` reads, and one ``clusterkit doctor --json`` run.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clusterkit.node.collect.deadline import call_with_deadline
from clusterkit.node.collect.gpu import LiveWorld, collect_nvidia
from clusterkit.node.collect.node import CollectOptions
from clusterkit.node.collect.nvidia_smi import SmiQuery
from clusterkit.node.facts import NvidiaFacts, Unavailable
from tests.gpu.agreement import parse_xml

REPO = Path(__file__).resolve().parents[2]
NVML_PROBE_TIMEOUT_S = 15.0
SMI_TIMEOUT_S = 60.0
DOCTOR_TIMEOUT_S = 180.0


@functools.lru_cache(maxsize=1)
def why_no_gpu() -> str | None:
    """None where NVML answers with at least one GPU and nvidia-smi exists; else the reason."""

    def count_gpus() -> int:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()

    count = call_with_deadline(count_gpus, NVML_PROBE_TIMEOUT_S, "NVML")
    if isinstance(count, Unavailable):
        return f"no usable NVML here ({count.reason})"
    if count < 1:
        return "NVML counts no GPU"
    if shutil.which("nvidia-smi") is None:
        return "NVML works but nvidia-smi is not on PATH"
    return None


@pytest.fixture(scope="session")
def real_gpu() -> None:
    reason = why_no_gpu()
    if reason is not None:
        pytest.skip(f"needs a real NVIDIA GPU with NVML: {reason}")


def nvidia_smi(*args: str) -> str:
    result = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=SMI_TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"nvidia-smi {' '.join(args)} exited {result.returncode}: {result.stderr or result.stdout}")
    return result.stdout


@pytest.fixture(scope="session")
def smi_list(real_gpu: None) -> str:
    """``nvidia-smi -L``."""
    return nvidia_smi("-L")


@pytest.fixture(scope="session")
def smi_xml_text(real_gpu: None) -> str:
    """``nvidia-smi -q -x``, raw."""
    return nvidia_smi("-q", "-x")


@dataclass
class LiveReading:
    """A live ``collect_nvidia`` pass and nvidia-smi's XML read just before and just after it."""

    before: SmiQuery
    facts: NvidiaFacts
    after: SmiQuery


@pytest.fixture(scope="session")
def live(real_gpu: None) -> LiveReading:
    before = parse_xml(nvidia_smi("-q", "-x"))
    facts = collect_nvidia(CollectOptions(), LiveWorld())
    after = parse_xml(nvidia_smi("-q", "-x"))
    return LiveReading(before, facts, after)


@dataclass
class DoctorRun:
    """``clusterkit doctor --json`` on this machine, and nvidia-smi's XML read right after it."""

    exit_code: int
    document: dict[str, Any]
    xml_text: str


@pytest.fixture(scope="session")
def doctor(real_gpu: None) -> DoctorRun:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("CLUSTERKIT_NVML_REPLAY", None)
    result = subprocess.run([sys.executable, "-m", "clusterkit", "doctor", "--json"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=DOCTOR_TIMEOUT_S)
    if result.returncode not in (0, 1):
        pytest.fail(f"clusterkit doctor --json exited {result.returncode}: {result.stderr[-2000:]}")
    return DoctorRun(result.returncode, json.loads(result.stdout), nvidia_smi("-q", "-x"))
