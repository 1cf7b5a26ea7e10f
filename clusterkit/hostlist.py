"""Compact host lists as Slurm and ``dshbak -c`` write them: ``node[01-64]``, ``10.0.0.[11-13,20]``.

A name's trailing digits are its number; names that share the rest and the digit width (zero-padded
numbers keep their width) fold into one bracketed range list. :func:`expand` reads the form back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<digits>\d+)$")
_BRACKETED = re.compile(r"^(?P<prefix>[^\[\]]*)\[(?P<ranges>[^\[\]]+)\](?P<suffix>[^\[\]]*)$")


def _ranges(numbers: list[int], width: int) -> str:
    spans: list[str] = []
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        first, last = str(start).zfill(width), str(previous).zfill(width)
        spans.append(first if start == previous else f"{first}-{last}")
        if number is not None:
            start = previous = number
    return ",".join(spans)


def compress(names: Iterable[str]) -> str:
    """``node1,node2,node3,gpu7`` -> ``node[1-3],gpu7`` (duplicates dropped, families in first-seen order)."""
    families: dict[tuple[str, int], set[int]] = {}
    plain: list[str] = []
    order: list[tuple[str, int] | str] = []
    unique = list(dict.fromkeys(names))
    padded_width: dict[str, int] = {}
    for name in unique:
        match = _NUMBERED.match(name)
        if match and match.group("digits").startswith("0") and len(match.group("digits")) > 1:
            padded_width.setdefault(match.group("prefix"), len(match.group("digits")))
    for name in unique:
        match = _NUMBERED.match(name)
        if not match:
            plain.append(name)
            order.append(name)
            continue
        prefix, digits = match.group("prefix"), match.group("digits")
        width = padded_width.get(prefix, 0)
        if width and len(digits) != width:
            width = 0 if not digits.startswith("0") else len(digits)
        key = (prefix, width)
        if key not in families:
            families[key] = set()
            order.append(key)
        families[key].add(int(digits))
    parts = []
    for item in order:
        if isinstance(item, str):
            parts.append(item)
            continue
        prefix, width = item
        numbers = sorted(families[item])
        if len(numbers) == 1:
            parts.append(f"{prefix}{str(numbers[0]).zfill(width)}")
        else:
            parts.append(f"{prefix}[{_ranges(numbers, width)}]")
    return ",".join(parts)


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p]


def expand(expression: str) -> list[str]:
    """``node[01-03],gpu7`` -> ``["node01", "node02", "node03", "gpu7"]``; ValueError on bad syntax."""
    names: list[str] = []
    for part in _split_top_level(expression.strip()):
        match = _BRACKETED.match(part)
        if not match:
            if "[" in part or "]" in part:
                raise ValueError(f"not a host list: {part!r}")
            names.append(part)
            continue
        for span in match.group("ranges").split(","):
            first, _, last = span.partition("-")
            if not first.isdigit() or (last and not last.isdigit()):
                raise ValueError(f"not a number range: {span!r} in {part!r}")
            width = len(first) if first.startswith("0") else 0
            for number in range(int(first), int(last or first) + 1):
                names.append(f"{match.group('prefix')}{str(number).zfill(width)}{match.group('suffix')}")
    return names
