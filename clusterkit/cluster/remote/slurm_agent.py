"""The agent over Slurm: one srun step runs it on every node; sbcast ships it where it is missing.

The agent lives where the SSH transport puts it (``$TMPDIR/clusterkit-<uid>/agent-<digest>/``,
unpacked so Python caches its bytecode), so the two transports share one copy per node. A step first
runs it where it is; nodes that lack it answer with a marker, get the zipapp through ``sbcast`` (one
broadcast through Slurm's tree) and run it in a second step, unpacking it first. With a directory
every node sees (``agent_dir``, a shared filesystem), the head unpacks the agent there once and
nothing is broadcast.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from clusterkit.cluster.remote.agent import AgentReply, agent_digest, agent_zipapp, parse_agent_output
from clusterkit.cluster.remote.fanout import HostResult, ProgressListener
from clusterkit.cluster.remote.slurm import Allocation, TaskOutput, broadcast_file, run_on_nodes
from clusterkit.cluster.remote.ssh import RemoteError

NEED_AGENT = "@@clusterkit-need-agent@@"


def node_agent_dir(environ: Mapping[str, str]) -> str:
    """The node-side agent directory, spelled out on the head: tasks inherit the head's ``TMPDIR``
    (srun exports the environment), so it is the same path on every node, as sbcast needs."""
    return f"{environ.get('TMPDIR') or '/tmp'}/clusterkit-{os.getuid()}/agent-{agent_digest()}"


def step_command(agent: str, args: Sequence[str], python: str | None, per_node: Mapping[str, Sequence[str]],
                 shared: bool) -> str:
    """The shell each task runs: find (or unpack the broadcast copy of) the agent, then run it."""
    q = shlex.quote
    fallback = f" || command -v {q(python)}" if python else ""
    lines = [f"a={q(agent)}; z=\"$a.pyz\"; d=\"${{a%/*}}\""]
    if not shared:
        lines += [
            'mkdir -p -m 700 "$d" || exit 3',
            '[ -O "$d" ] || { echo "$d is not owned by $(id -un)" >&2; exit 4; }; chmod 700 "$d"',
            'if [ ! -s "$a/__main__.py" ] || [ ! -O "$a" ]; then',
            f'  if [ ! -s "$z" ] || [ ! -O "$z" ]; then echo {NEED_AGENT}; exit 0; fi',
            f'  t="$a.{uuid.uuid4().hex[:12]}.$SLURMD_NODENAME.tmp"',
            '  PY="$(command -v python3)" || { echo "no python3 on PATH" >&2; exit 127; }',
            '  "$PY" -m zipfile -e "$z" "$t" && chmod -R go-rwx "$t" \\',
            '    && { mv -T "$t" "$a" 2>/dev/null || rm -rf "$t"; }',
            'fi',
            'rm -f "$z"',
        ]
    if per_node:
        cases = " ".join(f"{q(node)}) set -- {' '.join(q(a) for a in extra)};;" for node, extra in per_node.items())
        lines.append(f'set --; case "$SLURMD_NODENAME" in {cases} esac')
    lines += [f'PY="$(command -v python3{fallback})"',
              '[ -n "$PY" ] || { echo "no python3 on PATH" >&2; exit 127; }',
              # As over SSH: -I keeps the node's PYTHON* variables out, -S skips site-packages.
              f'"$PY" -I -S "$a" {" ".join(q(a) for a in args)}' + (' "$@"' if per_node else "")]
    return "\n".join(lines)


def _unpack_shared(directory: str) -> str:
    """The agent unpacked under ``directory`` (a filesystem every node sees), once per version."""
    target = Path(directory) / f"agent-{agent_digest()}"
    if (target / "__main__.py").is_file():
        return str(target)
    Path(directory).mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f"{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    with tempfile.TemporaryFile() as archive:
        archive.write(agent_zipapp())
        archive.seek(0)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(scratch)
    try:
        scratch.rename(target)
    except OSError:  # another head got there first
        shutil.rmtree(scratch, ignore_errors=True)
    return str(target)


def _reply(node: str, output: TaskOutput) -> AgentReply:
    if output.exit_code == 127 and any("no python3" in line for line in output.stderr):
        raise RemoteError(f"{node} has no python3 on the PATH its Slurm tasks get",
                          fix=f"install python3 on {node} (the agent needs only the standard library)")
    if output.exit_code in (3, 4):
        raise RemoteError(f"cannot prepare the agent directory on {node}: {' | '.join(output.stderr[-2:])}")
    try:
        return parse_agent_output("\n".join(output.stdout), node, output.finished_at)
    except ValueError as exc:  # a result line that is not JSON (cut short, or not the agent's)
        raise RemoteError(f"the agent on {node} printed a result that does not read: {exc}") from None
    except RemoteError as exc:
        if output.stderr:
            raise RemoteError(f"{exc} (stderr: {' | '.join(output.stderr[-3:])})") from None
        raise


def run_agent_on_nodes(alloc: Allocation, args: Sequence[str], timeout_s: float, nodes: Sequence[str] | None = None,
                       python: str | None = None, per_node: Mapping[str, Sequence[str]] | None = None,
                       progress: ProgressListener | None = None, agent_dir: str | None = None,
                       environ: Mapping[str, str] | None = None) -> dict[str, HostResult[AgentReply]]:
    """Run ``agent ARGS`` (plus ``per_node[node]``) on every node as one srun step; per-node replies.

    Nodes without the agent get it by sbcast and run it in a second step. Everything within ``timeout_s``.
    """
    env = os.environ if environ is None else environ
    targets = list(nodes if nodes is not None else alloc.nodes)
    deadline = time.monotonic() + timeout_s
    shared = agent_dir is not None
    agent = _unpack_shared(agent_dir) if agent_dir is not None else node_agent_dir(env)
    command = step_command(agent, args, python, per_node or {}, shared)
    # A task that ended well has not answered yet: it may only say it needs the agent.
    done = run_on_nodes(alloc, command, timeout_s, targets, _FailuresOnly(progress), environ=environ)
    results: dict[str, HostResult[AgentReply]] = {}
    needing = []
    for node, result in done.items():
        if result.ok and result.value is not None and NEED_AGENT in result.value.stdout:
            needing.append(node)
        else:
            results[node] = _as_reply(node, result)
    if needing:
        if progress:
            for node in needing:
                progress.update(node, "shipping agent")
        shipped = _broadcast_agent(alloc, agent, needing, max(5.0, deadline - time.monotonic()), environ)
        ready = [n for n in needing if shipped[n].ok]
        for node in needing:
            if not shipped[node].ok:
                results[node] = HostResult(node, error=shipped[node].error, fix=shipped[node].fix,
                                           seconds=shipped[node].seconds)
        if ready:
            again = run_on_nodes(alloc, command, max(5.0, deadline - time.monotonic()), ready,
                                 _FailuresOnly(progress), environ=environ)
            for node, result in again.items():
                if result.ok and result.value is not None and NEED_AGENT in result.value.stdout:
                    results[node] = HostResult(node, error=f"the agent sbcast to {node} vanished before it ran",
                                               seconds=result.seconds)
                else:
                    results[node] = _as_reply(node, result)
    if progress:
        for node in targets:
            reply = results[node]
            progress.update(node, "ok" if reply.ok else "failed", "" if reply.ok else str(reply.error))
    return {n: results[n] for n in targets}


class _FailuresOnly:
    """Passes on a step's failures and time-outs; a reply is judged ok only once it is parsed."""

    def __init__(self, progress: ProgressListener | None) -> None:
        self.progress = progress

    def update(self, host: str, state: str, detail: str = "") -> None:
        if self.progress is not None and state != "ok":
            self.progress.update(host, state, detail)


def _broadcast_agent(alloc: Allocation, agent: str, nodes: list[str], timeout_s: float,
                     environ: Mapping[str, str] | None) -> dict[str, HostResult[str]]:
    with tempfile.NamedTemporaryFile(prefix="clusterkit-agent-", suffix=".pyz") as archive:
        archive.write(agent_zipapp())
        archive.flush()
        return broadcast_file(alloc, Path(archive.name), f"{agent}.pyz", timeout_s, nodes, environ=environ)


def _as_reply(node: str, result: HostResult[TaskOutput]) -> HostResult[AgentReply]:
    if not result.ok or result.value is None:
        return HostResult(node, error=result.error, fix=result.fix, seconds=result.seconds)
    try:
        return HostResult(node, value=_reply(node, result.value), seconds=result.seconds)
    except RemoteError as exc:
        return HostResult(node, error=str(exc), fix=exc.fix, seconds=result.seconds)
