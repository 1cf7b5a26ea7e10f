"""Host-side plumbing for the namespace cluster: prerequisites, index claims, node processes, leftovers.

Everything the harness creates on the host carries the ``ckt`` prefix (network namespaces, the bridge,
veth ends) or lives in a state directory ``/tmp/clusterkit-cluster-*``, so a later run can find and
remove what a crashed run left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

NAME_PREFIX = "ckt"
STATE_ROOT = Path("/tmp")
STATE_DIR_PREFIX = "clusterkit-cluster-"
#: Each cluster index's lock file (and the host-wide locks): outside STATE_DIR_PREFIX's glob.
LOCK_DIR = Path("/tmp/clusterkit-locks")
#: tests/cluster/slurm.py's munge socket and pid files, one directory ``{prefix}{pid}-{index}`` per Slurm.
SLURM_RUN_ROOT = Path("/run")
SLURM_RUN_DIR_PREFIX = "ckt-slurm-"
SSHD = "/usr/sbin/sshd"
INSTALL_HINT = "apt-get install -y openssh-server openssh-client pdsh rsync"
USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/games"  # what Debian's sshd gives a non-root session
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ClusterError(RuntimeError):
    """The harness could not do what was asked; the message says what failed and how to fix it."""


class ClusterUnavailable(ClusterError):
    """This machine cannot run a namespace cluster at all (not root, no netns, no sshd): tests skip."""


class NodeCommandTimeout(ClusterError):
    """A command inside a node outlived its timeout; carries what it printed before it was killed."""

    def __init__(self, message: str, stdout: str, stderr: str) -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


def tool(name: str) -> str:
    """Absolute path of a system tool, looking in the sbin directories a non-login PATH may lack."""
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SBIN_PATH)
    if found is None:
        raise ClusterError(f"{name} not found on this machine")
    return found


def sh(argv: Sequence[str], *, input: str | None = None, timeout: float = 30,
       check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a host command; with ``check`` a failure raises ClusterError with the command and its stderr."""
    try:
        done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"`{' '.join(argv)}` did not finish in {timeout}s") from exc
    if check and done.returncode != 0:
        raise ClusterError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()}")
    return done


_host_checked: str | None = None


def check_host() -> None:
    """Raise ClusterUnavailable where no cluster can run here, ClusterError where a package is missing."""
    global _host_checked
    if _host_checked == "ok":
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"namespace cluster needs root: running as uid {os.geteuid()}")
    for name, package in (("ip", "iproute2"), ("tc", "iproute2"), ("nsenter", "util-linux"),
                          ("unshare", "util-linux"), ("setpriv", "util-linux"), ("mount", "mount")):
        if shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SBIN_PATH) is None:
            raise ClusterUnavailable(f"namespace cluster needs `{name}` (apt-get install -y {package})")
    if not os.access(SSHD, os.X_OK):
        raise ClusterUnavailable(f"namespace cluster needs Debian's sshd at {SSHD}: {INSTALL_HINT}")
    probe = f"{NAME_PREFIX}probe{os.getpid()}"
    made = sh([tool("ip"), "netns", "add", probe], check=False)
    if made.returncode != 0:
        raise ClusterUnavailable(f"namespace cluster needs network namespaces: `ip netns add` failed: "
                                 f"{made.stderr.strip()}")
    sh([tool("ip"), "netns", "del", probe], check=False)
    missing = [name for name in ("ssh", "ssh-keygen", "pdsh", "rsync", "useradd", "chpasswd")
               if shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SBIN_PATH) is None]
    if missing:
        raise ClusterError(f"namespace cluster needs {', '.join(missing)}: {INSTALL_HINT} "
                           "(scripts/test installs them)")
    _host_checked = "ok"


def ensure_user(name: str, password: str) -> tuple[int, int]:
    """Create the test user once (no home on the host: each node mounts its own); set its password.

    The account lives in the shared /etc/passwd and /etc/shadow. A private /etc/shadow per node
    would not hold: replacing the host's file (as chpasswd and useradd do) detaches such mounts.
    """
    with host_lock("test-user"):  # useradd and chpasswd of two test processes at once would collide
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            sh([tool("useradd"), "--no-create-home", "--home-dir", f"/home/{name}", "--shell", "/bin/bash",
                "--user-group", name])
            entry = pwd.getpwnam(name)
        sh([tool("chpasswd")], input=f"{name}:{password}\n")
    return entry.pw_uid, entry.pw_gid


# --- processes inside a node ---------------------------------------------------------------------

def netns_inode(netns: str) -> int | None:
    """Inode of a named network namespace (what /proc/PID/ns/net of its members stats to)."""
    try:
        return Path("/run/netns", netns).stat().st_ino
    except OSError:
        return None


def pids_in_netns(netns: str) -> list[int]:
    """Every live (non-zombie) process whose network namespace is ``netns``."""
    inode = netns_inode(netns)
    if inode is None:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "ns" / "net").stat().st_ino == inode:
                found.append(int(entry.name))
        except OSError:  # gone, or a zombie whose namespaces are already released
            continue
    return found


def signal_pids(pids: Sequence[int], sig: int) -> None:
    """Send ``sig`` to each pid, ignoring those that are already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_netns_processes(netns: str, timeout: float = 10) -> None:
    """SIGKILL everything in the namespace until nothing is left (forks racing the kill included)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = pids_in_netns(netns)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"processes {pids} in {netns} survived SIGKILL for {timeout}s")
        signal_pids(pids, signal.SIGKILL)
        time.sleep(0.02)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/PID/task/*/children)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(p) for p in (task / "children").read_text().split()]
    return children


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- leftovers and index claims --------------------------------------------------------------------

def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` in the host's mount namespace."""
    prefix = str(directory).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(directory) or point.startswith(prefix):
            points.append(point)
    return points


def remove_state_dir(directory: Path) -> None:
    """Delete a state directory, refusing if anything is mounted inside it (rmtree would follow)."""
    if not directory.exists():
        return
    mounted = mounts_under(directory)
    if mounted:
        raise ClusterError(f"refusing to delete {directory}: mounts inside it on the host: {mounted}")
    shutil.rmtree(directory, ignore_errors=True)


#: Where a harness's cluster index is named once a leftover: netns ``ckt{i}n{k}``, veth ``ckt{i}v{k}``, bridge
#: ``cktbr{i}``, state dir ``clusterkit-cluster-{pid}-{i}`` (Slurm's run dir, tests/cluster/slurm.py, likewise).
_INDEXED = re.compile(rf"^{NAME_PREFIX}(?:(\d+)[nv]\d+|br(\d+))$")
_PROBE = re.compile(rf"^{NAME_PREFIX}probe(\d+)$")
MAX_INDEX = 255


def index_of(name: str) -> int | None:
    """The cluster index a harness netns, link or ``...-{pid}-{index}`` directory name carries, if any."""
    if (named := _INDEXED.match(name)) is not None:
        return int(named.group(1) or named.group(2))
    if (owned := re.match(r"^.*-\d+-(\d+)$", name)) is not None:
        return int(owned.group(1))
    return None


def host_netns() -> list[str]:
    """Every named network namespace on the host."""
    return [line.split()[0] for line in sh([tool("ip"), "netns", "list"], check=False).stdout.splitlines()
            if line.split()]


def host_links() -> list[str]:
    """Every network link on the host, by name (a veth without its ``@peer``)."""
    links = []
    for line in sh([tool("ip"), "-o", "link", "show"], check=False).stdout.splitlines():
        fields = line.split(":")
        if len(fields) > 1:
            links.append(fields[1].strip().split("@")[0])
    return links


def remove_index_leftovers(index: int) -> list[str]:
    """Remove every netns, link, state dir and Slurm run of cluster ``index``; return what went.

    Call only holding ``index`` (:data:`CLAIMS`): then no live cluster uses them.
    """
    removed = []
    for netns in host_netns():
        if netns.startswith(NAME_PREFIX) and index_of(netns) == index:
            kill_netns_processes(netns)
            sh([tool("ip"), "netns", "del", netns], check=False)
            removed.append(f"netns {netns}")
    for link in host_links():
        if link.startswith(NAME_PREFIX) and index_of(link) == index:
            sh([tool("ip"), "link", "del", link], check=False)
            removed.append(f"link {link}")
    for directory in STATE_ROOT.glob(f"{STATE_DIR_PREFIX}*-{index}"):
        if index_of(directory.name) == index:
            remove_state_dir(directory)
            removed.append(f"dir {directory}")
    return removed + remove_slurm_leftovers(index)


def remove_slurm_leftovers(index: int) -> list[str]:
    """Slurm daemons (munged, slurmctld: host processes) and run dirs left on cluster ``index``; call holding
    it, before its own Slurm starts. A pid is killed only if its command line names that run's dirs (pids
    are reused, and other test processes run Slurms of their own)."""
    removed = []
    for directory in SLURM_RUN_ROOT.glob(f"{SLURM_RUN_DIR_PREFIX}*-{index}"):
        if index_of(directory.name) != index:
            continue
        owner = directory.name.removeprefix(SLURM_RUN_DIR_PREFIX)  # "{pid}-{index}", in both daemons' argv
        for pidfile, name in (("slurmctld.pid", "slurmctld"), ("munged.pid", "munged")):
            with contextlib.suppress(OSError, ValueError):
                pid = int((directory / pidfile).read_text().split()[0])
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if Path(f"/proc/{pid}/comm").read_text().strip() == name and f"-{owner}/" in argv:
                    signal_pids([pid], signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(f"dir {directory}")
    return removed


def remove_leftovers() -> list[str]:
    """Remove what crashed runs left: every index's netns, links and state dirs that no live process holds.

    Each index is claimed while its leftovers go, so a cluster another process starts meanwhile is safe.
    """
    names = [*host_netns(), *host_links()]
    removed = []
    for name in names:
        probe = _PROBE.match(name)
        if probe is not None and not is_running(int(probe.group(1))):
            sh([tool("ip"), "netns", "del", name], check=False)
            removed.append(f"netns {name}")
    indexes = {index_of(name) for name in names if name.startswith(NAME_PREFIX)}
    indexes |= {index_of(d.name) for d in STATE_ROOT.glob(STATE_DIR_PREFIX + "*")}
    indexes |= {index_of(d.name) for d in SLURM_RUN_ROOT.glob(SLURM_RUN_DIR_PREFIX + "*")}
    for index in sorted(i for i in indexes if i is not None):
        if CLAIMS.try_claim(index):
            try:
                removed += remove_index_leftovers(index)
            finally:
                CLAIMS.release(index)
    return removed


class IndexClaims:
    """Cluster indexes (a subnet, a bridge, namespace names, Slurm ports) held by live processes.

    Each index is an flock on its own file, so clusters of several test processes (pytest-xdist's
    workers, a clone's pytest inside the suite) run side by side, and an index whose holder died is
    free again: what it left is a leftover.
    """

    def __init__(self, directory: Path = LOCK_DIR) -> None:
        self._directory = directory
        self._held: dict[int, int] = {}
        self._mutex = threading.Lock()

    def try_claim(self, index: int) -> bool:
        """Hold ``index`` if nothing (this process included) holds it."""
        with self._mutex:
            if index in self._held:
                return False
            self._directory.mkdir(mode=0o755, exist_ok=True)
            fd = os.open(self._directory / f"{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return False
                raise
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._held[index] = fd
            return True

    def claim(self, timeout: float) -> int:
        """The lowest free index, held; ClusterError if every one stays busy for ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(MAX_INDEX + 1):
                if self.try_claim(index):
                    return index
            if time.monotonic() > deadline:
                raise ClusterError(f"every cluster index 0-{MAX_INDEX} stayed held for {timeout}s "
                                   f"(locks in {self._directory})")
            time.sleep(0.5)

    def release(self, index: int) -> None:
        with self._mutex:
            fd = self._held.pop(index, None)
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


CLAIMS = IndexClaims()


@contextlib.contextmanager
def host_lock(name: str) -> Iterator[None]:
    """An flock for a host-wide change several test processes may make at once (the test user)."""
    LOCK_DIR.mkdir(mode=0o755, exist_ok=True)
    with open(LOCK_DIR / f"{name}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield
