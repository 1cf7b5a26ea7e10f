"""The comparisons the GPU tests rely on, proved here on the real H100 recording (no GPU needed).

A doctor run replaying tests/fixtures/h100-x1 must agree with that machine's own nvidia-smi -q -x, and
a planted difference must be reported: otherwise a green run on the device would prove nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clusterkit.node.collect.gpu import ReplayWorld, collect_nvidia
from clusterkit.node.collect.node import CollectOptions
from clusterkit.node.facts import GpuFacts, NvidiaFacts, NvLinkFacts, Unavailable
from tests.gpu.agreement import (
    active_nvlinks,
    active_nvlinks_in_smi,
    doctor_node_facts,
    driver_mismatches,
    identity_mismatches,
    internal_errors,
    known_gpus,
    parse_xml,
    pcie_max_mismatches,
    remapped_row_mismatches,
    remapped_rows_in_xml,
)

REPO = Path(__file__).resolve().parents[2]
H100 = REPO / "tests" / "fixtures" / "h100-x1"
H100_XML = (H100 / "nvidia-smi-q-x.xml").read_text(encoding="utf-8")
H100_BUS_ID = "00000000:00:06.0"


@pytest.fixture(scope="module")
def replayed() -> NvidiaFacts:
    return collect_nvidia(CollectOptions(), ReplayWorld(str(H100 / "nvml-readings.json")))


@pytest.fixture(scope="module")
def replayed_doctor() -> dict[str, Any]:
    env = {**os.environ, "CLUSTERKIT_NVML_REPLAY": str(H100 / "nvml-readings.json")}
    result = subprocess.run([sys.executable, "-m", "clusterkit", "doctor", "--json"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def only_gpu(nvidia: NvidiaFacts) -> GpuFacts:
    gpus = known_gpus(nvidia)
    assert len(gpus) == 1
    return gpus[0]


def test_remapped_rows_are_read_from_the_xml_without_clusterkits_parser() -> None:
    assert remapped_rows_in_xml(H100_XML) == {
        H100_BUS_ID: {"correctable": 0, "uncorrectable": 3, "pending": False, "failure": False}}


def test_the_h100_recording_agrees_with_its_own_xml(replayed: NvidiaFacts) -> None:
    xml = parse_xml(H100_XML)
    gpus = known_gpus(replayed)
    assert identity_mismatches(gpus, xml) == []
    assert driver_mismatches(replayed, xml) == []
    assert pcie_max_mismatches(gpus, xml) == []
    assert remapped_row_mismatches(gpus, H100_XML) == []


def test_a_different_uuid_or_missing_gpu_is_a_disagreement(replayed: NvidiaFacts) -> None:
    xml = parse_xml(H100_XML)
    renamed = dataclasses.replace(only_gpu(replayed), uuid="GPU-00000000-0000-0000-0000-000000000000")
    assert identity_mismatches([renamed], xml) == [
        f"{H100_BUS_ID} uuid: clusterkit {renamed.uuid}, nvidia-smi GPU-944ba4d1-ba97-eb4c-5067-8840a9b23fdb"]
    assert identity_mismatches([], xml) == [f"bus ids: clusterkit [], nvidia-smi ['{H100_BUS_ID}']"]


def test_an_uncounted_remapped_row_is_a_disagreement(replayed: NvidiaFacts) -> None:
    gpu = only_gpu(replayed)
    hidden = dataclasses.replace(gpu, remapped_rows=dataclasses.replace(gpu.remapped_rows, uncorrectable=0))
    assert remapped_row_mismatches([hidden], H100_XML) == [
        f"{H100_BUS_ID} remapped_rows.uncorrectable: clusterkit 0, nvidia-smi 3"]


def test_an_unavailable_remapped_row_count_is_a_disagreement_where_the_xml_has_one(replayed: NvidiaFacts) -> None:
    gpu = only_gpu(replayed)
    unread = dataclasses.replace(gpu, remapped_rows=dataclasses.replace(
        gpu.remapped_rows, correctable=Unavailable("NVML timed out")))
    assert len(remapped_row_mismatches([unread], H100_XML)) == 1


def test_a_lower_pcie_maximum_or_other_driver_is_a_disagreement(replayed: NvidiaFacts) -> None:
    xml = parse_xml(H100_XML)
    assert pcie_max_mismatches([dataclasses.replace(only_gpu(replayed), pcie_gen_max=4)], xml) == [
        f"{H100_BUS_ID} pcie_gen_max: clusterkit 4, nvidia-smi 5"]
    assert driver_mismatches(dataclasses.replace(replayed, driver_version="570.1"), xml) == [
        "driver: clusterkit 570.1, nvidia-smi 580.159.04"]


def test_active_nvlinks_are_counted_from_nvidia_smi_nvlink_status() -> None:
    status = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-944ba4d1-ba97-eb4c-5067-8840a9b23fdb)\n"
              "\t Link 0: 26.562 GB/s\n\t Link 1: <inactive>\n\t Link 2: 26.562 GB/s\n")
    assert active_nvlinks_in_smi(status) == 2
    assert active_nvlinks_in_smi("") == 0


def test_a_gpu_without_readable_nvlink_counts_no_active_link(replayed: NvidiaFacts) -> None:
    gpu = only_gpu(replayed)
    assert isinstance(gpu.nvlinks, Unavailable)
    assert active_nvlinks([gpu]) == 0
    link = NvLinkFacts(link=0, active=True, version=4, remote_bus_id="00000000:07:00.0", crc_errors=0,
                       replay_errors=0, recovery_errors=0)
    assert active_nvlinks([dataclasses.replace(gpu, nvlinks=[link, dataclasses.replace(link, active=False)])]) == 1


def test_a_replayed_h100_doctor_document_decodes_and_agrees_with_the_xml(replayed_doctor: dict[str, Any]) -> None:
    facts = doctor_node_facts(replayed_doctor)
    assert not isinstance(facts.nvidia, Unavailable)
    assert internal_errors(replayed_doctor) == []
    assert identity_mismatches(known_gpus(facts.nvidia), parse_xml(H100_XML)) == []
    assert remapped_row_mismatches(known_gpus(facts.nvidia), H100_XML) == []
