"""Long-lived streams over Slurm: one ``srun`` step per node, for nodes that refuse SSH.

On clusters that keep users off their nodes' sshd (``pam_slurm_adopt``), a job's nodes are still
reachable through Slurm. :class:`SlurmStreamOpener` is a ``ChannelOpener`` for
:class:`~clusterkit.cluster.remote.stream.LineStream`: each ``(host, command)`` becomes ``srun --overlap`` with
one task on that node, sharing the job's resources with its running steps (it never waits for free
ones), its output read as it comes. Its stdin is a pipe held open while the channel lives, as sshd holds
a session's, so a command that watches its input for the end (the monitor's sampler) ends with the
channel even if the head dies; ``close()`` also stops srun, which kills its task.

:func:`ensure_agent` puts the agent on every node first (one step, sbcast where it is missing) at
:func:`~clusterkit.cluster.remote.slurm_agent.node_agent_dir`, and :func:`node_agent_command` runs it from
there (:func:`agent_stream_command`: its ``stream``).
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence

from clusterkit.cluster.remote.fanout import HostResult
from clusterkit.cluster.remote.slurm import GRACE_S, Allocation, SlurmError, step_environment
from clusterkit.cluster.remote.slurm_agent import node_agent_dir, run_agent_on_nodes
from clusterkit.cluster.remote.stream import ByteChannel

#: srun's own stderr lines kept for ``describe_end`` (bytes).
STDERR_TAIL_BYTES = 2000
#: The cheapest agent run: proves the agent is in place and runs (binds an ephemeral port, at once).
AGENT_PROBE_ARGS = ("listen", "--port", "0", "--seconds", "0")


def stream_srun_argv(alloc: Allocation, host: str, command: str) -> list[str]:
    """``srun`` running ``command`` as one task on ``host``, overlapping the job's running steps.

    Unlike :func:`~clusterkit.cluster.remote.slurm.srun_argv` it has no ``--label`` (lines must come through as
    the command printed them) and no ``--time`` (a stream lasts as long as the job allows).
    """
    gpus = alloc.job.gpus_per_node.get(host, 0)
    return ["srun", f"--jobid={alloc.job_id}", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={host}",
            "--kill-on-bad-exit=0", "--chdir=/", "--job-name=clusterkit-stream",
            *([f"--gres=gpu:{gpus}"] if gpus else []), "/bin/sh", "-c", command]


class SrunChannel:
    """A running ``srun`` step's stdout as a :class:`~clusterkit.cluster.remote.stream.ByteChannel`."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        try:
            self._proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, env=dict(env), start_new_session=True)
        except FileNotFoundError:
            raise SlurmError("srun is not installed here",
                             fix="run clusterkit where Slurm's client commands are") from None
        self._stderr = b""
        self._closed = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    def read(self, timeout_s: float) -> bytes | None:
        stdout, stderr = self._proc.stdout, self._proc.stderr
        assert stdout is not None and stderr is not None
        watched = [stdout] + ([stderr] if not stderr.closed else [])
        ready, _, _ = select.select(watched, [], [], timeout_s)
        if stderr in ready:  # drained as it comes, so srun never blocks on a full pipe
            said = os.read(stderr.fileno(), 65536)
            if said:
                self._stderr = (self._stderr + said)[-STDERR_TAIL_BYTES:]
            else:
                stderr.close()
        if stdout not in ready:
            return b""
        return os.read(stdout.fileno(), 65536) or None

    def describe_end(self) -> str:
        try:
            code = self._proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "srun closed its output"
        stderr = self._proc.stderr
        if stderr is not None and not stderr.closed:
            with contextlib.suppress(OSError):
                os.set_blocking(stderr.fileno(), False)
                self._stderr = (self._stderr + (stderr.read() or b""))[-STDERR_TAIL_BYTES:]
        said = [line.removeprefix("srun: error: ").removeprefix("srun: ")
                for line in self._stderr.decode("utf-8", "replace").strip().splitlines()[-2:]]
        what = f"srun was killed by signal {-code}" if code < 0 else f"srun exited {code}"
        return what + (f": {' | '.join(said)}" if said else "")

    def close(self) -> None:
        """End the step without blocking: stdin's end first (the sampler stops on it), then srun is
        told to kill its task (two SIGINTs), then SIGKILL if it lingers; the last two in a reaper thread."""
        if self._closed:
            return
        self._closed = True
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGINT)
            # Not a daemon: a head that exits right after closing (--once) still sees its steps ended.
            threading.Thread(target=self._reap, name=f"srun-reaper:{self._proc.pid}", daemon=False).start()
        else:
            self._close_pipes()

    def _reap(self) -> None:
        proc = self._proc
        try:
            proc.wait(0.2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)  # the second within a second: srun kills the task
            try:
                proc.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(GRACE_S)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class SlurmStreamOpener:
    """Opens ``command`` on ``host`` as its own srun step in ``alloc`` (a ``ChannelOpener``)."""

    def __init__(self, alloc: Allocation, environ: Mapping[str, str] | None = None) -> None:
        self.alloc = alloc
        self.env = step_environment(environ)

    def __call__(self, host: str, command: str) -> ByteChannel:
        if host not in self.alloc.nodes:
            raise SlurmError(f"{host} is not a node of job {self.alloc.job_id}")
        return SrunChannel(stream_srun_argv(self.alloc, host, command), self.env)


def ensure_agent(alloc: Allocation, timeout_s: float, nodes: Sequence[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> dict[str, HostResult[str]]:
    """The agent in place on every node (one step; sbcast where missing), proven by running it: per node
    its directory (the one :func:`agent_stream_command` runs from), or why it is not there."""
    env = os.environ if environ is None else environ
    where = node_agent_dir(env)
    replies = run_agent_on_nodes(alloc, AGENT_PROBE_ARGS, timeout_s, nodes, environ=environ)
    return {node: HostResult(node, value=where, seconds=reply.seconds) if reply.ok
            else HostResult(node, error=reply.error, fix=reply.fix, seconds=reply.seconds)
            for node, reply in replies.items()}


def node_agent_command(args: Sequence[str], environ: Mapping[str, str] | None = None) -> str:
    """The shell command that runs ``agent ARGS`` from where :func:`ensure_agent` put the agent."""
    agent = shlex.quote(node_agent_dir(os.environ if environ is None else environ))
    return (f'a={agent}; [ -s "$a/__main__.py" ] || {{ echo "no clusterkit agent at $a on $(hostname)" >&2; '
            f'exit 3; }}; PY="$(command -v python3)" || {{ echo "no python3 on PATH" >&2; exit 127; }}; '
            f'exec "$PY" -I -S "$a" {shlex.join(args)}')


def agent_stream_command(interval_s: float, slow_every: int = 0, environ: Mapping[str, str] | None = None) -> str:
    """``agent stream`` (the monitor's sampler) as :func:`node_agent_command` runs it."""
    return node_agent_command(["stream", "--interval", f"{interval_s:g}", "--slow-every", str(int(slow_every))],
                              environ)
