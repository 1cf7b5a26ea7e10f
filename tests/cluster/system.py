"""Host-side plumbing for the namespace cluster: prerequisites, the run lock, node processes, leftovers.

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
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path

NAME_PREFIX = "ckt"
STATE_ROOT = Path("/tmp")
STATE_DIR_PREFIX = "clusterkit-cluster-"
LOCK_PATH = Path("/tmp/clusterkit-cluster.lock")
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


# --- leftovers and the run lock --------------------------------------------------------------------

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


def remove_leftovers(keep: Collection[str] = ()) -> list[str]:
    """Remove every ``ckt`` netns, link and state dir not named in ``keep``; return what went.

    Call only while holding the run lock: then nothing else on the machine is using them.
    """
    removed = []
    ip = tool("ip")
    for line in sh([ip, "netns", "list"], check=False).stdout.splitlines():
        netns = line.split()[0] if line.split() else ""
        if netns.startswith(NAME_PREFIX) and netns not in keep:
            kill_netns_processes(netns)
            sh([ip, "netns", "del", netns], check=False)
            removed.append(f"netns {netns}")
    for line in sh([ip, "-o", "link", "show"], check=False).stdout.splitlines():
        fields = line.split(":")
        if len(fields) > 1:
            link = fields[1].strip().split("@")[0]
            if link.startswith(NAME_PREFIX) and link not in keep:
                sh([ip, "link", "del", link], check=False)
                removed.append(f"link {link}")
    for directory in STATE_ROOT.glob(STATE_DIR_PREFIX + "*"):
        if str(directory) in keep:
            continue
        remove_state_dir(directory)
        removed.append(f"dir {directory}")
    return removed


class RunLock:
    """One namespace-cluster run per machine at a time; clusters inside one process share the hold.

    The first cluster of a process takes the file lock (waiting for another session to finish); the
    last one to stop releases it.
    """

    def __init__(self, path: Path = LOCK_PATH) -> None:
        self._path = path
        self._fd: int | None = None
        self._holders = 0
        self._mutex = threading.Lock()

    def acquire(self, timeout: float) -> None:
        """Take (or share) the hold; raise ClusterError naming the holder if it stays busy."""
        with self._mutex:
            if self._holders == 0:
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EACCES):
                            os.close(fd)
                            raise
                        if time.monotonic() > deadline:
                            holder = Path(self._path).read_text().strip() or "unknown"
                            os.close(fd)
                            raise ClusterError(f"another namespace cluster run (pid {holder}) held "
                                               f"{self._path} for {timeout}s") from exc
                        time.sleep(0.2)
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
            self._holders += 1

    def release(self) -> None:
        """Drop one hold; the last one unlocks the file."""
        with self._mutex:
            self._holders -= 1
            if self._holders == 0:
                self._release_fd()

    def _release_fd(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


RUN_LOCK = RunLock()
