"""A saved run: what one ``doctor``, ``bench`` or ``env verify`` run learnt, kept to compare a later run with.

One JSON format for every kind (schema ``clusterkit.run/v1``, documented in README "Saved runs"):
the kind and workload, the clusterkit version, when, the hosts, each node's facts as
:func:`clusterkit.node.facts.to_jsonable` writes them (or why they are missing), the findings, and the
measured figures (:class:`Figure`: one number, where and what it measures). The figures of a bench run
are read from the JSON document the bench command prints (:func:`figures_from_bench`), so what is
saved is what ``--json`` shows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clusterkit import __version__
from clusterkit.core.facts_codec import FactsDecodeError, from_jsonable
from clusterkit.core.findings import Finding, Outcome, Severity
from clusterkit.core.findings_report import JSON_SCHEMA as DOCTOR_SCHEMA
from clusterkit.core.findings_report import finding_to_json
from clusterkit.core.hostlist import compress
from clusterkit.node.facts import Maybe, NodeFacts, Unavailable, to_jsonable

SCHEMA = "clusterkit.run/v1"
KINDS = ("doctor", "bench", "env-verify")


class SavedRunError(ValueError):
    """A file that is not a saved run of this schema; the message says what is wrong."""


@dataclass(frozen=True)
class Figure:
    """One measured number, higher is better: ``subject`` is the host, the pair (``node[1-2]``) or the
    host list it was measured on; ``metric`` says what and at which size (``all_reduce busbw at 1M``)."""

    subject: str
    metric: str
    value: float
    unit: str
    #: Why a figure that was tried was not measured (a pair that failed; its value 0): a later run
    #: that measures it is no news, one that had it and now does not is a change.
    failed: str = ""


@dataclass
class SavedRun:
    """One run as saved. ``workload`` names the bench workload (``collectives``, ``find-slow``, ``gpu``);
    "" for doctor and env verify."""

    kind: str
    hosts: list[str]
    facts: Mapping[str, Maybe[NodeFacts]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    workload: str = ""
    started_at: float = field(default_factory=time.time)
    clusterkit_version: str = __version__

    @property
    def label(self) -> str:
        """``doctor``, ``bench collectives``: what kind of run this is, for matching runs to compare."""
        return f"{self.kind} {self.workload}".strip()


def run_to_json(run: SavedRun) -> dict[str, Any]:
    """The saved run's JSON document (schema ``clusterkit.run/v1``)."""
    return {"schema": SCHEMA, "kind": run.kind, "workload": run.workload,
            "clusterkit_version": run.clusterkit_version, "started_at": run.started_at, "hosts": list(run.hosts),
            "facts": {host: to_jsonable(facts) for host, facts in run.facts.items()},
            "findings": [finding_to_json(f) for f in run.findings],
            "figures": [{"subject": f.subject, "metric": f.metric, "value": f.value, "unit": f.unit,
                         **({"failed": f.failed} if f.failed else {})} for f in run.figures]}


def run_from_json(data: Any) -> SavedRun:
    """Rebuild a saved run, checking its schema and types; :class:`SavedRunError` says what is wrong.

    ``doctor --json`` documents with their facts (``clusterkit.doctor/v1``) read as doctor runs too.
    """
    if isinstance(data, dict) and data.get("schema") == DOCTOR_SCHEMA and "facts" in data:
        data = {**data, "schema": SCHEMA, "kind": "doctor", "workload": ""}
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise SavedRunError(f"not a saved run (schema {found!r}, expected {SCHEMA!r})")
    try:
        facts: dict[str, Maybe[NodeFacts]] = {}
        for host, value in dict(data.get("facts") or {}).items():
            if isinstance(value, dict) and set(value) == {"unavailable"}:
                facts[host] = Unavailable(str(value["unavailable"]))
            else:
                try:
                    facts[host] = from_jsonable(NodeFacts, value)
                except FactsDecodeError as exc:  # that host is not compared; the rest of the run still is
                    facts[host] = Unavailable(f"its saved facts do not decode: {exc}")
        findings = [Finding(f["check"], Severity(f["severity"]), Outcome(f["outcome"]), f["host"], f["where"],
                            f["message"], f["why"], f["fix"]) for f in data.get("findings", [])]
        figures = [Figure(str(f["subject"]), str(f["metric"]), float(f["value"]), str(f["unit"]),
                          str(f.get("failed") or "")) for f in data.get("figures", [])]
        return SavedRun(kind=str(data["kind"]), workload=str(data.get("workload", "")),
                        clusterkit_version=str(data["clusterkit_version"]), started_at=float(data["started_at"]),
                        hosts=[str(h) for h in data["hosts"]], facts=facts, findings=findings, figures=figures)
    except (KeyError, TypeError, ValueError) as exc:
        raise SavedRunError(f"saved run is malformed: {type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------------------------ bench figures


def human_size(size: int) -> str:
    """``1024`` -> ``1K``, ``1048576`` -> ``1M``, ``1000`` -> ``1000``."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def figures_from_bench(workload: str, doc: Mapping[str, Any]) -> list[Figure]:
    """The figures of a bench command's JSON document: busbw per collective and size (the better of
    out-of-place and in-place), each slow-node pair's busbw, each GPU's (or CPU rank's) measurements."""
    if workload == "collectives":
        return _collective_figures(doc)
    if workload == "find-slow":
        return _pair_figures(doc.get("slow_node_search") or {})
    if workload == "gpu":
        return _gpu_figures(doc)
    return []


def _collective_figures(doc: Mapping[str, Any]) -> list[Figure]:
    result = doc.get("result") or {}
    subject = compress(result.get("hosts") or doc.get("hosts") or []) or "cluster"
    figures = []
    for op, body in (result.get("ops") or {}).items():
        for row in body.get("rows", []):
            rates = [v["busbw"] for v in (row.get("out_of_place"), row.get("in_place")) if v and v.get("busbw")]
            if rates and row.get("size"):
                figures.append(Figure(subject, f"{op} busbw at {human_size(int(row['size']))}", max(rates), "GB/s"))
    search = doc.get("slow_node_search")
    return figures + (_pair_figures(search) if search else [])


def _pair_figures(search: Mapping[str, Any]) -> list[Figure]:
    """Each pair's best busbw; a pair that was tried and never measured is a figure of 0 that says why."""
    best: dict[str, float] = {}
    failed: dict[str, str] = {}
    for round_ in search.get("rounds", []):
        for pair in round_:
            subject = compress(pair["nodes"])
            if pair.get("busbw_gbs") is not None:
                best[subject] = max(best.get(subject, 0.0), float(pair["busbw_gbs"]))
            else:
                failed.setdefault(subject, str(pair.get("detail") or "failed"))
    metric = "all_reduce busbw of the pair"
    return ([Figure(subject, metric, value, "GB/s") for subject, value in best.items()]
            + [Figure(subject, metric, 0.0, "GB/s", why) for subject, why in failed.items() if subject not in best])


_GPU_METRICS = {"memory_gbs": ("memory bandwidth", "GB/s"), "matmul_bfloat16": ("bf16 matmul", "TFLOPS"),
                "matmul_float16": ("fp16 matmul", "TFLOPS"), "h2d_gbs": ("host-to-device copy", "GB/s"),
                "d2h_gbs": ("device-to-host copy", "GB/s")}


def _gpu_figures(doc: Mapping[str, Any]) -> list[Figure]:
    figures = []
    for reading in doc.get("readings", []):
        device = reading.get("device") or {}
        where = f"GPU {device['index']}" if device.get("index") is not None else f"rank {reading.get('rank')} (CPU)"
        for key, value in (reading.get("values") or {}).items():
            what, unit = _GPU_METRICS.get(key, (key, ""))
            figures.append(Figure(str(reading["host"]), f"{where} {what}", float(value), unit))
    return figures
