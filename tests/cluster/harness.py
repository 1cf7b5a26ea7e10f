"""A real multi-host cluster on one machine for tests: network namespaces on a bridge, each running sshd.

Each node is a little host: its own network namespace (``eth0`` on the bridge ``cktbrK``, address
10.77.K.11, .12 ...), hostname, PID namespace and private mount namespace in which /home, /opt, /tmp,
/root and /etc/ssh are per-node directories and /etc/hosts names every node. /usr, the repo and the
shared venv are common to all nodes, like an image installed on each. Debian's sshd runs in every node
with its own host key, listening on the node's address and 127.0.0.1, password and key login on.

    with Cluster.start(3) as cluster:
        node1, node2, _ = cluster.nodes
        rc, out, err = node1.run("ssh -o BatchMode=yes node2 hostname")

Paths under a node's private directories are also reachable from the host (``node.home``,
``node.opt``, ``node.host_path("/opt/x")``); the host's /tmp (pytest's tmp_path) is not visible in nodes.
``shared_home``/``shared_tmp`` give every node one /home or one /tmp instead, as an NFS home or a shared
scratch directory would (the harness's own directory in /tmp stays each node's).
Delay and loss cannot be shaped on this kernel (no netem); rate limits can (tbf).
"""
from __future__ import annotations

import atexit
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import ClassVar

from tests.cluster import pyenv, system
from tests.cluster.node import CommandResult, Node
from tests.cluster.system import ClusterError, ClusterUnavailable, NodeCommandTimeout, sh, tool

__all__ = ["Cluster", "ClusterError", "ClusterUnavailable", "CommandResult", "Node", "NodeCommandTimeout"]

TEST_USER = "ckuser"
TEST_PASSWORD = "ckuser-test-password"
SUBNET = "10.77.{index}"
FIRST_HOST_NUMBER = 11

_ACTIVE: set[Cluster] = set()


class Cluster:
    """N nodes on a bridge; start with ``Cluster.start(n)`` (context manager) or ``launch(n)``/``stop()``."""

    user: ClassVar[str] = TEST_USER
    password: ClassVar[str] = TEST_PASSWORD

    def __init__(self, index: int, n: int, name_prefix: str, shared_home: bool = False,
                 shared_tmp: bool = False) -> None:
        self.index = index
        #: Every node mounts one /home, as with NFS: one ~/.ssh, one ~/.deepspeed_env for all.
        self.shared_home = shared_home
        #: Every node mounts one /tmp, as a shared scratch directory (the harness's own files stay per node).
        self.shared_tmp = shared_tmp
        self.subnet = SUBNET.format(index=index)
        self.bridge = f"{system.NAME_PREFIX}br{index}"
        self.bridge_ip = f"{self.subnet}.1"
        self.state_dir = system.STATE_ROOT / f"{system.STATE_DIR_PREFIX}{os.getpid()}-{index}"
        self.nodes = [Node(self, i, f"{name_prefix}{i}", f"{self.subnet}.{FIRST_HOST_NUMBER + i - 1}")
                      for i in range(1, n + 1)]
        self.startup_seconds = 0.0
        self._stopped = False

    def __repr__(self) -> str:
        return f"<Cluster {self.subnet}.0/24 {[node.name for node in self.nodes]}>"

    @classmethod
    @contextmanager
    def start(cls, n: int, name_prefix: str = "node", **options: float | bool) -> Iterator[Cluster]:
        """Start ``n`` nodes named ``{name_prefix}1..n``; stop and clean up on leaving, however."""
        cluster = cls.launch(n, name_prefix, **options)  # type: ignore[arg-type]
        try:
            yield cluster
        finally:
            cluster.stop()

    @classmethod
    def launch(cls, n: int, name_prefix: str = "node", *, lock_timeout: float = 1800,
               boot_timeout: float = 60, shared_home: bool = False, shared_tmp: bool = False) -> Cluster:
        """Start ``n`` nodes; the caller must call stop(). Raises ClusterUnavailable where impossible.

        ``shared_home``: one /home for every node, as with NFS. ``shared_tmp``: one /tmp for every node.
        """
        if not 1 <= n <= 200:
            raise ValueError(f"a cluster has 1 to 200 nodes, not {n}")
        system.check_host()
        system.remove_leftovers()
        index = system.CLAIMS.claim(lock_timeout)
        cluster = cls(index, n, name_prefix, shared_home, shared_tmp)
        try:
            system.remove_index_leftovers(index)  # a crashed run's, left under the index just claimed
        except BaseException:
            system.CLAIMS.release(index)
            raise
        _ACTIVE.add(cluster)
        try:
            cluster._boot_all(boot_timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def hosts_text(self) -> str:
        """/etc/hosts as every node sees it."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                 *(f"{node.ip}\t{node.name}" for node in self.nodes)]
        return "\n".join(lines) + "\n"

    def hostfile_text(self, slots: int = 1, nodes: list[Node] | None = None, by_ip: bool = False) -> str:
        """A DeepSpeed hostfile naming every node (or ``nodes``), by name or by address."""
        return "".join(f"{node.ip if by_ip else node.name} slots={slots}\n" for node in (nodes or self.nodes))

    def hostfile(self, slots: int = 1) -> Path:
        """Write hostfile_text() on the host and return its path (put_file it for use inside a node)."""
        path = self.state_dir / f"hostfile-{slots}"
        path.write_text(self.hostfile_text(slots))
        return path

    def install_python_env(self, path: str = pyenv.DEFAULT_ENV, *, prebuilt_ops: bool = False,
                           optimizer_ops: bool = False) -> str:
        """A venv at ``path`` on every node importing torch/deepspeed from the shared venv; its python.

        ``prebuilt_ops``: DeepSpeed's CPU comm op ready in ``{path}/torch_extensions`` on every node,
        so a DeepSpeed launch does not JIT-build it per node (built once per machine, then copied);
        ``optimizer_ops``: FusedAdam and CPUAdam too, for the ZeRO suite.
        """
        ops = pyenv.OPTIMIZER_OPS if optimizer_ops else pyenv.COMM_OPS if prebuilt_ops else ()
        return pyenv.install(self, path, ops)

    def reset_homes(self) -> None:
        """Kill the test user's processes and empty its home and /tmp on every running node."""
        for node in self.nodes:
            node.reset_home()

    def renew(self) -> None:
        """The cluster as just started, for a next user: healed, the test user's processes killed, every
        node's home, /tmp, /opt and root's home emptied (host keys and addresses stay)."""
        self.heal()
        for node in self.nodes:
            node.reset_disks()

    def heal(self) -> None:
        """Undo faults: every node thawed, booted, unshaped, binaries unhidden, default sshd config."""
        for node in self.nodes:
            node.heal()

    def stop(self) -> None:
        """Kill every node, delete namespaces, links and the state dir; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        problems = []
        try:
            for node in self.nodes:
                try:
                    node._destroy()
                except Exception as exc:
                    problems.append(f"{node.name}: {exc}")
            sh([tool("ip"), "link", "del", self.bridge], check=False)
            try:
                system.remove_state_dir(self.state_dir)
            except ClusterError as exc:
                problems.append(str(exc))
        finally:
            _ACTIVE.discard(self)
            system.CLAIMS.release(self.index)
        if problems:
            raise ClusterError("cluster cleanup incomplete: " + "; ".join(problems))

    def _boot_all(self, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        uid, gid = system.ensure_user(self.user, self.password)
        self.state_dir.mkdir(mode=0o755)
        if self.shared_home:
            (self.state_dir / "shared-home").mkdir(mode=0o755)
        if self.shared_tmp:
            (self.state_dir / "shared-tmp").mkdir(mode=0o1777)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        for node in self.nodes:
            node._prepare(uid, gid, self.hosts_text())
        keygens = [node._keygen() for node in self.nodes]
        batch = [*(f"netns add {node.netns}" for node in self.nodes),
                 f"link add {self.bridge} type bridge", f"addr add {self.bridge_ip}/24 dev {self.bridge}",
                 f"link set {self.bridge} up"]
        for node in self.nodes:
            batch += [f"link add {node.veth} type veth peer name eth0 netns {node.netns}",
                      f"link set {node.veth} master {self.bridge} up"]
        sh([tool("ip"), "-batch", "-"], input="\n".join(batch) + "\n")
        for keygen in keygens:
            if keygen.wait(timeout=30) != 0:
                raise ClusterError("ssh-keygen failed to make a host key")
        anchors = [(node, node._spawn_anchor()) for node in self.nodes]
        for node, anchor in anchors:
            node._await_anchor(anchor, deadline)
        self.startup_seconds = time.monotonic() - started


@atexit.register
def _stop_leftover_clusters() -> None:
    for cluster in list(_ACTIVE):
        with suppress(Exception):
            cluster.stop()
