"""Drain and resume as pure decisions: from the node's Slurm state and what the checks found, what to do.

The rules every site's health check keeps (LBNL NHC, Meta's GCM, Nebius soperator):

- an error drains the node with a reason that starts with clusterkit's prefix, so a person and a later
  run both know who drained it; the reason names the check and the GPU first (Slurm shows ~20 to 50
  characters of it in ``sinfo -R``);
- a run that finds no error resumes the node only if clusterkit drained it (the prefix): a drain an
  administrator set is theirs, whatever clusterkit thinks of the node;
- a node Slurm already has down (or not responding, powered down, failed) is left alone;
- when the node's state cannot be read, nothing is done: draining then could overwrite an
  administrator's reason.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from clusterkit.core.slurmstate import unusable
from clusterkit.node.facts import SlurmNodeFacts

#: Start of every reason clusterkit sets; the mark by which it knows its own drains.
REASON_PREFIX = "clusterkit:"
#: Longest reason clusterkit sets (``sinfo -R -o %50E`` shows it whole; plain ``sinfo -R`` shows 20).
REASON_MAX = 64
#: Node states in which clusterkit changes nothing (Slurm or a person already took the node out).
LEFT_ALONE_STATES = ("DOWN", "NOT_RESPONDING", "FAIL", "POWERED_DOWN", "POWERING_DOWN", "POWER_DOWN",
                     "REBOOT_ISSUED", "FUTURE")
_GPU = re.compile(r"^GPU (\d+)\b")
_DOMAIN = re.compile(r"\b0000:(?=[0-9a-fA-F]{2}:)")
_STATE_WORD = re.compile(r"[+*~#!%$@^-]")


@dataclass(frozen=True)
class Fault:
    """One reason to take the node out: a failed error-severity check, or a check that hung."""

    check: str
    where: str = ""


class Act(enum.StrEnum):
    DRAIN = "drain"
    RESUME = "resume"
    NOTHING = "nothing"

    @property
    def past(self) -> str:
        """As the log says it was done: ``drained``, ``resumed``."""
        return {"drain": "drained", "resume": "resumed"}.get(self.value, "nothing done")


@dataclass(frozen=True)
class Decision:
    """What to do, the reason to give Slurm (for a drain), and why (for the log)."""

    act: Act
    why: str
    reason: str = ""


def drain_reason(faults: Sequence[Fault], limit: int = REASON_MAX) -> str:
    """``clusterkit: xid-critical GPU 0 (1b:00.0); shm-full /dev/shm``: the checks in the order given
    (gravest first), the places of one check folded together (``GPU 0,3``), what does not fit counted
    (``+2 more``). ASCII only, at most ``limit`` characters."""
    grouped: dict[str, list[str]] = {}
    for fault in faults:
        grouped.setdefault(fault.check, [])
        if fault.where and fault.where not in grouped[fault.check]:
            grouped[fault.check].append(fault.where)
    parts = [f"{check} {_places(places)}".strip() for check, places in grouped.items()]
    text = REASON_PREFIX
    for i, part in enumerate(parts):
        rest = len(parts) - i - 1
        more = f"; +{rest} more" if rest else ""
        sep = " " if i == 0 else "; "
        if len(text + sep + part + more) <= limit:
            text += sep + part
            continue
        if i == 0:  # the gravest always shows, cut to fit
            room = limit - len(text + sep + more)
            text += sep + part[:max(0, room)].rstrip()
            if rest:
                text += more
            break
        text += f"; +{len(parts) - i} more"
        break
    return _ascii(text)[:limit]


def _places(places: list[str]) -> str:
    """One place as it is (PCI domain 0000 dropped); several GPUs as ``GPU 0,3``, other places counted."""
    places = [_DOMAIN.sub("", p) for p in places]
    if len(places) <= 1:
        return places[0] if places else ""
    gpus = [m.group(1) for p in places if (m := _GPU.match(p))]
    others = [p for p in places if not _GPU.match(p)]
    text = ", ".join(filter(None, ["GPU " + ",".join(gpus) if gpus else "", others[0] if others else ""]))
    return text + (f" +{len(others) - 1}" if len(others) > 1 else "")


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace("\n", " ")


def ours(reason: str) -> bool:
    """Whether a drain reason is one clusterkit set."""
    return reason.strip().startswith(REASON_PREFIX)


def decide(node: SlurmNodeFacts | None, faults: Sequence[Fault], unknown_why: str = "") -> Decision:
    """Drain, resume or leave the node, by the rules in this module's docstring."""
    if node is None:
        return Decision(Act.NOTHING, f"Slurm's state of this node is unknown ({unknown_why or 'no record'}); "
                                     "nothing changed")
    words = {w for w in _STATE_WORD.split(node.state.upper()) if w} | set(unusable(node))
    if words & set(LEFT_ALONE_STATES):
        return Decision(Act.NOTHING, f"{node.name} is {node.state} in Slurm; left alone")
    drained = any(w.startswith("DRAIN") for w in words)
    said = f"{node.reason!r}" + (f" (set by {node.reason_user})" if node.reason_user else "")
    if faults:
        reason = drain_reason(faults)
        if not drained:
            return Decision(Act.DRAIN, f"{len(faults)} error(s); draining", reason)
        if not ours(node.reason):
            return Decision(Act.NOTHING, f"{len(faults)} error(s), but {node.name} is already drained by someone "
                                         f"else: {said}; left as it is")
        if node.reason.strip() != reason:
            return Decision(Act.DRAIN, f"{len(faults)} error(s), not those of the last drain {said}; new reason",
                            reason)
        return Decision(Act.NOTHING, f"{len(faults)} error(s); still drained for them")
    if drained and ours(node.reason):
        return Decision(Act.RESUME, f"no error now; resuming (clusterkit drained it: {said})")
    if drained:
        return Decision(Act.NOTHING, f"no error; drained by someone else: {said}; left drained")
    return Decision(Act.NOTHING, "no error")
