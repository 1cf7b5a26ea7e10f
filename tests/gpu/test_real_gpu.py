"""On a real NVIDIA GPU, clusterkit reports the machine as nvidia-smi and torch see it.

Skipped wherever NVML finds no GPU (conftest.py says why). Timing is never asserted here: the doctor's
wall time is measured by bench/gpu_doctor.sh instead.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from clusterkit.node.facts import NodeFacts, Unavailable
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
)
from tests.gpu.conftest import DoctorRun, LiveReading

pytestmark = pytest.mark.usefixtures("real_gpu")


# ------------------------------------------------------------------------------ collect_nvidia


def test_collect_nvidia_finds_as_many_gpus_as_nvidia_smi_lists(live: LiveReading, smi_list: str) -> None:
    listed = [line for line in smi_list.splitlines() if re.match(r"^GPU \d+:", line)]
    assert len(known_gpus(live.facts)) == len(listed)


def test_collect_nvidia_gives_the_bus_ids_uuids_and_names_of_nvidia_smi_xml(live: LiveReading) -> None:
    assert identity_mismatches(known_gpus(live.facts), live.before) == []


def test_collect_nvidia_reads_the_uuids_nvidia_smi_lists(live: LiveReading, smi_list: str) -> None:
    listed = set(re.findall(r"\(UUID: (GPU-[0-9a-fA-F-]+)\)", smi_list))
    assert {gpu.uuid for gpu in known_gpus(live.facts)} == listed


def test_collect_nvidia_reports_the_driver_and_cuda_version_of_nvidia_smi(live: LiveReading) -> None:
    assert driver_mismatches(live.facts, live.before) == []


def test_collect_nvidia_reports_the_maximum_pcie_link_of_nvidia_smi(live: LiveReading) -> None:
    assert pcie_max_mismatches(known_gpus(live.facts), live.before) == []


def test_collect_nvidia_reports_a_current_pcie_link_nvidia_smi_saw_around_it(live: LiveReading) -> None:
    # An idle GPU may step its link down between reads: accept what nvidia-smi saw just before or after.
    seen = {gpu.bus_id: [gpu] for gpu in live.before.gpus}
    for gpu in live.after.gpus:
        seen.setdefault(gpu.bus_id, []).append(gpu)
    for gpu in known_gpus(live.facts):
        for field in ("pcie_gen_current", "pcie_width_current"):
            read_by_smi = [getattr(other, field) for other in seen.get(gpu.bus_id, [])]
            assert getattr(gpu, field) in read_by_smi, (gpu.bus_id, field)


def test_collect_nvidia_reports_the_compute_capability_torch_sees(live: LiveReading) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} sees no CUDA device")
    gpus = known_gpus(live.facts)
    by_uuid = {gpu.uuid.lower().removeprefix("gpu-"): gpu for gpu in gpus}
    count = torch.cuda.device_count()
    if not all(hasattr(torch.cuda.get_device_properties(i), "uuid") for i in range(count)):
        # A torch without device UUIDs: every capability it sees must be one clusterkit reports.
        wanted = {"{}.{}".format(*torch.cuda.get_device_capability(i)) for i in range(count)}
        assert wanted <= {str(gpu.compute_capability) for gpu in gpus}
        return
    for index in range(count):
        uuid = str(torch.cuda.get_device_properties(index).uuid).lower().removeprefix("gpu-")
        if uuid not in by_uuid:
            pytest.fail(f"torch device {index} has uuid {uuid!r}, not one of {sorted(by_uuid)}")
        major, minor = torch.cuda.get_device_capability(index)
        assert by_uuid[uuid].compute_capability == f"{major}.{minor}", uuid


def test_collect_nvidia_reads_the_topology_of_every_gpu(live: LiveReading) -> None:
    topology = live.facts.topology
    assert not isinstance(topology, Unavailable), topology
    gpus = [device for device in topology.devices if device.startswith("GPU")]
    assert len(gpus) == len(known_gpus(live.facts))


# ---------------------------------------------------------------------------- clusterkit doctor


def test_doctor_json_decodes_into_node_facts(doctor: DoctorRun) -> None:
    assert isinstance(doctor_node_facts(doctor.document), NodeFacts)


def test_doctor_has_no_internal_error_finding(doctor: DoctorRun) -> None:
    assert internal_errors(doctor.document) == []


def test_doctor_exit_code_says_whether_errors_were_found(doctor: DoctorRun) -> None:
    summary = doctor.document["summary"]
    assert doctor.exit_code == (0 if summary["ok"] else 1)
    assert summary["ok"] == (summary["error"] == 0)


def test_doctor_reads_the_gpus_nvidia_smi_lists(doctor: DoctorRun) -> None:
    facts = doctor_node_facts(doctor.document)
    xml = parse_xml(doctor.xml_text)
    assert identity_mismatches(known_gpus(facts.nvidia), xml) == []
    assert not isinstance(facts.nvidia, Unavailable)
    assert driver_mismatches(facts.nvidia, xml) == []
    assert pcie_max_mismatches(known_gpus(facts.nvidia), xml) == []


def test_doctor_reports_the_remapped_rows_nvidia_smi_reports(doctor: DoctorRun) -> None:
    facts = doctor_node_facts(doctor.document)
    assert remapped_row_mismatches(known_gpus(facts.nvidia), doctor.xml_text) == []


def test_doctor_reports_as_many_active_nvlinks_as_nvidia_smi(doctor: DoctorRun) -> None:
    result = subprocess.run(["nvidia-smi", "nvlink", "-s"], capture_output=True, text=True, timeout=60)
    status = result.stdout + result.stderr
    facts = doctor_node_facts(doctor.document)
    assert active_nvlinks(known_gpus(facts.nvidia)) == active_nvlinks_in_smi(status), status
