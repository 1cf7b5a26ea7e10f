"""Compare what clusterkit reports about GPUs with what nvidia-smi says, as lists of disagreements.

Used by the live tests (a real GPU) and by the tests of the recorded H100 doctor output. Each function
returns human-readable mismatches; an empty list means they agree. Only facts that do not move while a
machine idles are compared here (identity, driver, link maxima, remapped rows).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from clusterkit.core.facts_codec import from_jsonable
from clusterkit.node.collect.nvidia_smi import SmiQuery, parse_smi_query_xml
from clusterkit.node.collect.nvml import normalize_bus_id
from clusterkit.node.facts import GpuFacts, Maybe, NodeFacts, NvidiaFacts, Unavailable

DOCTOR_SCHEMA = "clusterkit.doctor/v1"
_ACTIVE_LINK = re.compile(r"^\s*Link\s+\d+:\s*[\d.]+\s*GB/s", re.MULTILINE)


def parse_xml(text: str) -> SmiQuery:
    """``nvidia-smi -q -x`` through clusterkit's own parser; fails the test if it cannot."""
    query = parse_smi_query_xml(text)
    assert not isinstance(query, Unavailable), f"clusterkit cannot parse nvidia-smi -q -x: {query.reason}"
    return query


def doctor_node_facts(document: dict[str, Any]) -> NodeFacts:
    """The one host's facts of a local ``clusterkit doctor --json`` document, decoded and type-checked."""
    assert document.get("schema") == DOCTOR_SCHEMA, f"schema is {document.get('schema')!r}"
    facts = document.get("facts")
    assert isinstance(facts, dict) and len(facts) == 1, "expected the facts of exactly one host"
    return from_jsonable(NodeFacts, next(iter(facts.values())))


def known_gpus(nvidia: Maybe[NvidiaFacts]) -> list[GpuFacts]:
    """The GPUs read, or fail saying why they were not."""
    assert not isinstance(nvidia, Unavailable), f"nvidia section unavailable: {nvidia.reason}"
    gpus = nvidia.gpus
    assert not isinstance(gpus, Unavailable), f"GPUs unavailable: {gpus.reason}"
    return gpus


def internal_errors(document: dict[str, Any]) -> list[str]:
    return [f"{f.get('where')}: {f.get('message')}" for f in document.get("findings", [])
            if f.get("check") == "internal-error"]


def identity_mismatches(gpus: list[GpuFacts], xml: SmiQuery) -> list[str]:
    """Same GPUs (by bus id) with the same UUIDs and names."""
    reported = {gpu.bus_id: gpu for gpu in gpus}
    listed = {gpu.bus_id: gpu for gpu in xml.gpus}
    problems = []
    if sorted(reported) != sorted(listed):
        problems.append(f"bus ids: clusterkit {sorted(reported)}, nvidia-smi {sorted(listed)}")
    for bus_id in sorted(set(reported) & set(listed)):
        ours, theirs = reported[bus_id], listed[bus_id]
        if ours.uuid != theirs.uuid:
            problems.append(f"{bus_id} uuid: clusterkit {ours.uuid}, nvidia-smi {theirs.uuid}")
        if ours.name != theirs.name:
            problems.append(f"{bus_id} name: clusterkit {ours.name!r}, nvidia-smi {theirs.name!r}")
    return problems


def driver_mismatches(nvidia: NvidiaFacts, xml: SmiQuery) -> list[str]:
    problems = []
    if nvidia.driver_version != xml.driver_version:
        problems.append(f"driver: clusterkit {nvidia.driver_version}, nvidia-smi {xml.driver_version}")
    if nvidia.cuda_driver_version != xml.cuda_version:
        problems.append(f"CUDA: clusterkit {nvidia.cuda_driver_version}, nvidia-smi {xml.cuda_version}")
    return problems


def pcie_max_mismatches(gpus: list[GpuFacts], xml: SmiQuery) -> list[str]:
    """Maximum PCIe generation and width, per bus id."""
    listed = {gpu.bus_id: gpu for gpu in xml.gpus}
    problems = []
    for gpu in gpus:
        theirs = listed.get(gpu.bus_id)
        if theirs is None:
            continue
        for field in ("pcie_gen_max", "pcie_width_max"):
            if getattr(gpu, field) != getattr(theirs, field):
                problems.append(f"{gpu.bus_id} {field}: clusterkit {getattr(gpu, field)}, "
                                f"nvidia-smi {getattr(theirs, field)}")
    return problems


def remapped_rows_in_xml(xml_text: str) -> dict[str, dict[str, Any]]:
    """Remapped-row counts and flags per bus id, read straight from the XML (not through clusterkit).

    A value nvidia-smi does not give (``N/A``) is ``None``.
    """
    rows: dict[str, dict[str, Any]] = {}
    for gpu in ET.fromstring(xml_text).findall("gpu"):
        bus_id = normalize_bus_id(gpu.findtext("pci/pci_bus_id") or gpu.get("id") or "")
        rows[bus_id] = {field: _remapped_value(gpu, tag) for field, tag in (
            ("correctable", "remapped_row_corr"), ("uncorrectable", "remapped_row_unc"),
            ("pending", "remapped_row_pending"), ("failure", "remapped_row_failure"))}
    return rows


def _remapped_value(gpu: ET.Element, tag: str) -> int | bool | None:
    text = (gpu.findtext(f"remapped_rows/{tag}") or "").strip()
    if text.isdigit():
        return int(text)
    return {"Yes": True, "No": False}.get(text)


def remapped_row_mismatches(gpus: list[GpuFacts], xml_text: str) -> list[str]:
    """Every remapped-row fact equals the XML's; where the XML has none, clusterkit says unavailable."""
    expected = remapped_rows_in_xml(xml_text)
    problems = []
    for gpu in gpus:
        for field, wanted in expected.get(gpu.bus_id, {}).items():
            got = getattr(gpu.remapped_rows, field)
            if wanted is None and isinstance(got, Unavailable):
                continue
            if got != wanted:
                problems.append(f"{gpu.bus_id} remapped_rows.{field}: clusterkit {got}, nvidia-smi {wanted}")
    return problems


def active_nvlinks_in_smi(nvlink_status: str) -> int:
    """Links ``nvidia-smi nvlink -s`` shows running at a speed (inactive ones print ``<inactive>``)."""
    return len(_ACTIVE_LINK.findall(nvlink_status))


def active_nvlinks(gpus: list[GpuFacts]) -> int:
    """Links clusterkit reports active; ``Unavailable`` NVLink (none on the board) counts none."""
    return sum(sum(1 for link in gpu.nvlinks if link.active) for gpu in gpus
               if not isinstance(gpu.nvlinks, Unavailable))
