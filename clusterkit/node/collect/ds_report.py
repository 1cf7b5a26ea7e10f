"""Parse the text of DeepSpeed's ``ds_report`` (``deepspeed.env_report.main``).

The report has an op table (``name ..... [NO] ....... [OKAY]``) preceded, per op, by the
``[WARNING]`` lines its compatibility probe printed, and a "general environment info" section of
``name ...... value`` lines. Colours are ANSI escapes. Parsers never raise on malformed text.
Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import re

from clusterkit.node.facts import DsOpFacts

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A long op name leaves no dots ("deepspeed_not_implemented  [NO] ....... [OKAY]").
_OP_LINE = re.compile(
    r"^(?P<name>[A-Za-z0-9_]+)\s+\.*\s*\[(?P<installed>[A-Z]+)\]\s*\.*\s*\[(?P<compatible>[A-Z]+)\]\s*$")
_WARNING = re.compile(r"^\s*\[WARNING\]\s*(?P<text>.*?)\s*$")
_INFO_LINE = re.compile(r"^(?P<name>\S.*?) \.* (?P<value>.*?)\s*$")
_GENERAL_HEADER = "DeepSpeed general environment info:"

#: Key under which :func:`parse_ds_general_info` keeps the warnings printed in the general section.
GENERAL_WARNINGS_KEY = "warnings"


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour escapes."""
    return _ANSI.sub("", text)


def parse_ds_report(text: str) -> list[DsOpFacts]:
    """The ops of the report's table, each with the warnings printed while probing it.

    DeepSpeed prints an op's line after probing its compatibility, so the warnings since the previous
    op line belong to this op (async_io's libaio hints, evoformer_attn's CUTLASS hint). Returns an empty
    list when the text holds no op table.
    """
    ops: list[DsOpFacts] = []
    pending: list[str] = []
    in_table = False
    for raw in strip_ansi(text).splitlines():
        line = raw.rstrip()
        if line.startswith("op name"):
            in_table = True
            pending = []
            continue
        if line.startswith(_GENERAL_HEADER):
            break
        if not in_table:
            continue
        warning = _WARNING.match(line)
        if warning:
            pending.append(warning.group("text"))
            continue
        op = _OP_LINE.match(line)
        if op:
            ops.append(DsOpFacts(
                name=op.group("name"),
                installed=op.group("installed") == "YES",
                compatible=op.group("compatible") == "OKAY",
                warnings=pending,
            ))
            pending = []
    if pending and ops:
        _attach_by_name(ops, pending)
    return ops


def _attach_by_name(ops: list[DsOpFacts], warnings: list[str]) -> None:
    """Warnings after the last op line: give each to the op it names, if any."""
    for warning in warnings:
        for op in ops:
            if re.search(r"\b" + re.escape(op.name) + r"\b", warning):
                op.warnings.append(warning)
                break


def parse_ds_general_info(text: str) -> dict[str, str]:
    """The ``name ...... value`` lines after "DeepSpeed general environment info:".

    E.g. ``{"torch version": "2.11.0+cu130", "nvcc version": "13.0",
    "deepspeed wheel compiled w.": "torch 0.0, cuda 0.0", "shared memory (/dev/shm) size": "128.00 GB"}``.
    Warnings printed in that section (a small /dev/shm) are joined under ``GENERAL_WARNINGS_KEY``.
    """
    info: dict[str, str] = {}
    warnings: list[str] = []
    in_general = False
    for raw in strip_ansi(text).splitlines():
        line = raw.rstrip()
        if line.startswith(_GENERAL_HEADER):
            in_general = True
            continue
        if not in_general or not line.strip():
            continue
        warning = _WARNING.match(line)
        if warning:
            warnings.append(warning.group("text"))
            continue
        match = _INFO_LINE.match(line)
        if match and match.group("name") not in info:
            info[match.group("name")] = match.group("value").strip()
    if warnings:
        info[GENERAL_WARNINGS_KEY] = "\n".join(warnings)
    return info


def parse_ninja_status(text: str) -> bool | None:
    """``True``/``False`` from the report's ``ninja .... [OKAY]/[FAIL]`` line; ``None`` if absent."""
    for raw in strip_ansi(text).splitlines():
        match = re.match(r"^ninja\s+\.*\s*\[(?P<status>[A-Z]+)\]", raw.strip())
        if match:
            return match.group("status") == "OKAY"
    return None
