"""The one place clusterkit talks to nodes over SSH (Fabric over paramiko).

- :mod:`~clusterkit.cluster.remote.ssh`: settings, host-key policy, connections, what failures mean;
- :mod:`~clusterkit.cluster.remote.fanout`: a task per host in parallel, each under its deadline, cancelled
  (connections closed) when it passes; progress to any listener;
- :mod:`~clusterkit.cluster.remote.openssh`: the same settings as ``ssh`` arguments, for rsync, pdsh and hops;
- :mod:`~clusterkit.cluster.remote.agent`: the agent shipped to nodes and its typed, versioned replies;
- :mod:`~clusterkit.cluster.remote.stream`: a long-lived channel per host that yields lines as they arrive,
  reconnects with backoff, and keeps the host's state (connected, stale, lost) as a value;
- :mod:`~clusterkit.cluster.remote.transfer`: files streamed from disk (never held in memory) to one host or,
  along a pipelined node-to-node relay (``relay_hop.py`` on each node), to many.
"""

from __future__ import annotations

from clusterkit.cluster.remote.agent import (
    AgentReply,
    agent_digest,
    agent_remote_path,
    agent_zipapp,
    check_wire,
    parse_agent_output,
    run_agent,
    run_agent_reply,
    ship_agent,
)
from clusterkit.cluster.remote.fanout import HostResult, ProgressListener, fan_out
from clusterkit.cluster.remote.ssh import (
    RemoteError,
    SshSettings,
    connect,
    explain,
    key_fingerprint,
    known_host_name,
    load_known_hosts,
    record_trusted_key,
    served_host_key,
    ssh_target,
)

__all__ = [
    "AgentReply", "HostResult", "ProgressListener", "RemoteError", "SshSettings", "agent_digest",
    "agent_remote_path", "agent_zipapp", "check_wire", "connect", "explain", "fan_out", "key_fingerprint",
    "known_host_name", "load_known_hosts", "parse_agent_output", "record_trusted_key", "run_agent",
    "run_agent_reply", "served_host_key", "ship_agent", "ssh_target",
]
