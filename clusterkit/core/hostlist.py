"""Compact host lists as Slurm and ``dshbak -c`` write them: ``node[01-64]``, ``gpu[01-04],cpu[1-2]``,
``rack[1-2]-n[01-08]``, ``10.0.0.[11-13,20]``, read and written by ClusterShell's NodeSet.

NodeSet is a set: it sorts and drops duplicates. Slurm lists a job's nodes in its own order and
``scontrol show hostnames`` keeps the written order, so :func:`expand` hands NodeSet one comma-separated
item at a time and keeps the items in the order written (inside one bracketed item the names come
ascending, as Slurm writes them). :func:`compress` sorts. Its output stays in the grammar Slurm 22.05
reads, which is narrower than NodeSet's: nothing may follow a host list's last bracket, so
``rack[1-2]-n01`` is written ``rack[1-2]-n[01]`` and names that do not end in their number
(``node1.example.com``) are never folded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetError

#: Slurm's own limit on the names one range may stand for (hostlist.c's MAX_RANGE): a list asking for more
#: is a typo, and NodeSet would spend minutes and gigabytes expanding it.
MAX_NAMES = 64 * 1024
#: Fold along every axis, whatever a site's ClusterShell defaults.conf says (its ``fold_axis``).
_EVERY_AXIS = tuple(range(64))
#: NodeSet reads these as set operations (difference, intersection, symmetric difference), Slurm as letters.
_SET_OPERATORS = "!&^"
#: A name NodeSet reads as one node and folds into a form Slurm reads: no separators, brackets or set
#: operators, ending in its number.
_FOLDABLE = re.compile(r"[^\s,\[\]!&^]*\d")
_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
_SPAN = re.compile(r"(\d+)-(\d+)")


def _nodeset(text: str = "") -> Any:
    """A NodeSet that resolves no ``@groups`` (no groups.conf, no external commands) and ignores the site's
    folding defaults."""
    return NodeSet(text or None, resolver=RESOLVER_NOGROUP, fold_axis=_EVERY_AXIS)


def _items(expression: str) -> list[str]:
    """The host list's items: split at commas and whitespace outside brackets, as Slurm does."""
    items, depth, current = [], 0, ""
    for char in expression:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth == 0 and (char == "," or char.isspace()):
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item for item in items if item]


def _readable_by_slurm(item: str) -> str:
    """``rack[1-2]-n01`` -> ``rack[1-2]-n[01]``: Slurm refuses text after a list's last bracket."""
    if "[" in item and not item.endswith("]"):
        return re.sub(r"(\d+)$", r"[\1]", item)
    return item


def compress(names: Iterable[str]) -> str:
    """``node2,node1,node3,gpu7`` -> ``gpu7,node[1-3]`` (sorted, duplicates dropped). Names NodeSet cannot
    fold into a form Slurm reads are kept as they are."""
    folded = _nodeset()
    kept: set[str] = set()
    for name in names:
        if not name:
            continue
        if _FOLDABLE.fullmatch(name):
            try:
                folded.update(_nodeset(name))
                continue
            except NodeSetError:  # a number NodeSet will not hold (over 100 digits)
                pass
        kept.add(name)
    items = [_readable_by_slurm(item) for item in _items(str(folded))]
    return ",".join(sorted([*items, *kept]))


def _most_names(item: str) -> int:
    """How many names ``item`` stands for at most, counted before NodeSet builds every one of them."""
    count = 1
    for bracket in _BRACKETED.findall(item):
        spans = (_SPAN.match(element) for element in bracket.split(","))
        count *= sum(max(1, int(span[2]) - int(span[1]) + 1) if span else 1 for span in spans)
    return count


def _expand_item(item: str) -> list[str]:
    operator = next((char for char in _SET_OPERATORS if char in item), None)
    if operator:
        raise ValueError(f"not a host list: {item!r} (NodeSet would read {operator!r} as a set operation)")
    if _most_names(item) > MAX_NAMES:
        raise ValueError(f"not a host list Slurm takes: {item!r} stands for more than {MAX_NAMES} names")
    try:
        return [str(name) for name in _nodeset(item)]
    except NodeSetError as exc:
        raise ValueError(f"not a host list: {item!r} ({exc})") from None


def expand(expression: str) -> list[str]:
    """``node[01-03],gpu7`` -> ``["node01", "node02", "node03", "gpu7"]``, items in written order; ValueError
    on bad syntax. A name without brackets is taken as it is written (IP addresses, FQDNs)."""
    names: list[str] = []
    for item in _items(expression):
        names += _expand_item(item) if "[" in item or "]" in item else [item]
    return names
