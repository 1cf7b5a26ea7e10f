"""env push through Slurm: each stage of :func:`clusterkit.envpack.push.push_env` as one srun step, the
archive by ``sbcast``.

- node_env's survey, forget, unpack and verify run as one ``srun --ntasks-per-node=1`` step each
  (:func:`clusterkit.remote.slurm.run_on_nodes`); the command is the same on every node, which fills
  in its own Slurm name. A node whose task fails or gives no answer in time is that node's failure.
- The archive: when every node that needs it already sees the head's archive at the same path, with
  the head's size and modification time (a filesystem shared with the head), it is unpacked from
  there and nothing is sent. Otherwise ``sbcast`` copies it to the staging path through Slurm's own
  tree (to every node of the job: sbcast has no node subset), and each node's copy is checked
  against the archive's sha256 before it is unpacked.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.envpack.pack import node_env_command
from clusterkit.envpack.push import PushOptions, node_env_result
from clusterkit.remote import HostResult, RemoteError
from clusterkit.remote.relay_hop import human as human_bytes
from clusterkit.remote.slurm import Allocation, broadcast_file, run_on_nodes
from clusterkit.remote.transfer import Delivery, HopEvent, Listener, RemoteFile

SEES = "@@ckenv-sees@@"
NO_DIR = "@@ckenv-no-dir@@"


def probe_command(head_path: str, staging_dir: str) -> str:
    """Per node: make the staging directory, and say the size and mtime of the head's archive path if it is there."""
    q = shlex.quote
    return (f"mkdir -p {q(staging_dir)} 2>/dev/null && test -w {q(staging_dir)} || echo {NO_DIR}; "
            f"printf '{SEES} '; stat -L -c '%s %Y' {q(head_path)} 2>/dev/null || echo")


def sees_head_archive(stdout: Sequence[str], size: int, mtime: int) -> bool:
    """Whether a node's probe found the head's archive where it lies (same size, same mtime)."""
    for line in stdout:
        if line.startswith(SEES):
            return line[len(SEES):].split() == [str(size), str(mtime)]
    return False


def read_in_place(seeing: Mapping[str, bool], head_path: str, staging: str) -> bool:
    """Unpack from the head's path, sending nothing: when every node needing the archive sees it there, or
    when the staging path is the head's archive itself (sbcast writes to every node of the job, the head's
    own included, and must never write over the file it reads)."""
    return staging == head_path or (bool(seeing) and all(seeing.values()))


@dataclass
class SlurmChannel:
    """The nodes of a Slurm allocation, reached by srun steps; the archive by sbcast or a shared path."""

    alloc: Allocation
    options: PushOptions
    environ: Mapping[str, str] | None = None
    push_command: str = "clusterkit env push --slurm ARCHIVE"
    #: Nodes that answered a step of this push (sbcast writes to them all, so they get the staging directory).
    answered: set[str] = field(default_factory=set)

    def run_op(self, hosts: Sequence[str], python: str, spec: dict[str, Any], timeout_s: float,
               isolated: bool = True) -> dict[str, HostResult[dict[str, Any]]]:
        command = node_env_command(python, spec, isolated_site=isolated)
        steps = run_on_nodes(self.alloc, command, timeout_s, list(hosts), environ=self.environ)
        results: dict[str, HostResult[dict[str, Any]]] = {}
        for host, step in steps.items():
            if not step.ok or step.value is None:
                results[host] = HostResult(host, error=step.error, fix=step.fix, seconds=step.seconds)
                continue
            self.answered.add(host)
            out = step.value
            try:
                value = node_env_result(host, python, out.exit_code or 0, "\n".join(out.stdout),
                                        "\n".join(out.stderr), str(spec["op"]))
            except RemoteError as exc:
                results[host] = HostResult(host, error=str(exc), fix=exc.fix, seconds=step.seconds)
                continue
            results[host] = HostResult(host, value=value, seconds=step.seconds)
        return results

    def deliver(self, archive: Path, remote: RemoteFile, hosts: list[str], say: Callable[[str], None],
                listener: Listener | None, round_listener: Callable[[int, list[str], int], None] | None
                ) -> tuple[dict[str, Delivery], str]:
        head_path = str(archive.resolve())
        stat = archive.stat()
        staging_dir = remote.path.rsplit("/", 1)[0] or "/"
        targets = [n for n in self.alloc.nodes if n in self.answered or n in hosts]
        probes = run_on_nodes(self.alloc, probe_command(head_path, staging_dir), self.options.survey_timeout_s,
                              targets, environ=self.environ)
        deliveries = {h: Delivery(h, ok=False) for h in hosts}
        seeing: dict[str, bool] = {}
        for host in hosts:
            probe = probes[host]
            if not probe.ok or probe.value is None:
                deliveries[host].error, deliveries[host].fix = probe.error, probe.fix
                continue
            seeing[host] = sees_head_archive(probe.value.stdout, stat.st_size, int(stat.st_mtime))
            if NO_DIR in probe.value.stdout and not seeing[host]:
                deliveries[host].error = f"cannot create {staging_dir} on {host} (writable by this user?)"
                deliveries[host].fix = f"on {host}: create {staging_dir} writable by this user, or push with --staging"
        ready = [h for h in seeing if deliveries[h].error is None]
        if read_in_place({h: seeing[h] for h in ready}, head_path, remote.path):
            if not all(seeing[h] for h in ready):
                for host in ready:
                    if not seeing[host]:
                        deliveries[host].error = (f"{host} does not see {head_path}, and sbcast to --staging "
                                                  "(that same path) would write over the head's archive")
                        deliveries[host].fix = "push with --staging DIR elsewhere than the archive's directory"
            say(f"archive read where it lies: {head_path} (nodes see it, same size and time): nothing sent")
            for host in ready:
                if seeing[host]:
                    deliveries[host].ok = True
                    deliveries[host].notes.append(f"{head_path} is on a filesystem shared with this machine: "
                                                  "read in place, nothing sent")
                    _event(listener, host, "done", None)
            return deliveries, head_path
        if ready:
            say(f"sbcast {human_bytes(remote.size)} to job {self.alloc.job_id}'s {len(self.alloc.nodes)} node(s) "
                f"-> {remote.path}, then each copy's sha256")
            self._broadcast(archive, remote, ready, deliveries, listener)
        return deliveries, remote.path

    def _broadcast(self, archive: Path, remote: RemoteFile, hosts: list[str], deliveries: dict[str, Delivery],
                   listener: Listener | None) -> None:
        timeout = self.options.unpack_timeout_s
        copied = broadcast_file(self.alloc, archive, remote.path, timeout, hosts, environ=self.environ)
        landed = []
        for host in hosts:
            if copied[host].ok:
                landed.append(host)
            else:
                deliveries[host].error, deliveries[host].fix = copied[host].error, copied[host].fix
                _event(listener, host, "failed", copied[host].error)
        if not landed:
            return
        sums = run_on_nodes(self.alloc, f"sha256sum {shlex.quote(remote.path)}", timeout, landed,
                            environ=self.environ)
        for host in landed:
            delivery, check = deliveries[host], sums[host]
            found = check.value.stdout[-1].split()[0] if check.ok and check.value and check.value.stdout else ""
            if found == remote.sha256:
                delivery.ok, delivery.sent_bytes, delivery.rounds = True, remote.size, 1
                delivery.notes.append(f"sbcast copy checked (sha256 {found[:16]}...)")
                _event(listener, host, "done", None)
                continue
            delivery.error = (f"the sbcast copy on {host} is not the archive (sha256 {found[:16] or 'unreadable'}"
                              f" vs {remote.sha256[:16]})" if check.ok else check.error)
            delivery.fix = check.fix or f"rerun the push; {host}'s disk under {remote.path.rsplit('/', 1)[0]}?"
            _event(listener, host, "failed", delivery.error)


def _event(listener: Listener | None, host: str, kind: str, error: str | None) -> None:
    if listener is not None:
        listener(HopEvent(host, kind, None, error, time.time()))


def slurm_channel(alloc: Allocation, options: PushOptions) -> SlurmChannel:
    """The channel for a push in ``alloc`` (this process's environment, less what would shape the steps)."""
    return SlurmChannel(alloc, options, environ=os.environ)
