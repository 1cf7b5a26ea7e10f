"""Slurm as a second transport beside SSH: the allocation, one srun step over its nodes, sbcast.

Where SSH opens one session per node from the head, Slurm already reaches every node through its
own daemons: ``srun`` starts one task per node through slurmd's tree and streams their output back,
``sbcast`` copies a file to every node of the job the same way. So the head's cost is a couple of
processes however many nodes there are.

- :func:`current_allocation` / :func:`request_allocation` (``salloc --no-shell``) / :func:`allocation`:
  the job, its nodes (``SLURM_JOB_NODELIST``), GPUs and CPUs per node (``scontrol show job -d``);
- :func:`run_on_nodes`: a shell command as one ``srun --ntasks-per-node=1`` step; each node's lines
  and exit code come back as a per-host value. A node whose task fails, whose launch fails, or that
  gives no answer before the deadline is a per-host error; the step never outlives the deadline;
- :func:`broadcast_file`: ``sbcast`` to every node of the job, then each node's copy checked.

Every Slurm command has a timeout; the caller's deadline bounds everything.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from clusterkit.cluster.remote.fanout import HostResult, ProgressListener
from clusterkit.cluster.remote.ssh import RemoteError
from clusterkit.core.hostlist import compress
from clusterkit.core.slurmrequest import (
    SlurmRequest,
    grantable,
    parse_partitions,
    request_environment,
    requested_shape,
    shortfall,
)
from clusterkit.core.slurmstate import (
    SINFO_REASONS_FORMAT,
    SlurmParseError,
    expand_nodes,
    job_id_from_env,
    node_facts,
    parse_job,
)
from clusterkit.node.facts import SlurmJobFacts, SlurmNodeFacts

#: Printed by each task before the command (its Slurm node name) and after it (the exit status).
NODE_MARK = "@@clusterkit-node@@"
EXIT_MARK = "@@clusterkit-exit@@"
#: Inherited from an allocation, these would change the shape of clusterkit's own steps (srun reads
#: them as defaults for options clusterkit sets itself, or that conflict with one task per node).
STEP_SHAPING_VARIABLES = (
    "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_NTASKS_PER_NODE", "SLURM_NTASKS_PER_SOCKET", "SLURM_NTASKS_PER_CORE",
    "SLURM_CPUS_PER_TASK", "SRUN_CPUS_PER_TASK", "SLURM_GPUS", "SLURM_GPUS_PER_TASK", "SLURM_GPUS_PER_NODE",
    "SLURM_TRES_PER_TASK", "SLURM_CPUS_PER_GPU", "SLURM_MEM_PER_GPU", "SLURM_DISTRIBUTION", "SLURM_EXCLUSIVE",
    "SLURM_EXACT", "SLURM_CPU_BIND",
)
_LABELLED = re.compile(rb"^\s*(\d+): ?(.*)$")
#: srun cuts a task's output into pieces of about a kilobyte, each printed as a line of its own: tasks fold
#: longer lines (bytes, with this mark on every piece but the last) and the head joins them again.
FOLD_MARK = b"@@clusterkit+"
FOLD_BYTES = 900
_FOLD = (f"LC_ALL=C awk '{{ while (length($0) > {FOLD_BYTES}) {{ print \"{FOLD_MARK.decode()}\" "
         f"substr($0, 1, {FOLD_BYTES}); fflush(); $0 = substr($0, {FOLD_BYTES + 1}) }} print; fflush() }}'")
_SRUN_NODE = re.compile(r"(?:on node |node[= ])(\S+?)[:,.]?(?:\s|$)|^srun: error: (\S+): task \d+")
GRACE_S = 3.0


class SlurmError(RemoteError):
    """A Slurm command failed as a whole (no allocation, slurmctld unreachable, srun missing)."""


@dataclass(frozen=True)
class Allocation:
    """A Slurm job whose nodes clusterkit runs on; ``owned`` when clusterkit allocated it (and releases it)."""

    job: SlurmJobFacts
    owned: bool = False

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def nodes(self) -> list[str]:
        return list(self.job.nodes)

    def slots(self, node: str) -> int:
        """DeepSpeed slots on ``node``: the GPUs the job holds there, else its tasks per node, else 1."""
        gpus = self.job.gpus_per_node.get(node, 0)
        return gpus or self.job.tasks_per_node or 1


def slurm_command(argv: Sequence[str], timeout_s: float, environ: Mapping[str, str] | None = None) -> str:
    """Run a Slurm client command; its stdout, or SlurmError with what it said."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False,
                              stdin=subprocess.DEVNULL, env=dict(environ) if environ is not None else None)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} is not installed here", fix="run clusterkit where Slurm's client commands "
                         "are (a login node of the cluster), or use a hostfile over SSH") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{shlex.join(argv)}` gave no answer within {timeout_s:g}s",
                         fix="is slurmctld up? `scontrol ping`") from None
    if done.returncode != 0:
        said = " | ".join(done.stderr.strip().splitlines()[-3:]) or f"exit {done.returncode}"
        raise SlurmError(f"`{shlex.join(argv)}` failed: {said}")
    return done.stdout


def hostnames(nodelist: str, timeout_s: float = 15.0) -> list[str]:
    """``scontrol show hostnames``: for the host-list forms NodeSet refuses (see ``expand_nodes``)."""
    return slurm_command(["scontrol", "show", "hostnames", nodelist], timeout_s).split()


def describe_job(job_id: str, timeout_s: float = 15.0) -> SlurmJobFacts:
    """The job's nodes, limits and per-node GPUs/CPUs (``scontrol show job -d --oneliner``)."""
    text = slurm_command(["scontrol", "show", "job", "-d", "--oneliner", job_id], timeout_s)
    try:
        job = parse_job(text, lambda nodes: hostnames(nodes, timeout_s))
    except SlurmParseError as exc:
        raise SlurmError(f"cannot read job {job_id}: {exc}") from None
    if not job.nodes:
        raise SlurmError(f"job {job_id} has no nodes yet (pending?)", fix=f"squeue -j {job_id}")
    return job


def in_allocation(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs inside a Slurm allocation (``SLURM_JOB_ID`` set)."""
    return job_id_from_env(os.environ if environ is None else environ) is not None


def current_allocation(environ: Mapping[str, str] | None = None, timeout_s: float = 15.0) -> Allocation:
    """The allocation this process runs in; its node order is ``SLURM_JOB_NODELIST``'s."""
    env = os.environ if environ is None else environ
    job_id = job_id_from_env(env)
    if job_id is None:
        raise SlurmError("not inside a Slurm allocation (SLURM_JOB_ID is not set)",
                         fix="run inside salloc/sbatch, or pass --slurm (with --partition/--nodes) to allocate")
    job = describe_job(job_id, timeout_s)
    listed = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if listed:
        order = expand_nodes(listed, lambda nodes: hostnames(nodes, timeout_s))
        if sorted(order) == sorted(job.nodes):
            job.nodes = order
    return Allocation(job)


def read_nodes(timeout_s: float = 15.0, partition: str | None = None) -> list[SlurmNodeFacts]:
    """Every node Slurm shows, with its state, partitions, and the reason an admin gave (who, when)."""
    shown = slurm_command(["scontrol", "show", "node", "--oneliner"], timeout_s)
    reasons = slurm_command(["sinfo", "-R", "-h", "-N", "-o", SINFO_REASONS_FORMAT,
                             *([f"--partition={partition}"] if partition else [])], timeout_s)
    try:
        return node_facts(shown, reasons, lambda names: hostnames(names, timeout_s))
    except SlurmParseError as exc:
        raise SlurmError(f"cannot read Slurm's nodes: {exc}") from None


def check_can_be_had(request: SlurmRequest, environ: Mapping[str, str] | None = None,
                     timeout_s: float = 15.0) -> bool:
    """SlurmError, before anything waits, when Slurm cannot grant ``request`` now: too few nodes of the
    partition take jobs (drained, down), a node it names is one of them, or the partition is not up. The
    error names them with Slurm's reasons and offers what can be had. Busy nodes pass (salloc waits for
    them), and so does anything Slurm's state does not tell (salloc judges it). True when it was judged:
    enough nodes take jobs."""
    shape = requested_shape(request, os.environ if environ is None else environ)
    if shape is None:
        return False
    try:
        partitions = parse_partitions(slurm_command(["scontrol", "show", "partition", "--oneliner"], timeout_s))
        nodes = read_nodes(timeout_s)
    except SlurmError:
        return False  # salloc says what is wrong in its own words
    short = shortfall(shape, partitions, nodes)
    if short is not None:
        raise SlurmError(short.message, fix=short.fix)
    return grantable(shape, partitions, nodes)


def request_allocation(request: SlurmRequest, timeout_s: float | None = None) -> Allocation:
    """``salloc --no-shell``: a job held for clusterkit until :func:`release_allocation`.

    Slurm's state is read first: a request it cannot grant now fails at once (:func:`check_can_be_had`)
    instead of waiting out ``request.wait_s``. salloc runs in this process's environment less the
    variables of a job clusterkit is not in (user configuration such as ``SLURM_CONF`` stays).
    """
    judged = check_can_be_had(request)
    wait = max(1, int(request.wait_s))
    argv = ["salloc", "--no-shell", "--no-kill", f"--immediate={wait}", "--job-name=clusterkit",
            *request.salloc_args()]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s or wait + 30, check=False,
                              stdin=subprocess.DEVNULL, env=request_environment(os.environ))
    except FileNotFoundError:
        raise SlurmError("salloc is not installed here", fix="run clusterkit on a login node of the Slurm "
                         "cluster, or use a hostfile over SSH") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"salloc gave no allocation within {timeout_s}s") from None
    said = done.stderr + done.stdout
    granted = re.search(r"job allocation (\d+)", said)
    if done.returncode != 0 or not granted:
        why = " | ".join(line.removeprefix("salloc: ") for line in said.strip().splitlines()[-2:]) or "no reason"
        raise SlurmError(f"`{shlex.join(argv)}` got no allocation: {why}", fix=_salloc_fix(said, wait, judged))
    job_id = granted.group(1)
    try:
        return Allocation(describe_job(job_id), owned=True)
    except BaseException:
        release_allocation(Allocation(SlurmJobFacts(job_id, "", [], None, None, None), owned=True))
        raise


def _salloc_fix(said: str, wait_s: int, judged: bool) -> str:
    """What to do when salloc gave no job: it waited (when :func:`check_can_be_had` ``judged`` that enough
    nodes take jobs, they were busy), or it refused outright (no config, no slurmctld, a bad option), which
    no node's state explains."""
    if re.search(r"queued and waiting|Pending job allocation", said):
        if judged:
            return (f"the nodes that take jobs were busy for {wait_s}s: squeue shows the jobs holding them; "
                    "wait longer with --slurm-wait SECONDS")
        return "sinfo -R shows nodes that are down or drained and why; squeue shows what holds the rest"
    return ("fix what salloc says; `scontrol ping` and `sinfo` show whether this machine reaches Slurm (with "
            "SLURM_CONF set where its config is not at the default path)")


def release_allocation(alloc: Allocation) -> None:
    """Cancel a job clusterkit allocated (never one it found itself in)."""
    if alloc.owned:
        with suppress(SlurmError):
            slurm_command(["scancel", alloc.job_id], 30)


@contextmanager
def allocation(request: SlurmRequest | None = None, environ: Mapping[str, str] | None = None) -> Iterator[Allocation]:
    """The allocation this process runs in, or else one made from ``request`` and released on leaving."""
    if in_allocation(environ):
        yield current_allocation(environ)
        return
    alloc = request_allocation(request or SlurmRequest())
    try:
        yield alloc
    finally:
        release_allocation(alloc)


# ---------------------------------------------------------------------------------------- steps


@dataclass
class TaskOutput:
    """What one node's task printed, and how it ended."""

    node: str
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    #: The command's exit status; None when the task never reported an end.
    exit_code: int | None = None
    #: Head clock when the task's end was read.
    finished_at: float = 0.0


def step_script(command: str) -> str:
    """The task's shell script: its node name, the command (in a subshell, so its ``exit`` ends only
    itself) and its exit status, stdout folded into pieces srun passes whole."""
    return (f'printf "%s %s\\n" {NODE_MARK} "$SLURMD_NODENAME"; {{ ( {command}\n); '
            f'printf "%s %s\\n" {EXIT_MARK} "$?"; }} | {_FOLD}')


def srun_argv(alloc: Allocation, nodes: Sequence[str], script: str, timeout_s: float,
              extra: Sequence[str] = ()) -> list[str]:
    """``srun`` for one task per node of ``nodes``, sharing the job's resources with its running steps."""
    minutes = max(1, int(timeout_s // 60) + 1)  # Slurm's own backstop, should the head lose srun
    left = alloc.job.time_left_s
    limit = [f"--time={minutes}"] if left is None or minutes * 60 <= left else []
    gpus = min((alloc.job.gpus_per_node.get(n, 0) for n in nodes), default=0)
    return ["srun", f"--jobid={alloc.job_id}", "--overlap", f"--nodes={len(nodes)}", f"--ntasks={len(nodes)}",
            "--ntasks-per-node=1", f"--nodelist={compress(nodes)}", "--label", "--kill-on-bad-exit=0", *limit,
            "--chdir=/", "--job-name=clusterkit", *([f"--gres=gpu:{gpus}"] if gpus else []),
            *extra, "/bin/sh", "-c", script]


def step_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the allocation's step-shaping variables (tasks get their own)."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k not in STEP_SHAPING_VARIABLES}


class _Step:
    """One srun's output, read as it comes: lines per task, tasks mapped to nodes by their first line."""

    def __init__(self, nodes: Sequence[str], progress: ProgressListener | None) -> None:
        self.by_task: dict[int, TaskOutput] = {}
        self.by_node: dict[str, TaskOutput] = {}
        self.srun_lines: list[str] = []
        self.folded: dict[tuple[int, str], bytes] = {}
        self.nodes = set(nodes)
        self.progress = progress
        self.lock = threading.Lock()
        self.all_done = threading.Event()

    def feed(self, raw: bytes, stream: str) -> None:
        match = _LABELLED.match(raw)
        with self.lock:
            if not match:
                self.srun_lines.append(raw.decode("utf-8", "replace"))
                return
            task, piece = int(match.group(1)), match.group(2)
            key = (task, stream)
            if piece.startswith(FOLD_MARK):
                self.folded[key] = self.folded.get(key, b"") + piece[len(FOLD_MARK):]
                return
            text = (self.folded.pop(key, b"") + piece).decode("utf-8", "replace")
            output = self.by_task.setdefault(task, TaskOutput(node=""))
            if stream == "stdout" and text.startswith(NODE_MARK) and not output.node:
                output.node = text[len(NODE_MARK):].strip()
                self.by_node[output.node] = output
                return
            if stream == "stdout" and text.startswith(EXIT_MARK):
                status = text[len(EXIT_MARK):].strip()
                output.exit_code = int(status) if status.lstrip("-").isdigit() else 255
                output.finished_at = time.time()
                finished = output
            else:
                (output.stdout if stream == "stdout" else output.stderr).append(text)
                return
            if all(n in self.by_node and self.by_node[n].exit_code is not None for n in self.nodes):
                self.all_done.set()
        if self.progress and finished.node:
            self.progress.update(finished.node, "ok" if finished.exit_code == 0 else "failed",
                                 "" if finished.exit_code == 0 else f"exit {finished.exit_code}")

    def srun_said(self, node: str) -> str:
        """srun's own error lines about ``node`` (launch failures, kills), joined."""
        said = []
        for line in self.srun_lines:
            for match in _SRUN_NODE.finditer(line):
                if node in (match.group(1), match.group(2)):
                    said.append(line.removeprefix("srun: error: ").removeprefix("srun: "))
                    break
        return " | ".join(dict.fromkeys(said))


def _pump(stream: IO[bytes], step: _Step, name: str) -> None:
    for line in stream:
        step.feed(line.rstrip(b"\r\n"), name)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Abort the step: two SIGINTs within a second make srun kill every task; SIGKILL if it lingers."""
    for _ in range(2):
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
    try:
        proc.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(GRACE_S)


def _one_step(alloc: Allocation, nodes: Sequence[str], command: str, deadline: float,
              progress: ProgressListener | None, extra: Sequence[str],
              environ: Mapping[str, str] | None) -> tuple[_Step, bool, str]:
    """Run the step until every task ended, srun exited, or the deadline; (output, timed out, srun's stderr)."""
    step = _Step(nodes, progress)
    argv = srun_argv(alloc, nodes, step_script(command), max(1.0, deadline - time.monotonic()), extra)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=step_environment(environ), start_new_session=True)
    except FileNotFoundError:
        raise SlurmError("srun is not installed here", fix="run clusterkit where Slurm's client commands are") from None
    assert proc.stdout is not None and proc.stderr is not None
    readers = [threading.Thread(target=_pump, args=(proc.stdout, step, "stdout"), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, step, "stderr"), daemon=True)]
    for reader in readers:
        reader.start()
    timed_out = False
    while proc.poll() is None:
        if step.all_done.wait(0.05):
            break
        if time.monotonic() >= deadline:
            timed_out = True
            break
    if proc.poll() is None:
        try:
            proc.wait(1.0 if not timed_out else 0)  # all tasks ended: srun exits on its own
        except subprocess.TimeoutExpired:
            _stop(proc)
    for reader in readers:
        reader.join(GRACE_S)
    return step, timed_out, " | ".join(step.srun_lines[-3:])


def run_on_nodes(alloc: Allocation, command: str, timeout_s: float, nodes: Sequence[str] | None = None,
                 progress: ProgressListener | None = None, srun_args: Sequence[str] = (),
                 environ: Mapping[str, str] | None = None) -> dict[str, HostResult[TaskOutput]]:
    """Run the shell ``command`` once on every node (default: all of the allocation's) as one srun step.

    Each node's stdout/stderr lines and exit status come back as its value, whatever the status (the
    caller judges it). A node whose task never ended (launch failed, node died, deadline passed) is a
    per-host error saying what srun said about it. When srun gives up on the whole step because of some
    nodes (a failed launch aborts it), the nodes it took down with them are run once more on their own.
    Nothing outlives ``timeout_s``. Results keep ``nodes`` order.
    """
    targets = list(nodes if nodes is not None else alloc.nodes)
    started = time.monotonic()
    deadline = started + timeout_s
    results: dict[str, HostResult[TaskOutput]] = {}
    pending = list(targets)
    for attempt in range(2):
        step, timed_out, srun_tail = _one_step(alloc, pending, command, deadline, progress, srun_args, environ)
        blamed = []
        for node in pending:
            output = step.by_node.get(node)
            if output is not None and output.exit_code is not None:
                results[node] = HostResult(node, value=output, seconds=time.monotonic() - started)
                continue
            said = step.srun_said(node)
            if said:
                blamed.append(node)
                results[node] = HostResult(node, error=f"srun on {node}: {said}", fix=_node_fix(node),
                                           seconds=time.monotonic() - started)
        pending = [n for n in pending if n not in results]
        if not pending or timed_out or attempt == 1 or not blamed or time.monotonic() >= deadline:
            break
    for node in pending:
        waited = time.monotonic() - started
        late = waited >= timeout_s - 0.5
        why = (f"{node} gave no answer within {timeout_s:g}s (frozen, overloaded, or slurmd not responding?)"
               if late else f"{node}'s task ended without a status ({srun_tail or 'srun said nothing'})")
        results[node] = HostResult(node, error=why, fix=_node_fix(node), seconds=waited)
        if progress:
            progress.update(node, "timed out" if late else "failed", why)
    return {n: results[n] for n in targets}


def _node_fix(node: str) -> str:
    return f"scontrol show node {node}; sinfo -R -n {node} (is it down or drained, and why?)"


# ----------------------------------------------------------------------------------------- sbcast


def broadcast_file(alloc: Allocation, source: Path, dest: str, timeout_s: float, nodes: Sequence[str] | None = None,
                   progress: ProgressListener | None = None, compress_with: str | None = None,
                   environ: Mapping[str, str] | None = None) -> dict[str, HostResult[str]]:
    """``sbcast`` ``source`` to ``dest`` (an absolute path, same on every node; its directory must exist)
    on every node of the job, then check each node's copy has ``source``'s size. Per node: ``dest``,
    or an error. ``compress_with``: sbcast's ``--compress`` (lz4, zlib...)."""
    targets = list(nodes if nodes is not None else alloc.nodes)
    started = time.monotonic()
    size = source.stat().st_size
    argv = ["sbcast", f"--jobid={alloc.job_id}", "--force", "--preserve",
            *([f"--compress={compress_with}"] if compress_with else []), str(source), dest]
    sbcast_error = ""
    try:
        slurm_command(argv, timeout_s, step_environment(environ))
    except SlurmError as exc:
        sbcast_error = str(exc)
    left = max(5.0, timeout_s - (time.monotonic() - started))
    quoted = shlex.quote(dest)
    checks = run_on_nodes(alloc, f"stat -c %s {quoted} 2>&1", left, targets, progress, environ=environ)
    results: dict[str, HostResult[str]] = {}
    for node, check in checks.items():
        seconds = time.monotonic() - started
        if not check.ok or check.value is None:
            results[node] = HostResult(node, error=check.error, fix=check.fix, seconds=seconds)
            continue
        found = check.value.stdout[-1].strip() if check.value.stdout else ""
        if check.value.exit_code == 0 and found == str(size):
            results[node] = HostResult(node, value=dest, seconds=seconds)
        else:
            why = f"{dest} has {found} bytes of {size}" if found.isdigit() else f"{dest} is missing ({found})"
            results[node] = HostResult(node, error=f"sbcast to {node} failed: {why}"
                                       + (f"; {sbcast_error}" if sbcast_error else ""),
                                       fix=f"does the directory of {dest} exist on {node}, with room? "
                                           f"{_node_fix(node)}", seconds=seconds)
    return results
