"""This machine as the only node, without SSH or a scheduler: commands by subprocess, the agent with
clusterkit's own interpreter, files by a verified local copy, launches by DeepSpeed's runner on this
machine (as it does for a hostfile that names only this machine)."""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from clusterkit.cluster.nodes import (
    BroadcastOptions,
    HostStream,
    LaunchLine,
    LaunchStyle,
    LineCallback,
    NodesBase,
    ProgressListener,
    SchedulerView,
    StateCallback,
    launch_env,
)
from clusterkit.cluster.remote.agent import AgentReply, parse_agent_output
from clusterkit.cluster.remote.ssh import RemoteError, SshSettings
from clusterkit.cluster.remote.stream import LineStream, ProcessOpener
from clusterkit.cluster.remote.transfer import Delivery, RemoteFile
from clusterkit.cluster.result import CommandOutput, GroupResult, HostResult
from clusterkit.cluster.shell import node_command
from clusterkit.core.inventory import ActiveHost
from clusterkit.core.launchline import LaunchPlan, build_launch_line, selection_for

if TYPE_CHECKING:
    pass

T = TypeVar("T")


def agent_here_command(args: Sequence[str], python: str | None = None) -> list[str]:
    """clusterkit's agent on this machine, with clusterkit's own interpreter (``python`` is the training
    interpreter the agent inspects; it never runs the agent here, where clusterkit itself is installed)."""
    del python
    return [sys.executable, "-m", "clusterkit.node.agent", *args]


class LocalNodes(NodesBase):
    """This machine alone (``host``'s name as the hostfile or the user spells it)."""

    transport = "local"

    def __init__(self, host: ActiveHost, *, hostfile: str = "", whole: Sequence[ActiveHost] = ()) -> None:
        self.host = host
        self.hostfile = hostfile
        #: Every host and slot of the hostfile, this machine among them (--include picks it out).
        self.whole = list(whole) or [host]

    @property
    def hosts(self) -> list[ActiveHost]:
        return [self.host]

    @property
    def names(self) -> list[str]:
        return [self.host.name]

    def describe(self) -> str:
        return "this machine"

    def _subprocess(self, argv: list[str], timeout_s: float) -> CommandOutput:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.host.name} gave no answer within {timeout_s:g}s",
                              fix="look for a hung process on this machine (a stuck driver call?)") from None
        return CommandOutput(done.returncode, done.stdout, done.stderr, time.time())

    def _one(self, host: str, work: Callable[[], T], progress: ProgressListener | None) -> HostResult[T]:
        started = time.monotonic()
        try:
            result: HostResult[T] = HostResult(host, value=work(), seconds=time.monotonic() - started)
        except (RemoteError, OSError) as exc:
            result = HostResult(host, error=str(exc), fix=getattr(exc, "fix", None),
                                seconds=time.monotonic() - started)
        if progress:
            progress.update(host, "ok" if result.ok else "failed", result.error or "")
        return result

    def run(self, command: str, timeout_s: float, *, hosts: Sequence[str] | None = None,
            progress: ProgressListener | None = None) -> GroupResult[CommandOutput]:
        group: GroupResult[CommandOutput] = GroupResult()
        for host in self._chosen(hosts):
            argv = ["/bin/sh", "-c", node_command(host, command)]
            group[host] = self._one(host, functools.partial(self._subprocess, argv, timeout_s), progress)
        return group

    def run_agent(self, args: Sequence[str], timeout_s: float, *, python: str | None = None,
                  per_host_args: Mapping[str, Sequence[str]] | None = None, hosts: Sequence[str] | None = None,
                  progress: ProgressListener | None = None) -> GroupResult[AgentReply]:
        extra = per_host_args or {}
        group: GroupResult[AgentReply] = GroupResult()
        for host in self._chosen(hosts):
            argv = agent_here_command([*args, *extra.get(host, ())], python)

            def reply(argv: list[str] = argv, host: str = host) -> AgentReply:
                out = self._subprocess(argv, timeout_s)
                return parse_agent_output(out.stdout, host, out.finished_at)

            group[host] = self._one(host, reply, progress)
        return group

    def agent_streams(self, args: Sequence[str], on_line: LineCallback, on_state: StateCallback, *,
                      stale_after_s: float, lost_after_s: float) -> list[HostStream]:
        command = " ".join(["exec", *(shlex.quote(a) for a in agent_here_command(args))])
        return [LineStream(self.host.name, command, ProcessOpener(), on_line, on_state,
                           stale_after_s=stale_after_s, lost_after_s=lost_after_s)]

    def put(self, source: Path, remote: RemoteFile, timeout_s: float, *, hosts: Sequence[str] | None = None,
            options: BroadcastOptions | None = None) -> GroupResult[Delivery]:
        del timeout_s
        options = options or BroadcastOptions()
        here = str(source.resolve())
        if options.phase is not None:
            options.phase(f"{here} read where it lies (this machine): nothing copied" if options.in_place
                          else f"copy {source} to {remote.path} on this machine")
        group: GroupResult[Delivery] = GroupResult()
        for host in self._chosen(hosts):
            delivery = Delivery(host, ok=True, notes=[f"{here} is on this machine: read in place"], path=here) \
                if options.in_place else copy_here(source, remote, host)
            group[host] = HostResult(host, value=delivery, error=None if delivery.ok else delivery.error,
                                     fix=delivery.fix)
        return group

    def launch_line(self, plan: LaunchPlan, hosts: Sequence[ActiveHost], style: LaunchStyle) -> LaunchLine:
        """DeepSpeed's runner with this machine's hostfile: ranks start here, no SSH, loopback master
        (``--include`` where the hostfile names more than the slots chosen here)."""
        include, exclude = selection_for(plan, hosts, [self.host], self.whole)
        hostfile = plan.hostfile or self.hostfile or local_hostfile(len(self.host.slots))
        full = replace(plan, hostfile=hostfile, include=include, exclude=exclude,
                       launcher_args=style.launcher_args or plan.launcher_args,
                       master_addr=plan.master_addr or "127.0.0.1", force_multi=False, no_ssh_check=True)
        return LaunchLine(build_launch_line(full), None, launch_env(style, os.environ.get("PYTHONPATH")))

    def ssh_mesh(self) -> SshSettings | None:
        return None

    def scheduler_view(self, timeout_s: float) -> SchedulerView | None:
        return None




def local_hostfile(slots: int) -> str:
    """A one-line hostfile for this machine (DeepSpeed's runner then launches here, without pdsh): for a
    target that came from no hostfile."""
    directory = Path(tempfile.gettempdir()) / f"clusterkit-{os.getuid()}"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"hostfile-localhost-{slots}"
    path.write_text(f"localhost slots={slots}\n", encoding="utf-8")
    return str(path)


def copy_here(source: Path, remote: RemoteFile, host: str) -> Delivery:
    """``source`` at ``remote.path`` on this machine, written atomically and checked; nothing copied when
    it is already there (the same file, or a copy with the right size and sha256)."""
    target = Path(remote.path)
    try:
        if target.exists() and (target.samefile(source) or _matches(target, remote)):
            return Delivery(host, ok=True, notes=["already there"])
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            shutil.copyfile(source, scratch)
            if not _matches(scratch, remote):
                return Delivery(host, ok=False, error=f"the copy of {source} does not match its size and sha256",
                                fix=f"is {source} being written to? check it and retry")
            scratch.replace(target)
        finally:
            scratch.unlink(missing_ok=True)
    except OSError as exc:
        return Delivery(host, ok=False, error=f"cannot write {target}: {exc.strerror or exc}",
                        fix=f"check free space and permissions of {target.parent}")
    return Delivery(host, ok=True, sent_bytes=remote.size, rounds=1)


def _matches(path: Path, remote: RemoteFile) -> bool:
    if path.stat().st_size != remote.size:
        return False
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == remote.sha256
