"""Nodes over SSH: Fabric/paramiko sessions from this machine, one per host in parallel, each under its
deadline (:mod:`clusterkit.cluster.remote.fanout`); files by the node-to-node relay; launches by DeepSpeed's
own runner and pdsh."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

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
from clusterkit.cluster.remote.agent import AgentReply, agent_command, run_agent_reply, ship_agent
from clusterkit.cluster.remote.fanout import fan_out
from clusterkit.cluster.remote.ssh import SshSettings, connect
from clusterkit.cluster.remote.stream import LineStream, SshOpener
from clusterkit.cluster.remote.transfer import Delivery, RemoteFile, broadcast, relay_options
from clusterkit.cluster.result import CommandOutput, GroupResult, HostResult
from clusterkit.cluster.shell import node_command
from clusterkit.core.inventory import ActiveHost
from clusterkit.core.launchline import LaunchPlan, build_launch_line, selection_for
from clusterkit.core.launchsite import launch_place
from clusterkit.node.relay_hop import human as human_bytes

if TYPE_CHECKING:
    pass

#: Time beyond a command's own deadline that connecting may take (the handshake has its own timeout).
CONNECT_SLACK_S = 5.0


def delivered(delivery: Delivery) -> HostResult[Delivery]:
    """A relay's outcome as a host result: its value always (what was sent), an error when not ok."""
    return HostResult(delivery.host, value=delivery, error=None if delivery.ok else delivery.error or "no copy",
                      fix=delivery.fix)


class SshNodes(NodesBase):
    """The hosts of a hostfile, reached over SSH with ``settings``."""

    transport = "ssh"

    def __init__(self, hosts: Sequence[ActiveHost], settings: SshSettings, *, hostfile: str = "",
                 whole: Sequence[ActiveHost] = ()) -> None:
        self._hosts = list(hosts)
        self.settings = settings
        self.hostfile = hostfile
        self.whole = list(whole) or list(hosts)

    @property
    def hosts(self) -> list[ActiveHost]:
        return list(self._hosts)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self._hosts]

    def describe(self) -> str:
        return f"{len(self._hosts)} node(s) over SSH"

    def _deadline(self, timeout_s: float) -> float:
        return timeout_s + self.settings.connect_timeout_s + CONNECT_SLACK_S

    def run(self, command: str, timeout_s: float, *, hosts: Sequence[str] | None = None,
            progress: ProgressListener | None = None) -> GroupResult[CommandOutput]:
        def task(host: str) -> CommandOutput:
            with connect(host, self.settings) as conn:
                done = conn.run(node_command(host, command), hide=True, warn=True, timeout=timeout_s)
                return CommandOutput(done.exited, done.stdout, done.stderr, time.time())

        chosen = self._chosen(hosts)
        return GroupResult.of(fan_out(chosen, task, self._deadline(timeout_s), progress, self.settings).values())

    def run_agent(self, args: Sequence[str], timeout_s: float, *, python: str | None = None,
                  per_host_args: Mapping[str, Sequence[str]] | None = None, hosts: Sequence[str] | None = None,
                  progress: ProgressListener | None = None) -> GroupResult[AgentReply]:
        extra = per_host_args or {}

        def task(host: str) -> AgentReply:
            with connect(host, self.settings) as conn:
                return run_agent_reply(conn, [*args, *extra.get(host, ())], timeout_s, python)

        chosen = self._chosen(hosts)
        return GroupResult.of(fan_out(chosen, task, self._deadline(timeout_s), progress, self.settings).values())

    def agent_streams(self, args: Sequence[str], on_line: LineCallback, on_state: StateCallback, *,
                      stale_after_s: float, lost_after_s: float) -> list[HostStream]:
        settings = self.settings
        opener = SshOpener(settings, prepare=lambda conn: ship_agent(conn, max(15.0, settings.connect_timeout_s)))
        command = agent_command(list(args))
        return [LineStream(h, command, opener, on_line, on_state, stale_after_s=stale_after_s,
                           lost_after_s=lost_after_s) for h in self.names]

    def put(self, source: Path, remote: RemoteFile, timeout_s: float, *, hosts: Sequence[str] | None = None,
            options: BroadcastOptions | None = None) -> GroupResult[Delivery]:
        options = options or BroadcastOptions()
        relay = relay_options(self.settings, python=options.python, stall_s=options.stall_s,
                              max_rounds=options.max_rounds)
        chosen = self._chosen(hosts)
        if options.phase is not None:
            route = " -> ".join(chosen[:4]) + (" -> ..." if len(chosen) > 4 else "")
            options.phase(f"broadcast {human_bytes(remote.size)} to {len(chosen)} node(s) (relay: head -> {route})")
        deliveries = broadcast(source, remote, chosen, self.settings, relay, options.listener,
                               options.round_listener)
        return GroupResult.of(delivered(deliveries[h]) for h in chosen)

    def launch_line(self, plan: LaunchPlan, hosts: Sequence[ActiveHost], style: LaunchStyle) -> LaunchLine:
        """DeepSpeed's runner over pdsh (its lines are ``host: ...``), with ``--include`` where ``hosts``
        are not the whole hostfile (the plan's --include/--exclude where they chose these hosts); one
        host runs through the multi-node launcher all the same."""
        chosen = list(hosts)
        include, exclude = selection_for(plan, chosen, self._hosts, self.whole)
        # One active host: DeepSpeed's runner starts it on this machine unless told --force_multi; when it
        # is this machine, no SSH at all and the master is loopback (as clusterkit launch does).
        here = len(chosen) == 1 and launch_place([chosen[0].name]).local_only
        full = replace(plan, hostfile=plan.hostfile or self.hostfile, include=include, exclude=exclude,
                       ssh_port=self.settings.port, launcher_args=style.launcher_args or plan.launcher_args,
                       master_addr=plan.master_addr or ("127.0.0.1" if here else None),
                       force_multi=len(chosen) == 1 and not here, no_ssh_check=here)
        return LaunchLine(build_launch_line(full), None, launch_env(style, os.environ.get("PYTHONPATH")))

    def ssh_mesh(self) -> SshSettings | None:
        return self.settings

    def scheduler_view(self, timeout_s: float) -> SchedulerView | None:
        return None
