"""A supervised DeepSpeed launch: the ``deepspeed`` line run under a deadline, its output kept per node and rank.

    launch = Launch(argv=build_launch_line(plan), cwd=os.getcwd(), deadline_s=120, hosts=["node1", "node2"],
                    run_id=run_id)
    outcome = supervise(launch, cleanup=kill_remote_ranks, on_line=print)

- The runner runs in its own session; its output is read line by line as it comes, each line split
  into the node (pdsh's ``host: `` prefix, srun's ``--label`` task number, or the only host of a local
  launch), the rank (the workload scripts' ``[ck:rank=R] `` tag) and the text.
- Past the deadline, or ``grace_s`` after a node's launcher reported a failed rank (the others then
  usually wait on it in a collective), the whole process group is killed (runner, pdsh, ssh and,
  for a local launch, the ranks), then ``cleanup(run_id)`` kills the ranks left on the nodes by the
  run id every workload carries in its arguments. So one hung rank never hangs the command.
- Nothing here knows what the workload is: results and progress are found in the lines by the
  markers of :mod:`clusterkit.workloads.scripts.workload_io`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import IO, Any

from clusterkit.workloads.scripts.workload_io import DONE, PROGRESS, RESULT

RUN_ID_FLAG = "--ck-run-id"
_RANK_TAG = re.compile(r"^\[ck:rank=(\d+)\] ?")
#: DeepSpeed's launch.py, per node, when a rank ends badly (it then kills that node's other ranks).
_RANK_FAILED = re.compile(r"exits with return code = (-?\d+)")
#: pdsh, on the head, when a node's remote command ended badly.
_PDSH_NODE_FAILED = re.compile(r"^pdsh@[^:]+: ([^:\s]+): ssh exited with exit code (\d+)")
#: srun, on the head, when a node's task (its launch.py) ended badly.
_SRUN_TASK_FAILED = re.compile(r"^srun: error: ([^:\s]+): task \d+: Exited with exit code (\d+)")
#: srun --label's prefix: the task's number (one task per node, in the step's node order).
_SRUN_LABEL = re.compile(r"^\s*(\d+): ")


def new_run_id() -> str:
    """A token unique to one run; it marks every process of the run on every node."""
    return secrets.token_hex(6)


@dataclass(frozen=True)
class LogLine:
    """One line of a run's output, with where it came from."""

    seconds: float
    stream: str
    #: The node that printed it (None: the head's own runner or pdsh).
    node: str | None
    #: The global rank that printed it (None: a launcher, or a rank before it tagged its output).
    rank: int | None
    text: str
    #: The line as the runner printed it (prefixes included).
    raw: str = ""

    def render(self) -> str:
        where = self.node or "head"
        if self.rank is not None:
            where += f" rank {self.rank}"
        return f"[{where}] {self.text}"


@dataclass
class Launch:
    """What to run and how long it may take."""

    argv: list[str]
    cwd: str
    deadline_s: float
    #: The hostfile names of the nodes (pdsh prefixes lines with these); one name means a local launch.
    hosts: list[str]
    run_id: str = field(default_factory=new_run_id)
    env: dict[str, str] | None = None
    #: How long the other ranks may go on once one node reported a failed rank.
    grace_s: float = 15.0
    #: A launch through ``srun --label``: task number -> node (None: pdsh's or a local launch's output).
    task_nodes: list[str] | None = None


@dataclass
class RunOutcome:
    """How a supervised run ended and everything it printed."""

    argv: list[str]
    run_id: str
    returncode: int | None
    duration_s: float
    lines: list[LogLine]
    timed_out: bool = False
    #: Killed after a rank failed and the rest did not finish within the grace period.
    stopped_after_failure: bool = False
    interrupted: bool = False
    #: host -> what the remote clean-up did (empty when nothing had to be killed).
    cleanup: dict[str, str] = field(default_factory=dict)
    #: Why the runner could not even start (no such file...).
    start_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not (self.timed_out or self.stopped_after_failure or self.start_error)

    def results(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every ``@@ck-result@@`` document (of ``kind``), in the order printed."""
        found = []
        for line in self.lines:
            if line.text.startswith(RESULT):
                try:
                    doc = json.loads(line.text[len(RESULT):])
                except json.JSONDecodeError:
                    continue
                if isinstance(doc, dict) and (kind is None or doc.get("kind") == kind):
                    found.append(doc)
        return found

    def done_ranks(self) -> set[int]:
        return {line.rank for line in self.lines if line.rank is not None and line.text.startswith(DONE)}

    def seen_ranks(self) -> set[int]:
        return {line.rank for line in self.lines if line.rank is not None}

    def last_progress(self) -> dict[int, str]:
        """rank -> the last progress it reported."""
        return {rank: text for rank, (text, _) in self.last_progress_at().items()}

    def last_progress_at(self) -> dict[int, tuple[str, float]]:
        """rank -> the last progress it reported and when (seconds into the run)."""
        where: dict[int, tuple[str, float]] = {}
        for line in self.lines:
            if line.rank is not None and line.text.startswith(PROGRESS):
                where[line.rank] = (line.text[len(PROGRESS):].strip(), line.seconds)
        return where

    def last_heard(self) -> dict[int, float]:
        """rank -> when its last line reached the head (seconds into the run)."""
        return {line.rank: line.seconds for line in self.lines if line.rank is not None}

    def rank_news(self) -> dict[int, str]:
        """rank -> what the head last heard of it and when, for every rank heard at all.

        Only what was seen: a rank's last progress is where it was when it said so, not where it is
        (its later output may be stuck behind a saturated link), so each comes with its time.
        """
        progress = self.last_progress_at()
        news = {}
        for rank, heard in self.last_heard().items():
            text = f"last heard {max(0.0, self.duration_s - heard):.0f}s before the end"
            if rank in progress:
                said, at = progress[rank]
                text += f", its last progress {said!r} at {at:.0f}s"
            else:
                text += ", no progress reported"
            news[rank] = text
        return news

    def tail(self, n: int = 20, node: str | None = None, rank: int | None = None,
             skip_markers: bool = True) -> list[LogLine]:
        """The last ``n`` lines, of one node and/or rank when given (markers left out)."""
        chosen = [line for line in self.lines
                  if (node is None or line.node == node) and (rank is None or line.rank == rank)
                  and not (skip_markers and line.text.startswith((PROGRESS, RESULT, DONE)))]
        return chosen[-n:]

    def text(self) -> str:
        """The whole output, one rendered line each (for logs and fixtures)."""
        return "\n".join(line.render() for line in self.lines)


def split_line(raw: str, hosts: Sequence[str], task_nodes: Sequence[str] | None = None
               ) -> tuple[str | None, int | None, str]:
    """(node, rank, text) of a raw output line; pdsh's ``host: `` prefix counts only for known hosts,
    srun's ``N: `` label only with ``task_nodes``."""
    node: str | None = hosts[0] if len(hosts) == 1 else None  # a local launch: every line is that host's
    text = raw
    labelled = _SRUN_LABEL.match(raw) if task_nodes else None
    head, sep, rest = raw.partition(": ")
    if task_nodes and labelled and int(labelled.group(1)) < len(task_nodes):
        node, text = task_nodes[int(labelled.group(1))], raw[labelled.end():]
    elif sep and head in hosts:  # pdsh's prefix (a one-host launch through pdsh has it too)
        node, text = head, rest
    rank: int | None = None
    tagged = _RANK_TAG.match(text)
    if tagged:
        rank = int(tagged.group(1))
        text = text[tagged.end():]
    return node, rank, text


def failure_signal(line: LogLine) -> bool:
    """True for a line that says a rank or a node's launcher has failed."""
    found = _RANK_FAILED.search(line.text)
    if found and found.group(1) != "0":
        return True
    node_failed = _PDSH_NODE_FAILED.match(line.text) or _SRUN_TASK_FAILED.match(line.text)
    return bool(node_failed and node_failed.group(2) != "0")


Cleanup = Callable[[str], dict[str, str]]


def supervise(launch: Launch, cleanup: Cleanup | None = None,
              on_line: Callable[[LogLine], None] | None = None) -> RunOutcome:
    """Run ``launch.argv`` to completion, the deadline, or a failed rank's grace period, whichever first."""
    started = time.monotonic()
    lines: list[LogLine] = []
    lock = threading.Lock()
    failed_at: list[float] = []
    try:
        proc = subprocess.Popen(launch.argv, cwd=launch.cwd, env=_environment(launch.env),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as exc:
        return RunOutcome(list(launch.argv), launch.run_id, None, 0.0, [], start_error=f"{launch.argv[0]}: {exc}")

    def pump(stream: IO[bytes], name: str) -> None:
        for raw in iter(stream.readline, b""):
            decoded = raw.decode("utf-8", "replace").rstrip("\r\n")
            node, rank, text = split_line(decoded, launch.hosts, launch.task_nodes)
            line = LogLine(time.monotonic() - started, name, node, rank, text, decoded)
            with lock:
                lines.append(line)
                if not failed_at and failure_signal(line):
                    failed_at.append(time.monotonic())
            if on_line is not None:
                with suppress(Exception):  # a broken progress view must not break the run
                    on_line(line)

    readers = [threading.Thread(target=pump, args=(stream, name), daemon=True, name=f"run-{name}")
               for stream, name in ((proc.stdout, "out"), (proc.stderr, "err")) if stream is not None]
    for reader in readers:
        reader.start()
    outcome = RunOutcome(list(launch.argv), launch.run_id, None, 0.0, lines)
    deadline = started + launch.deadline_s
    try:
        while proc.poll() is None:
            now = time.monotonic()
            with lock:
                grace_over = bool(failed_at) and now > failed_at[0] + launch.grace_s
            if now >= deadline or grace_over:
                outcome.timed_out = now >= deadline
                outcome.stopped_after_failure = not outcome.timed_out
                _kill_group(proc)
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        outcome.interrupted = True
        _kill_group(proc)
        raise
    finally:
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        for reader in readers:
            reader.join(timeout=5)
        outcome.returncode = proc.returncode
        outcome.duration_s = time.monotonic() - started
        if (outcome.timed_out or outcome.stopped_after_failure or outcome.interrupted) and cleanup is not None:
            with suppress(Exception):
                outcome.cleanup = cleanup(launch.run_id)
    with lock:
        outcome.lines = list(lines)
    return outcome


def _environment(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the runner's whole process group (runner, pdsh, ssh; a local launch's ranks too).

    Not SIGTERM: DeepSpeed's runner answers that with ``pdsh ... pkill -f "<python> -u -m
    deepspeed.launcher.launch"``, which kills every DeepSpeed job of that interpreter on the nodes,
    not just this one. The ranks left on remote nodes are killed by run id afterwards.
    """
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_id_argument(run_id: str) -> str:
    return f"{RUN_ID_FLAG}={run_id}"


def ranks_of(outcome: RunOutcome, expected: Iterable[int]) -> dict[str, list[int]]:
    """Expected ranks sorted into ``done``, ``silent`` (never printed) and ``unfinished``."""
    done, seen = outcome.done_ranks(), outcome.seen_ranks()
    sorted_ranks: dict[str, list[int]] = {"done": [], "silent": [], "unfinished": []}
    for rank in expected:
        key = "done" if rank in done else ("unfinished" if rank in seen else "silent")
        sorted_ranks[key].append(rank)
    return sorted_ranks
