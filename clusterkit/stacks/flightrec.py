"""The flight recorder over the nodes: install the rank hook for a launch, ask a live job for fresh dumps,
read every rank's dump from every node, and name the first collective the ranks disagree on.

Written once against :class:`~clusterkit.cluster.Nodes`: one shell command per node, whatever the transport.
"""

from __future__ import annotations

import base64
import os
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clusterkit.core.findings import CLUSTER_HOST, Finding, Outcome, Severity
from clusterkit.core.flightrec import (
    DEFAULT_BUFFER_SIZE,
    DESYNC_ID,
    DUMP_PREFIX,
    FLIGHTREC_SUBDIR,
    REQUEST_FILE,
    RUNS_ROOT,
    Disagreement,
    DumpError,
    RankTrace,
    disagreement_finding,
    first_disagreement,
    load_dump,
)

if TYPE_CHECKING:
    from clusterkit.cluster import CommandOutput, GroupResult, Nodes

HOOK_SOURCE = Path(__file__).resolve().parents[1] / "node" / "flightrec_hook.py"
#: A launch removes this user's job directories untouched for this many days (their dumps with them).
KEEP_DAYS = 14
#: How long a node waits after asking its ranks for a dump: their hooks poll once a second.
ANSWER_WAIT_S = 2.5
_FILE_MARK = "@@clusterkit-fr "


def new_job_id(now: float | None = None) -> str:
    """A job id that sorts by time: ``20261204-181502-3f9a``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{os.urandom(2).hex()}"


def job_flightrec_dir(job_id: str, root: str = RUNS_ROOT) -> str:
    """The job's flight-recorder directory on every node."""
    return f"{root.rstrip('/')}/{job_id}/{FLIGHTREC_SUBDIR}"


def hook_source(buffer_size: int = DEFAULT_BUFFER_SIZE) -> str:
    """The rank hook's text with ``buffer_size`` entries per rank."""
    text = HOOK_SOURCE.read_text(encoding="utf-8")
    return text.replace('BUFFER_SIZE = "2000"', f'BUFFER_SIZE = "{int(buffer_size)}"', 1)


def install_hook(nodes: Nodes, directory: str, timeout_s: float, buffer_size: int = DEFAULT_BUFFER_SIZE
                 ) -> GroupResult[CommandOutput]:
    """Write the rank hook as ``directory/sitecustomize.py`` on every node (one command each)."""
    payload = base64.b64encode(hook_source(buffer_size).encode()).decode()
    where, parent = shlex.quote(directory), shlex.quote(directory.rstrip("/").rsplit("/", 2)[0])
    # The root is shared by every user (sticky, as /tmp); the job's directories must be this user's alone,
    # or anyone who made them first could replace the hook the ranks import.
    # The shared root itself must be what /tmp is: a real directory of root's or this user's, and sticky
    # if others may write it (else another user could rename this user's job directory away).
    command = (f"mkdir -p -m 1777 {parent} 2>/dev/null; "
               f"if [ -L {parent} ] || [ ! -d {parent} ] || {{ [ ! -O {parent} ] && "
               f"[ \"$(stat -c %u {parent})\" != 0 ]; }} || {{ [ -n \"$(find {parent} -maxdepth 0 -perm /002)\" ] "
               f"&& [ -z \"$(find {parent} -maxdepth 0 -perm -1000)\" ]; }}; then "
               f"echo \"{parent} is a link, another user's, or writable by others without the sticky bit\" >&2; "
               f"exit 3; fi; find {parent} -mindepth 1 -maxdepth 1 -type d -user \"$(id -u)\" -mtime +{KEEP_DAYS} "
               f"-exec rm -rf {{}} + 2>/dev/null; mkdir -p -m 700 {where} && "
               f"for d in {where} $(dirname {where}); do if [ ! -O \"$d\" ] || "
               f"[ -n \"$(find \"$d\" -maxdepth 0 -perm /022)\" ]; then "
               f"echo \"$d belongs to another user or others may write it\" >&2; exit 3; fi; done && "
               f"printf %s {payload} | base64 -d > {where}/sitecustomize.py.partial && "
               f"mv {where}/sitecustomize.py.partial {where}/sitecustomize.py")
    return nodes.run(command, timeout_s)


def hook_pythonpath(directory: str, cwd: str, pythonpath: str | None) -> str:
    """The ranks' ``PYTHONPATH``: the launch directory first (as DeepSpeed's runner puts it), the hook
    next, then what was there."""
    return ":".join(p for p in (cwd, directory, pythonpath) if p)


@dataclass
class FlightReport:
    """Every rank's dump that could be read, and what could not."""

    traces: list[RankTrace] = field(default_factory=list)
    #: The directory read on each node that answered.
    directories: dict[str, str] = field(default_factory=dict)
    #: Nodes that did not answer, or had no directory: why.
    unreachable: dict[str, str] = field(default_factory=dict)
    #: Ranks whose dump is older than the request (the process did not answer: stopped, or torch not up).
    stale: dict[int, str] = field(default_factory=dict)
    #: Files that are not dumps: ``host:path`` -> why.
    unreadable: dict[str, str] = field(default_factory=dict)
    asked: bool = False
    #: Nodes whose newest job was another than the one read (the one most nodes ran): their newest.
    other_jobs: dict[str, str] = field(default_factory=dict)

    @property
    def disagreement(self) -> Disagreement | None:
        return first_disagreement(self.traces)

    def findings(self) -> list[Finding]:
        """The desync (if any), the ranks that did not answer and the nodes that could not be read."""
        found: list[Finding] = []
        disagreement = self.disagreement
        if disagreement is not None:
            found.append(disagreement_finding(disagreement))
        for rank, host in sorted(self.stale.items()):
            found.append(Finding("rank-unresponsive", Severity.ERROR, Outcome.FAIL, host, f"rank {rank}",
                                 f"rank {rank} on {host} did not write a fresh flight-recorder dump when asked "
                                 "(its hook polls once a second): the process is stopped, frozen, gone, or never "
                                 "initialised torch.distributed; its last dump is the one compared",
                                 "a rank that does not run blocks every collective of the others",
                                 f"look at the process on {host} (ps -o stat: T is stopped, D is stuck in the "
                                 "kernel); drain the node if it is frozen"))
        for host, newest in sorted(self.other_jobs.items()):
            read = self.directories.get(host, "nothing (it does not have that job)")
            found.append(Finding("flightrec-other-job", Severity.WARNING, Outcome.PASS, host, "",
                                 f"{host}'s newest job is {newest}, not the one most nodes ran; read {read}",
                                 "dumps of two jobs are never compared with each other",
                                 "give --job ID to read one job by its id"))
        for host, why in sorted(self.unreachable.items()):
            found.append(Finding("flightrec-unread", Severity.WARNING, Outcome.FAIL, host, "",
                                 f"no flight-recorder dumps read from {host}: {why}",
                                 "its ranks are left out of the comparison",
                                 "check the node by hand; a node that does not answer is a suspect itself"))
        if not found and self.traces:
            found.append(Finding(DESYNC_ID, Severity.INFO, Outcome.PASS, CLUSTER_HOST, "",
                                 f"{len(self.traces)} rank(s) agree on every recorded collective", "", ""))
        return found


def read_command(run_dir: str | None, ask: bool, wait_s: float = ANSWER_WAIT_S) -> str:
    """The shell command each node runs: find the directory, ask for dumps, print each as base64."""
    if run_dir is None:  # this user's newest job
        find = (f"d=; for c in $(ls -1dt {RUNS_ROOT}/*/{FLIGHTREC_SUBDIR} 2>/dev/null); do "
                'if [ -O "$c" ]; then d=$c; break; fi; done')
    elif "/" in run_dir:
        find = f"d={shlex.quote(run_dir.rstrip('/'))}"
        find += f"; [ -d \"$d/{FLIGHTREC_SUBDIR}\" ] && d=\"$d/{FLIGHTREC_SUBDIR}\""
    else:
        find = f"d={shlex.quote(job_flightrec_dir(run_dir))}"
    lines = [find, 'if [ -z "$d" ] || [ ! -d "$d" ]; then echo "no flight-recorder directory ${d:-under '
             f'{RUNS_ROOT}}}" >&2; exit 3; fi', f'echo "{_FILE_MARK}dir $d"']
    if ask:
        lines += [f'touch "$d/{REQUEST_FILE}"', f"sleep {wait_s}"]
    lines += [f'asked=$(stat -c %Y "$d/{REQUEST_FILE}" 2>/dev/null || echo 0)',
              f'for f in "$d"/{DUMP_PREFIX}*; do case "$f" in *.partial) continue;; esac; [ -f "$f" ] || continue; '
              f'echo "{_FILE_MARK}file $(basename "$f") $(stat -c %Y "$f") $asked"; base64 -w0 "$f"; echo; done']
    return "\n".join(lines)


def parse_reply(host: str, stdout: str, report: FlightReport, ask: bool) -> None:
    """Add one node's dumps (as :func:`read_command` prints them) to ``report``."""
    lines = stdout.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith(_FILE_MARK):
            continue
        words = line[len(_FILE_MARK):].split()
        if words[0] == "dir" and len(words) > 1:
            report.directories[host] = " ".join(words[1:])
            continue
        if words[0] != "file" or len(words) < 4:
            continue
        name, written, asked = words[1], int(words[2]), int(words[3])
        rank_text = name[len(DUMP_PREFIX):]
        if not rank_text.isdigit():
            continue
        rank = int(rank_text)
        if any(t.rank == rank for t in report.traces):  # a /tmp shared by several nodes shows each dump to all
            continue
        payload = lines[index + 1] if index + 1 < len(lines) else ""
        try:
            report.traces.append(load_dump(base64.b64decode(payload), rank, host))
        except (DumpError, ValueError) as exc:
            report.unreadable[f"{host}:{name}"] = str(exc)
            continue
        if ask and written < asked:
            report.stale[rank] = host


def read_flight_records(nodes: Nodes, run_dir: str | None, timeout_s: float, *, ask: bool = True,
                        wait_s: float = ANSWER_WAIT_S) -> FlightReport:
    """Every rank's dump from every node: ``run_dir`` a job id, a directory, or None for each node's newest
    job. ``ask`` first asks live ranks for a fresh dump (a rank that does not write one is named stale)."""
    report = FlightReport(asked=ask)
    deadline = timeout_s + (wait_s if ask else 0.0)
    _gather(report, nodes.run(read_command(run_dir, ask, wait_s), deadline), ask)
    if run_dir is None:
        odd = _other_jobs(report)
        if odd:  # read the job most nodes ran on the nodes whose newest job is another one
            chosen = next(iter(odd.values()))[1]
            for host in odd:
                report.directories.pop(host, None)
                report.traces = [t for t in report.traces if t.host != host]
                report.stale = {r: h for r, h in report.stale.items() if h != host}
                report.unreadable = {k: v for k, v in report.unreadable.items() if not k.startswith(f"{host}:")}
            report.other_jobs = {host: newest for host, (newest, _) in odd.items()}
            _gather(report, nodes.run(read_command(chosen, ask, wait_s), deadline, hosts=list(odd)), ask)
    report.traces.sort(key=lambda t: t.rank)
    return report


def _gather(report: FlightReport, results: GroupResult[CommandOutput], ask: bool) -> None:
    for host, result in results.items():
        output = result.value
        if not result.ok or output is None:
            report.unreachable[host] = result.error or "no answer"
        elif not output.ok:
            report.unreachable[host] = output.tail(1)
        else:
            parse_reply(host, output.stdout, report, ask)


def _other_jobs(report: FlightReport) -> dict[str, tuple[str, str]]:
    """Nodes whose newest job is not the one most nodes ran (ties: the newer), each with (its job, that job)."""
    jobs = {host: directory.rstrip("/").rsplit("/", 2)[-2] for host, directory in report.directories.items()}
    if len(set(jobs.values())) < 2:
        return {}
    count = Counter(jobs.values())
    chosen = max(count, key=lambda job: (count[job], job))
    return {host: (job, chosen) for host, job in jobs.items() if job != chosen}


@dataclass(frozen=True)
class RecorderSetup:
    """The flight recorder prepared for one launch: where its dumps go, what the ranks get, who lacks it."""

    job_id: str
    directory: str
    #: Variables for :class:`~clusterkit.cluster.LaunchStyle`'s ``exports`` (the hook first on PYTHONPATH).
    exports: dict[str, str]
    #: Nodes the hook could not be written to: why.
    failed: dict[str, str]


def prepare_recorder(nodes: Nodes, cwd: str, pythonpath: str | None, timeout_s: float, *,
                     entries: int = DEFAULT_BUFFER_SIZE, job_id: str | None = None) -> RecorderSetup:
    """Install the rank hook for a new job on every node and say what the ranks' environment needs."""
    job = job_id or new_job_id()
    directory = job_flightrec_dir(job)
    failed = {}
    for host, result in install_hook(nodes, directory, timeout_s, entries).items():
        if not result.ok or result.value is None:
            failed[host] = result.error or "no answer"
        elif not result.value.ok:
            failed[host] = result.value.tail(1)
    return RecorderSetup(job, directory, {"PYTHONPATH": hook_pythonpath(directory, cwd, pythonpath)}, failed)
