"""Slurm on the namespace cluster: Debian's slurmctld on the host, one slurmd in every node, one munged.

    with Cluster.start(3) as cluster, SlurmCluster.start(cluster) as slurm:
        rc, out, err = cluster.nodes[0].run("srun -N3 hostname")

- **munge**: one ``munged`` on the host for everyone, with its own key; its socket lives in a mode-755
  directory under ``/run`` (which every node shares) named by ``AuthInfo=socket=...``.
- **slurmctld** runs on the host inside a UTS namespace whose hostname is the ``SlurmctldHost`` name
  (``ckctlK``), reached by the nodes at the bridge address. ``SlurmUser=root``, proctrack/linuxproc,
  task/none, no accounting: nothing needs systemd, cgroup writes or a database.
- **slurmd** runs inside each node (its network, PID, UTS and mount namespaces), so tasks see exactly
  what an SSH session there sees: the node's hostname, /home, /opt, /tmp and interfaces. slurmd 22.05
  will not start without a cgroup filesystem at /sys/fs/cgroup, which the node's own sysfs mount hides;
  the host's cgroup hierarchies are mounted there read-only, as they are on the host. Killing or
  freezing a node kills or freezes its slurmd with it. ``%n`` in the slurmd paths keeps each node's
  spool, pid and log apart; they sit in the node's private harness directory.
- **/etc/slurm** in each node is a bind mount of a per-node copy of the config; the host's own
  /etc/slurm is never touched. Clients on the host use ``SLURM_CONF`` (:meth:`SlurmCluster.host_env`).
  With ``conf_dir`` the nodes' config lives there instead (a directory in each node's /opt, say) and
  /etc/slurm is left as the host has it (no slurm.conf): slurmd is started with ``-f``, and clients
  in the nodes find the config only through ``SLURM_CONF`` (:meth:`SlurmCluster.client_env`), as on
  sites that keep Slurm's config outside the default path.
- Timeouts are short (``SlurmdTimeout``): a killed slurmd is noticed by Slurm only after it.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.cluster import system
from tests.cluster.harness import Cluster
from tests.cluster.node import HARNESS_DIR, CommandResult, Node
from tests.cluster.system import ClusterError, ClusterUnavailable, tool

INSTALL_HINT = "apt-get install -y slurmctld slurmd slurm-client munge"
NEEDED = ("slurmctld", "slurmd", "srun", "sbcast", "salloc", "sinfo", "scontrol", "scancel", "munged")
RUN_ROOT = system.SLURM_RUN_ROOT
RUN_DIR_PREFIX = system.SLURM_RUN_DIR_PREFIX
PARTITION = "debug"
#: Seconds without an answer from a slurmd before slurmctld marks its node DOWN (short, for tests).
SLURMD_TIMEOUT_S = 10
CTLD_PORT_BASE = 16817


def check_slurm_host() -> None:
    """Raise ClusterUnavailable where Slurm's daemons are not installed here."""
    missing = [name for name in NEEDED if shutil.which(name, path=os.environ.get("PATH", "") + ":"
                                                       + "/usr/sbin:/sbin") is None]
    if missing:
        raise ClusterUnavailable(f"the Slurm harness needs {', '.join(missing)}: {INSTALL_HINT} "
                                 "(scripts/test installs them)")


def cgroup_mounts(mountinfo: str) -> list[tuple[str, str, str]]:
    """(mount point, fstype, options) of /sys/fs/cgroup and the hierarchies under it, in mount order."""
    found = []
    for line in mountinfo.splitlines():
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        point = fields[4]
        if point != "/sys/fs/cgroup" and not point.startswith("/sys/fs/cgroup/"):
            continue
        options = ",".join(o for o in rest[2].split(",") if o not in ("rw", "ro"))
        found.append((point, rest[0], options))
    return found


def cgroup_script(mounts: list[tuple[str, str, str]]) -> str:
    """Shell lines that mount the host's cgroup layout read-only at /sys/fs/cgroup in a node."""
    q = shlex.quote
    lines = ["mountpoint -q /sys/fs/cgroup && exit 0"]
    for point, fstype, options in mounts:
        if fstype == "tmpfs":
            lines.append(f"mount -t tmpfs -o mode=755 cgroup {q(point)}")
        elif fstype in ("cgroup", "cgroup2"):
            lines.append(f"mkdir -p {q(point)} && mount -t {fstype} -o {q(','.join(['ro', *filter(None, [options])]))} "
                         f"{fstype} {q(point)}")
    if mounts and mounts[0][1] == "tmpfs":
        lines.append("mount -o remount,ro /sys/fs/cgroup")
    return "\n".join(lines)


#: Each Slurm started here numbers its jobs from its own range, as one long-lived controller would: a
#: slurmstepd left from an earlier instance (it outlives its slurmd) reports to the controller at the
#: same address, and with ids restarting at 1 its "step 1.0 ended" would end the new job 1's step 0.
_FIRST_JOB_IDS = itertools.count((int(time.time()) % 50_000) * 1000 + 1, 1000)


class SlurmCluster:
    """Slurm daemons on a running :class:`Cluster`; ``start`` it (a context manager) or ``launch``/``stop``."""

    def __init__(self, cluster: Cluster, gpus_per_node: int = 0, conf_dir: str | None = None,
                 extra_conf: tuple[str, ...] = ()) -> None:
        self.cluster = cluster
        self.gpus_per_node = gpus_per_node
        #: More slurm.conf lines (a HealthCheckProgram, a Prolog...), written before the nodes.
        self.extra_conf = extra_conf
        #: Where each node's config lives when not at /etc/slurm (found only through SLURM_CONF).
        self.conf_dir = conf_dir
        self.state = cluster.state_dir / "slurm"
        self.run_dir = RUN_ROOT / f"{RUN_DIR_PREFIX}{os.getpid()}-{cluster.index}"
        self.controller = f"ckctl{cluster.index}"
        self.port = CTLD_PORT_BASE + 2 * cluster.index
        self.first_job_id = next(_FIRST_JOB_IDS)
        self.cpus = os.cpu_count() or 1
        self._munged: subprocess.Popen[bytes] | None = None
        self._slurmctld: subprocess.Popen[bytes] | None = None
        self._stopped = False

    @classmethod
    @contextmanager
    def start(cls, cluster: Cluster, **options: int | str | None) -> Iterator[SlurmCluster]:
        slurm = cls.launch(cluster, **options)  # type: ignore[arg-type]
        try:
            yield slurm
        finally:
            slurm.stop()

    @classmethod
    def launch(cls, cluster: Cluster, *, gpus_per_node: int = 0, conf_dir: str | None = None,
               extra_conf: tuple[str, ...] = (), timeout: float = 60) -> SlurmCluster:
        """munged, slurmctld, and a slurmd in every node; returns once every node is idle.

        ``conf_dir``: an absolute directory in each node's private /opt for its config instead of
        /etc/slurm; clients there then need :meth:`client_env` (``SLURM_CONF``) to find it.
        """
        check_slurm_host()
        if conf_dir is not None and not conf_dir.startswith("/opt/"):
            raise ValueError(f"conf_dir must be under the nodes' private /opt, not {conf_dir}")
        system.remove_slurm_leftovers(cluster.index)  # a crashed run's daemons on this index
        slurm = cls(cluster, gpus_per_node, conf_dir, extra_conf)
        try:
            slurm._start_daemons(timeout)
        except BaseException:
            slurm.stop()
            raise
        return slurm

    # --- config ---------------------------------------------------------------------------------

    @property
    def munge_socket(self) -> str:
        return str(self.run_dir / "munge.socket.2")

    def conf_text(self) -> str:
        """slurm.conf: every node, one partition, the settings a namespace cluster needs."""
        c = self.cluster
        harness = HARNESS_DIR
        lines = [
            f"ClusterName=ckt{c.index}",
            f"SlurmctldHost={self.controller}({c.bridge_ip})",
            f"SlurmctldPort={self.port}",
            f"SlurmdPort={self.port + 1}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root", "SlurmdUser=root",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "MpiDefault=none", "ReturnToService=2", f"FirstJobId={self.first_job_id}",
            f"SlurmdTimeout={SLURMD_TIMEOUT_S}", "SlurmctldTimeout=10", "MessageTimeout=5",
            "InactiveLimit=0", "KillWait=2", "MinJobAge=30", "UnkillableStepTimeout=10",
            f"StateSaveLocation={self.state}/ctld",
            f"SlurmctldPidFile={self.run_dir}/slurmctld.pid", f"SlurmctldLogFile={self.state}/slurmctld.log",
            f"SlurmdSpoolDir={harness}/slurmd-%n", f"SlurmdPidFile={harness}/slurmd-%n.pid",
            f"SlurmdLogFile={harness}/slurmd-%n.log",
        ]
        lines += self.extra_conf
        gres = ""
        if self.gpus_per_node:
            lines.append("GresTypes=gpu")
            gres = f" Gres=gpu:{self.gpus_per_node}"
        for node in c.nodes:
            lines.append(f"NodeName={node.name} NodeAddr={node.ip} CPUs={self.cpus} RealMemory=1000 "
                         f"State=UNKNOWN{gres}")
        lines.append(f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    def gres_text(self) -> str:
        """gres.conf: ``Count`` GPUs without device files (these nodes have none)."""
        return "".join(f"NodeName={n.name} Name=gpu Count={self.gpus_per_node}\n" for n in self.cluster.nodes)

    def _write_config(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        (directory / "slurm.conf").write_text(self.conf_text())
        (directory / "plugstack.conf").write_text("")
        (directory / "gres.conf").write_text(self.gres_text() if self.gpus_per_node else "")

    def host_env(self) -> dict[str, str]:
        """Environment for Slurm clients run on the host (sinfo, scontrol)."""
        return {**os.environ, "SLURM_CONF": str(self.state / "etc" / "slurm.conf")}

    @property
    def node_conf(self) -> str:
        """slurm.conf's path inside each node."""
        return f"{self.conf_dir or '/etc/slurm'}/slurm.conf"

    def client_env(self) -> dict[str, str]:
        """What a user's shell in a node needs for Slurm's clients: SLURM_CONF where the config is not
        at the default path, else nothing."""
        return {"SLURM_CONF": self.node_conf} if self.conf_dir else {}

    # --- daemons --------------------------------------------------------------------------------

    def _start_daemons(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        shutil.rmtree(self.state, ignore_errors=True)  # an earlier Slurm's on this cluster (kept for its logs)
        self.state.mkdir(mode=0o755)
        (self.state / "ctld").mkdir(mode=0o700)
        self._write_config(self.state / "etc")
        self.run_dir.mkdir(mode=0o755)
        key = self.state / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._munged = subprocess.Popen(
            [tool("munged"), "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--pid-file={self.run_dir}/munged.pid", f"--seed-file={self.state}/munged.seed",
             f"--log-file={self.state}/munged.log", "--num-threads=2"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self._wait(lambda: Path(self.munge_socket).exists(), deadline, "munged did not create its socket",
                   self.state / "munged.log")
        conf = self.state / "etc" / "slurm.conf"
        self._slurmctld = subprocess.Popen(
            [tool("unshare"), "--uts", "--", "/bin/sh", "-c",
             f"hostname {self.controller} && exec slurmctld -D -f {shlex.quote(str(conf))}"],
            env=self.host_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        self._wait(lambda: self.host_run(["sinfo", "-h"], check=False).returncode == 0, deadline,
                   "slurmctld does not answer", self.state / "slurmctld.log")
        for node in self.cluster.nodes:
            self.attach(node)
        self.wait_idle(deadline=deadline)

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str, log: Path) -> None:
        while not ready():
            for proc in (self._munged, self._slurmctld):
                if proc is not None and proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise ClusterError(f"{what}: exited {proc.returncode}: {err.strip()} {_tail(log)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{what} in time: {_tail(log)}")
            time.sleep(0.05)

    def attach(self, node: Node) -> None:
        """Give a (re)booted node its /etc/slurm and cgroup mounts and start its slurmd."""
        mounts = cgroup_mounts(Path("/proc/self/mountinfo").read_text())
        if not mounts:
            raise ClusterUnavailable("slurmd 22.05 needs a cgroup filesystem, and this host has none at "
                                     "/sys/fs/cgroup")
        if self.conf_dir:
            conf_dir = node.host_path(self.conf_dir)
            self._write_config(conf_dir)
            for parent in conf_dir.relative_to(node.opt).parents:
                (node.opt / parent).chmod(0o755)
            place = ""
        else:
            # Written in place: a bind mount of it at /etc/slurm may already be there (a slurmd restart).
            self._write_config(node.host_path(f"{HARNESS_DIR}/slurm-etc"))
            place = f"mountpoint -q /etc/slurm || mount --bind {HARNESS_DIR}/slurm-etc /etc/slurm\n"
        script = (f"{place}( {cgroup_script(mounts)} )\n"
                  f"slurmd -N {shlex.quote(node.name)} -f {shlex.quote(self.node_conf)} "
                  f"</dev/null >{HARNESS_DIR}/slurmd-start.out 2>&1 "
                  f"|| {{ s=$?; cat {HARNESS_DIR}/slurmd-start.out >&2; exit $s; }}")
        started = node.run(script, user="root", timeout=30)
        if started.rc != 0:
            raise ClusterError(f"slurmd did not start on {node.name} (exit {started.rc}): {started.stderr.strip()} "
                               f"{_tail(self.slurmd_log(node))}")

    def slurmd_log(self, node: Node) -> Path:
        return node.host_path(f"{HARNESS_DIR}/slurmd-{node.name}.log")

    def slurmd_pid(self, node: Node) -> int | None:
        path = node.host_path(f"{HARNESS_DIR}/slurmd-{node.name}.pid")
        with suppress(OSError, ValueError):
            return int(path.read_text().split()[0])
        return None

    def stop_slurmd(self, node: Node) -> None:
        """Kill the node's slurmd only (the node stays up): Slurm notices after SLURMD_TIMEOUT_S."""
        node.run(f"pkill -KILL -x slurmd -F {HARNESS_DIR}/slurmd-{node.name}.pid", user="root")

    # --- state ----------------------------------------------------------------------------------

    def host_run(self, argv: list[str], *, check: bool = True, timeout: float = 30
                 ) -> subprocess.CompletedProcess[str]:
        """A Slurm client command on the host (as root)."""
        done = subprocess.run(argv, env=self.host_env(), capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and done.returncode != 0:
            raise ClusterError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()}")
        return done

    def states(self) -> dict[str, str]:
        """node -> its state as sinfo prints it (``idle``, ``drain``, ``down*``, ``alloc``...)."""
        out = self.host_run(["sinfo", "-h", "-N", "-o", "%N %t"]).stdout
        return dict(line.split(None, 1) for line in out.splitlines() if line.strip())

    def wait_idle(self, nodes: list[Node] | None = None, deadline: float | None = None) -> None:
        """Wait until every node (or ``nodes``) is idle: registered and free."""
        names = [n.name for n in nodes or self.cluster.nodes]
        deadline = deadline or time.monotonic() + 60
        while True:
            states = self.states()
            if all(states.get(name) == "idle" for name in names):
                return
            if time.monotonic() > deadline:
                logs = " ".join(_tail(self.slurmd_log(n), 300) for n in self.cluster.nodes)
                raise ClusterError(f"nodes not idle in time: {states}; {logs}")
            time.sleep(0.1)

    def drain(self, node: Node, reason: str) -> None:
        """``scontrol update NodeName=N State=DRAIN Reason=...`` (as an admin marks a bad node)."""
        self.host_run(["scontrol", "update", f"NodeName={node.name}", "State=DRAIN", f"Reason={reason}"])

    def resume(self, node: Node) -> None:
        self.host_run(["scontrol", "update", f"NodeName={node.name}", "State=RESUME"], check=False)

    def cancel_all(self) -> None:
        """Cancel every job (between tests)."""
        self.host_run(["scancel", f"--partition={PARTITION}"], check=False)
        deadline = time.monotonic() + 30
        while self.host_run(["squeue", "-h"], check=False).stdout.strip():
            if time.monotonic() > deadline:
                raise ClusterError("jobs still queued 30s after scancel")
            time.sleep(0.1)

    def heal(self) -> None:
        """Every node booted with its slurmd, resumed and idle; no jobs left."""
        self.cluster.heal()
        for node in self.cluster.nodes:
            pid = self.slurmd_pid(node)
            alive = pid is not None and any(p == pid for p in _host_pids(node))
            if not alive:
                self.attach(node)
        self.cancel_all()
        for node in self.cluster.nodes:
            self.resume(node)
        self.wait_idle()

    def salloc(self, node: Node, command: str, args: str = "", *, timeout: float = 240,
               env: Mapping[str, str] | None = None) -> CommandResult:
        """``salloc ARGS COMMAND`` on ``node`` as the test user: COMMAND runs there inside the allocation."""
        return node.run(f"salloc --quiet {args} /bin/bash -c {shlex.quote(command)}", timeout=timeout,
                        env={**self.client_env(), **(env or {})})

    # --- teardown -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop slurmctld and munged and remove their run directory (slurmds die with their nodes)."""
        if self._stopped:
            return
        self._stopped = True
        for node in self.cluster.nodes:
            if node.is_up and not node.frozen:
                with suppress(ClusterError):
                    # Its job steps' slurmstepds too: they outlive slurmd and would report to the next
                    # instance's controller (each node is a PID namespace: only this node's match).
                    node.run(f"pkill -KILL -x slurmd -F {HARNESS_DIR}/slurmd-{node.name}.pid; "
                             "pkill -KILL -x slurmstepd; umount /etc/slurm 2>/dev/null", user="root", timeout=10)
        for proc in (self._slurmctld, self._munged):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _host_pids(node: Node) -> list[int]:
    """Host PIDs of the node's processes mapped to PIDs inside its PID namespace."""
    inside = []
    for pid in node.pids():
        with suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            match = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
            if match:
                inside.append(int(match.group(1).split()[-1]))
    return inside


def _tail(path: Path, chars: int = 1500) -> str:
    with suppress(OSError):
        return f"[{path.name}: {path.read_text(errors='replace')[-chars:]}]"
    return ""
