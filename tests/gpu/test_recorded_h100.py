"""The doctor output recorded on the device tool's H100 stays readable and truthful, on any machine.

A session with a GPU machine stores it (docs/gpu-validation.md) as
tests/fixtures/h100-x1-doctor/doctor.json, with the nvidia-smi -q -x read in the same run beside it.
Until then these tests skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clusterkit.node.facts import NodeFacts, Unavailable
from tests.gpu.agreement import (
    doctor_node_facts,
    driver_mismatches,
    identity_mismatches,
    internal_errors,
    known_gpus,
    parse_xml,
    pcie_max_mismatches,
    remapped_row_mismatches,
)

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "h100-x1-doctor"
HOW = "see docs/gpu-validation.md"


def recorded_text(name: str) -> str:
    path = RECORDED / name
    if not path.is_file():
        pytest.skip(f"no recorded {path.relative_to(RECORDED.parents[2])} yet; {HOW}")
    return path.read_text(encoding="utf-8")


@pytest.fixture
def document() -> dict[str, Any]:
    data = json.loads(recorded_text("doctor.json"))
    assert isinstance(data, dict)
    return data


@pytest.fixture
def xml_text() -> str:
    return recorded_text("nvidia-smi-q-x.xml")


def test_recorded_doctor_output_decodes_with_from_jsonable(document: dict[str, Any]) -> None:
    assert isinstance(doctor_node_facts(document), NodeFacts)


def test_recorded_doctor_output_has_no_internal_error_finding(document: dict[str, Any]) -> None:
    assert internal_errors(document) == []


def test_recorded_doctor_output_read_an_h100_through_nvml(document: dict[str, Any]) -> None:
    gpus = known_gpus(doctor_node_facts(document).nvidia)
    assert gpus and all("H100" in gpu.name for gpu in gpus)
    assert all(not isinstance(gpu.compute_capability, Unavailable) for gpu in gpus)


def test_recorded_doctor_output_agrees_with_the_xml_of_the_same_run(document: dict[str, Any],
                                                                     xml_text: str) -> None:
    nvidia = doctor_node_facts(document).nvidia
    assert not isinstance(nvidia, Unavailable)
    xml = parse_xml(xml_text)
    gpus = known_gpus(nvidia)
    assert identity_mismatches(gpus, xml) == []
    assert driver_mismatches(nvidia, xml) == []
    assert pcie_max_mismatches(gpus, xml) == []
    assert remapped_row_mismatches(gpus, xml_text) == []
