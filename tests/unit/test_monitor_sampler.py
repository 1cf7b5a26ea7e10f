"""The node-side sampler: ranks from /proc environments, CPU/RAM/net rates, NVML under deadlines."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clusterkit.node.collect.nvml_replay import ReplayNvml
from clusterkit.node.collect.sampler import (
    SAMPLE_MARKER,
    SAMPLE_PROTOCOL,
    ChannelWatch,
    GpuSampler,
    ProcReader,
    Sampler,
)
from tests.monitor.synthetic import READINGS, FakeNode, Scenario, update_readings, write_proc

REPO = Path(__file__).resolve().parents[2]


def fake_node(tmp_path: Path, number: int = 1) -> FakeNode:
    readings = json.loads(READINGS.read_text())
    return FakeNode(f"n{number}", number, tmp_path, copy.deepcopy(readings))


def test_ranks_come_from_the_environment_and_workers_with_their_parents_rank_are_not_ranks(tmp_path: Path) -> None:
    node = fake_node(tmp_path)
    scenario = Scenario(nodes=2, gpus=2)
    write_proc(node, scenario, 0)
    worker = tmp_path / "4100"  # a dataloader worker forked by rank 0: same environment, parent 4000
    worker.mkdir()
    (worker / "environ").write_bytes((tmp_path / "4000" / "environ").read_bytes())
    (worker / "cmdline").write_bytes(b"python\0")
    (worker / "stat").write_text((tmp_path / "4000" / "stat").read_text().replace("4000 (python) R 3999",
                                                                                  "4100 (python) S 4000"))
    other = tmp_path / "77"  # not a rank: no RANK/LOCAL_RANK
    other.mkdir()
    (other / "environ").write_bytes(b"PATH=/usr/bin\0")
    (other / "stat").write_text((tmp_path / "4000" / "stat").read_text().replace("4000 (python)", "77 (sshd)"))
    reader = ProcReader(str(tmp_path))
    first = reader.ranks(100.0)
    assert [(r["pid"], r["rank"], r["local"], r["world"], r["job"]) for r in first] == [
        (4000, 0, 0, 4, "10.0.0.1:29500"), (4001, 1, 1, 4, "10.0.0.1:29500")]
    assert first[0]["cmd"] == "python -u train.py" and first[0]["cpu"] is None
    write_proc(node, scenario, 1)
    assert [r["cpu"] for r in reader.ranks(101.0)] == [98.0, 98.0]


def test_cpu_memory_and_network_are_rates_since_the_last_sample(tmp_path: Path) -> None:
    node = fake_node(tmp_path)
    write_proc(node, Scenario(gpus=0), 0)
    reader = ProcReader(str(tmp_path))
    assert reader.cpu_percent() == (None, 64)
    assert reader.net_rate(10.0) is None
    write_proc(node, Scenario(gpus=0), 1)
    assert reader.cpu_percent() == (85.0, 64)
    assert reader.net_rate(11.0) == [3_200_000_000, 3_100_000_000]  # loopback left out
    assert reader.memory() == [2048 * 1024**3, 1190 * 1024**3]


def test_a_sample_from_replayed_readings_has_every_gpu_and_maps_ranks_to_their_gpu(tmp_path: Path) -> None:
    node = fake_node(tmp_path)
    scenario = Scenario(nodes=1, gpus=8)
    write_proc(node, scenario, 0)
    update_readings(node, scenario, 0)
    sampler = Sampler(GpuSampler(ReplayNvml(node.readings)), ProcReader(str(tmp_path)), None, 1.0,
                      clock=lambda: 50.0)
    sample = sampler.sample()
    assert (sample["v"], sample["seq"], sample["gpu_na"]) == (SAMPLE_PROTOCOL, 0, None)
    gpu = sample["gpus"][2]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["reasons"] == ["sw_power_cap"]
    assert (gpu["util"], gpu["power"], gpu["plimit"], gpu["sm"]) == (94 + (0 + 6 + 5) % 5, 693.0, 700.0, 1755)
    assert gpu["ecc"] == [0, 0]  # read on sample 0, then every 5th
    assert "pcie" not in gpu and "energy" not in gpu  # slow queries are off by default
    assert [(r["rank"], r["gpu"], r["gmem"]) for r in sample["ranks"]][:2] == [(0, 0, 60 << 30), (1, 1, 60 << 30)]
    assert "ecc" not in sampler.sample()["gpus"][0]


def test_slow_queries_run_every_nth_sample_when_asked(tmp_path: Path) -> None:
    node = fake_node(tmp_path)
    write_proc(node, Scenario(gpus=1), 0)
    sampler = Sampler(GpuSampler(ReplayNvml(node.readings), slow_every=2), ProcReader(str(tmp_path)), None, 1.0)
    assert sampler.sample()["gpus"][0]["pcie"] == [2284, 552]
    assert "pcie" not in sampler.sample()["gpus"][0]
    assert sampler.sample()["gpus"][0]["energy"] == 3433.3


def test_a_field_the_driver_does_not_support_is_asked_once_and_reported(tmp_path: Path) -> None:
    node = fake_node(tmp_path)
    node.readings["gpus"][0]["PowerUsage"] = {"error": "NVMLError_NotSupported: Not Supported"}
    write_proc(node, Scenario(gpus=0), 0)
    gpus = GpuSampler(ReplayNvml(node.readings))
    first, _ = gpus.read(0)
    assert first[0]["power"] is None and first[0]["na"]["power"] == "NVMLError_NotSupported: Not Supported"
    assert "power:0" in gpus.unsupported
    assert gpus.read(1)[0][0]["na"]["power"] == "NVMLError_NotSupported: Not Supported"


class HangingReplay(ReplayNvml):
    """Recorded readings whose temperature call blocks until released: a hung driver (this machine has none)."""

    def __init__(self, readings: dict[str, object], release: threading.Event) -> None:
        super().__init__(readings)
        self.release = release

    def temperature_c(self, index: int) -> int:
        if index == 1:
            self.release.wait(10)
        return super().temperature_c(index)


def test_a_hung_nvml_call_becomes_a_state_naming_the_call_and_sampling_resumes_when_it_returns(
        tmp_path: Path) -> None:
    node = fake_node(tmp_path)
    release = threading.Event()
    gpus = GpuSampler(HangingReplay(node.readings, release), timeout_s=0.3)
    started = time.monotonic()
    read, error = gpus.read(0)
    assert time.monotonic() - started < 2
    assert [g["i"] for g in read] == [0]  # what was read before the hang is kept
    assert error is not None and "nvmlDeviceGetTemperature(1) did not return within 0.3s" in error
    assert gpus.read(1) == ([], error)  # no new call while the old one is stuck
    release.set()
    time.sleep(0.1)
    read, error = gpus.read(2)
    assert error is None and len(read) == 8


def test_without_nvml_every_sample_says_why_there_are_no_gpus() -> None:
    gpus = GpuSampler(ReplayNvml(str(Path("/nonexistent/nvml-readings.json"))))
    assert gpus.read(0) == ([], gpus.error)
    assert gpus.error is not None and "cannot replay NVML readings" in gpus.error


REPLAY = REPO / "tests" / "fixtures" / "h100-x1" / "nvml-readings.json"


def test_agent_stream_prints_marked_samples_with_rising_sequence_numbers() -> None:
    proc = subprocess.run([sys.executable, "-m", "clusterkit.node.agent",
                           "stream", "--interval", "0.2", "--count", "3"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL,
                          env={"CLUSTERKIT_NVML_REPLAY": str(REPLAY), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith(SAMPLE_MARKER) for line in lines)
    samples = [json.loads(line[len(SAMPLE_MARKER):]) for line in lines]
    assert [s["seq"] for s in samples] == [0, 1, 2]
    assert len({s["boot"] for s in samples}) == 1
    assert samples[1]["dt"] == pytest.approx(0.2, abs=0.15)
    assert samples[0]["gpus"][0]["uuid"] == "GPU-944ba4d1-ba97-eb4c-5067-8840a9b23fdb"


def test_the_agent_ends_when_its_channel_closes_even_in_the_middle_of_a_long_interval() -> None:
    """issue 19, C2: agents slept through their interval after the head had gone (one was still running
    53 minutes later). Over SSH a channel's end is the end of the agent's stdin."""
    agent = subprocess.Popen([sys.executable, "-m", "clusterkit.node.agent", "stream", "--interval", "60"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                             env={"CLUSTERKIT_NVML_REPLAY": str(REPLAY), "PATH": "/usr/bin:/bin"})
    try:
        assert agent.stdout is not None and agent.stdin is not None
        assert agent.stdout.readline().startswith(SAMPLE_MARKER.encode())  # sampling, then 60 s till the next
        agent.stdin.close()  # the channel ends: sshd closes the session's pipes
        assert agent.wait(timeout=15) == 0
    finally:
        agent.kill()
        agent.wait()
        for pipe in (agent.stdout, agent.stderr):
            if pipe is not None:
                pipe.close()


def test_a_terminal_or_dev_null_on_stdin_is_no_channel_to_watch() -> None:
    with open(os.devnull, "rb") as null:
        assert ChannelWatch(null.fileno()).fd is None
    read_end, write_end = os.pipe()
    try:
        watch = ChannelWatch(read_end)
        assert watch.fd == read_end and watch.wait(0.01) is True  # open and quiet: go on
        os.write(write_end, b"anything\n")
        assert watch.wait(0.01) is True  # input is read and ignored
        os.close(write_end)
        assert watch.wait(30) is False  # the end, noticed at once
    finally:
        os.close(read_end)


@pytest.mark.parametrize("interval", ["inf", "nan", "1e9", "0.001", "-1", "soon"])
def test_the_agent_refuses_an_interval_it_cannot_keep(interval: str) -> None:
    """issue 19, C2: `--interval inf` crashed every agent (OverflowError) and the nodes showed down."""
    proc = subprocess.run([sys.executable, "-m", "clusterkit.node.agent",
                           "stream", "--interval", interval, "--count", "1"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "argument --interval" in proc.stderr and "Traceback" not in proc.stderr
