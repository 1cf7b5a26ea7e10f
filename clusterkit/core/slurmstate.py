"""Slurm's own view, read from its commands on the head: the job, its nodes, their states and reasons.

Parsers of ``scontrol show job -d --oneliner``, ``scontrol show node --oneliner``, ``sinfo -R`` and the
allocation's environment (``SLURM_JOB_NODELIST``, ``SLURM_JOB_CPUS_PER_NODE`` ...) into the typed
values of :mod:`clusterkit.node.facts`. Pure: the commands are run by :mod:`clusterkit.cluster.remote.slurm`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from clusterkit.core.hostlist import expand
from clusterkit.node.facts import Maybe, SlurmFacts, SlurmJobFacts, SlurmNodeFacts, Unavailable

#: ``Key=`` at the start of a field of scontrol's one-line records (``CPUs/Task=``, ``NtasksPerN:B:S:C=``).
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][\w/:.]*)=")
_GPU_GRES = re.compile(r"gpu(?::[^:(),\s]+)?:(\d+)")
_GPU_INDEXES = re.compile(r"gpu(?::[^:(),\s]+)?(?::\d+)?\(IDX:([^)]*)\)")
#: States in which a node takes no new work, or none at all (scontrol's words, between '+').
UNUSABLE_STATES = ("DOWN", "DRAIN", "FAIL", "NOT_RESPONDING", "POWERED_DOWN", "POWERING_DOWN", "REBOOT_ISSUED",
                   "INVALID_REG", "MAINTENANCE")
#: Variables of the allocation's environment that describe it.
ENV_JOB_ID = ("SLURM_JOB_ID", "SLURM_JOBID")


class SlurmParseError(ValueError):
    """Output of a Slurm command that does not read as expected; says which and where."""


def parse_record(line: str) -> list[tuple[str, str]]:
    """One ``--oneliner`` record as (key, value) pairs in order; keys may repeat (``Nodes=`` per node
    group of ``show job -d``). Values keep their spaces (``Reason=bad DIMM [root@2024-05-01T10:00:00]``)."""
    starts = list(_FIELD.finditer(line))
    pairs = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(line)
        pairs.append((match.group(1), line[match.end():end].strip()))
    return pairs


def parse_duration(text: str) -> int | None:
    """Slurm's ``[D-]HH:MM:SS``, ``MM:SS`` or ``MM`` in seconds; None for UNLIMITED/INFINITE/NONE."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A", ""):
        return None
    days, _, rest = text.rpartition("-")
    try:
        parts = [int(p) for p in rest.split(":")]
        day_count = int(days) if days else 0
    except ValueError:
        raise SlurmParseError(f"not a Slurm duration: {text!r}") from None
    if len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
        if days:  # D-HH
            hours, minutes = parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = (parts[0], parts[1], 0) if days else (0, parts[0], parts[1])
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        raise SlurmParseError(f"not a Slurm duration: {text!r}")
    return ((day_count * 24 + hours) * 60 + minutes) * 60 + seconds


def count_gpus(gres: str) -> int:
    """GPUs in a gres string: ``gpu:8``, ``gpu:a100:4(S:0-1)``, ``gpu:2(IDX:0-1)``, ``(null)`` -> 0.

    A job's per-node GRES lists the indexes it holds (``IDX:0,2``); they count when they read, else the
    count before them does (``gpu:2(IDX:N/A)`` where gres.conf names no device files).
    """
    total = 0
    for entry in re.split(r",(?![^(]*\))", gres):
        counted = _GPU_GRES.match(entry.strip())
        if not counted:
            continue
        indexes = _GPU_INDEXES.match(entry.strip())
        try:
            total += len(_expand_numbers(indexes.group(1))) if indexes else int(counted.group(1))
        except SlurmParseError:
            total += int(counted.group(1))
    return total


def _expand_numbers(spec: str) -> list[int]:
    numbers: list[int] = []
    for span in filter(None, spec.split(",")):
        first, _, last = span.partition("-")
        if not first.isdigit() or not (last or first).isdigit():
            raise SlurmParseError(f"not a list of numbers: {spec!r}")
        numbers += list(range(int(first), int(last or first) + 1))
    return numbers


def expand_counts(text: str) -> list[int]:
    """``SLURM_JOB_CPUS_PER_NODE``/``SLURM_TASKS_PER_NODE`` form: ``2(x3),1`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for part in filter(None, text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise SlurmParseError(f"not a Slurm count list: {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def expand_nodes(nodelist: str, fallback: Callable[[str], list[str]] | None = None) -> list[str]:
    """A Slurm host list (``node[01-03],gpu7``, ``rack[1-2]-n[01-08]``) as names, in its order; the few
    forms NodeSet refuses and Slurm reads (``node[01-3]``, whose ends differ in width, or a name with
    ``!``, ``&`` or ``^``) go to ``fallback`` (``scontrol show hostnames``)."""
    try:
        return expand(nodelist)
    except ValueError:
        if fallback is None:
            raise SlurmParseError(f"cannot read the host list {nodelist!r}") from None
        return fallback(nodelist)


def job_id_from_env(environ: Mapping[str, str]) -> str | None:
    """The allocation this process runs in, if any."""
    for name in ENV_JOB_ID:
        if environ.get(name):
            return environ[name]
    return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def parse_job(text: str, hostnames: Callable[[str], list[str]] | None = None) -> SlurmJobFacts:
    """``scontrol show job -d --oneliner JOBID`` -> the job's nodes, limits, GPUs and CPUs per node."""
    line = next((ln for ln in text.splitlines() if ln.strip().startswith("JobId=")), "")
    if not line:
        raise SlurmParseError(f"no JobId= record in scontrol's output: {text.strip()[:200]!r}")
    pairs = parse_record(line)
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    nodes = expand_nodes(fields.get("NodeList", ""), hostnames) if fields.get("NodeList", "(null)") != "(null)" \
        else []
    gpus: dict[str, int] = {}
    cpus: dict[str, int] = {}
    for i, (key, value) in enumerate(pairs):
        if key != "Nodes":
            continue
        group = dict(pairs[i + 1:i + 4])
        members = expand_nodes(value, hostnames)
        cpu_ids = group.get("CPU_IDs", "")
        for node in members:
            if cpu_ids and cpu_ids[0].isdigit():
                cpus[node] = len(_expand_numbers(cpu_ids))
            held = count_gpus(group.get("GRES", ""))
            if held:
                gpus[node] = held
    limit = parse_duration(fields.get("TimeLimit", "UNLIMITED"))
    run_time = parse_duration(fields.get("RunTime", "0"))
    tasks_field = fields.get("NtasksPerN:B:S:C", "0").split(":")[0]
    tasks = _int(tasks_field)
    cpus_per_task = _int(fields.get("CPUs/Task"))
    return SlurmJobFacts(
        job_id=fields.get("JobId", ""), partition=fields.get("Partition", ""), nodes=nodes,
        time_limit_s=limit, time_left_s=None if limit is None or run_time is None else max(0, limit - run_time),
        cpus_per_task=cpus_per_task if cpus_per_task and cpus_per_task > 1 else None,
        gpus_per_node=gpus, cpus_per_node=cpus, tasks_per_node=tasks if tasks else None)


def parse_nodes(text: str) -> list[SlurmNodeFacts]:
    """``scontrol show node --oneliner`` -> one SlurmNodeFacts per ``NodeName=`` record."""
    nodes = []
    for line in text.splitlines():
        if not line.strip().startswith("NodeName="):
            continue
        fields: dict[str, str] = {}
        for key, value in parse_record(line):
            fields.setdefault(key, value)
        reason, user, when = _split_reason(fields.get("Reason", ""))
        gres = fields.get("Gres", "(null)")
        cpus = _int(fields.get("CPUTot"))
        nodes.append(SlurmNodeFacts(
            name=fields["NodeName"], state=fields.get("State", "UNKNOWN"), reason=reason, reason_user=user,
            reason_time=when, address=fields.get("NodeAddr", ""),
            cpus=cpus if cpus is not None else Unavailable("no CPUTot in scontrol's record"),
            gpus=count_gpus(gres), partitions=[p for p in fields.get("Partitions", "").split(",") if p]))
    return nodes


def _split_reason(text: str) -> tuple[str, str, str]:
    """``bad DIMM [root@2024-05-01T10:00:00]`` -> ("bad DIMM", "root", "2024-05-01T10:00:00")."""
    match = re.fullmatch(r"(.*?)\s*\[([^@\]]*)@([^\]]*)\]\s*", text)
    if match:
        return match.group(1), match.group(2), match.group(3)
    return ("" if text in ("(null)", "none") else text), "", ""


#: ``sinfo -R`` format clusterkit asks for: node, user, time, then the reason (which may hold anything).
SINFO_REASONS_FORMAT = "%N|%u|%H|%E"


def parse_reasons(text: str, hostnames: Callable[[str], list[str]] | None = None
                  ) -> dict[str, tuple[str, str, str]]:
    """``sinfo -R -h -o '%N|%u|%H|%E'`` -> node -> (reason, user, time)."""
    reasons: dict[str, tuple[str, str, str]] = {}
    for line in text.splitlines():
        parts = line.split("|", 3)
        if len(parts) != 4:
            continue
        nodes, user, when, reason = (p.strip() for p in parts)
        for node in expand_nodes(nodes, hostnames):
            reasons[node] = (reason, user, when)
    return reasons


def unusable(node: SlurmNodeFacts) -> list[str]:
    """The state words that keep work off this node (``DRAIN``, ``DOWN``, ``NOT_RESPONDING``...)."""
    words = [w for w in re.split(r"[+*~#!%$@^-]", node.state.upper()) if w]
    found = [w for w in words if w in UNUSABLE_STATES]
    if node.state.endswith("*") and "NOT_RESPONDING" not in found:
        found.append("NOT_RESPONDING")  # sinfo's short form: `idle*`
    return found


def node_facts(nodes_text: str, reasons_text: str, hostnames: Callable[[str], list[str]] | None = None
               ) -> list[SlurmNodeFacts]:
    """Nodes from scontrol, with sinfo -R's reasons (and who set them, when) where it has them."""
    nodes = parse_nodes(nodes_text)
    reasons = parse_reasons(reasons_text, hostnames)
    for node in nodes:
        if node.name in reasons:
            node.reason, node.reason_user, node.reason_time = reasons[node.name]
    return nodes


def slurm_facts(version: Maybe[str], job: Maybe[SlurmJobFacts], nodes: Maybe[list[SlurmNodeFacts]],
                order: Sequence[str] = ()) -> SlurmFacts:
    """SlurmFacts with the job's nodes first, in ``order``, then the rest of the partition."""
    if not isinstance(nodes, Unavailable) and order:
        rank = {name: i for i, name in enumerate(order)}
        nodes = sorted(nodes, key=lambda n: rank.get(n.name, len(rank)))
    return SlurmFacts(version=version, job=job, nodes=nodes)
