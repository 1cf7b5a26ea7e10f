"""One node of the namespace cluster: a little host with its own namespaces, disks and sshd.

Its network namespace holds ``eth0`` on the cluster bridge; its PID namespace has a bash init that
reaps orphans; its private mount namespace puts per-node directories (host side under ``node.root``)
at /home, /opt, /tmp, /root, /etc/ssh and /etc/hosts. Everything else is shared.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import select
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import termios
import time
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NamedTuple

from tests.cluster import pyenv, system
from tests.cluster.system import ROOT_PATH, USER_PATH, ClusterError, NodeCommandTimeout, sh, tool

if TYPE_CHECKING:
    from tests.cluster.harness import Cluster

HARNESS_DIR = "/tmp/.ckt-harness"  # root-only, each node's own (a private mount where /tmp is shared)
DEFAULT_SSHD_OPTIONS: dict[str, str] = {
    "HostKey": "/etc/ssh/ssh_host_ed25519_key",
    "PidFile": "/etc/ssh/sshd.pid",  # /run is shared between nodes; /etc/ssh is not
    "PasswordAuthentication": "yes",
    "PubkeyAuthentication": "yes",
    "KbdInteractiveAuthentication": "no",
    "UsePAM": "no",
    "PermitRootLogin": "prohibit-password",
    "StrictModes": "yes",
    "UseDNS": "no",
    "PrintMotd": "no",
    "PrintLastLog": "no",
    "MaxStartups": "200",  # all-to-all checks open many connections at once
    "MaxSessions": "100",
    "LoginGraceTime": "30",
    "LogLevel": "VERBOSE",
    "AcceptEnv": "LANG LC_*",
    "Subsystem": "sftp internal-sftp",
}


class CommandResult(NamedTuple):
    """What a command inside a node returned."""

    rc: int
    stdout: str
    stderr: str


class Node:
    """One host of the cluster. Host-side paths: ``root`` (all of it), ``home``, ``opt``, ``tmp``."""

    def __init__(self, cluster: Cluster, number: int, name: str, ip: str) -> None:
        self.cluster = cluster
        self.number = number
        self.name = name
        self.ip = ip
        self.netns = f"{system.NAME_PREFIX}{cluster.index}n{number}"
        self.veth = f"{system.NAME_PREFIX}{cluster.index}v{number}"
        self.root = cluster.state_dir / name
        #: Host side of the node's /home: its own, or one directory every node mounts (an NFS-like share).
        self.home_root = cluster.state_dir / "shared-home" if cluster.shared_home else self.root / "home"
        self.home = self.home_root / cluster.user
        self.opt = self.root / "opt"
        #: Host side of the node's /tmp: its own, or one directory every node mounts (a shared scratch).
        self.tmp = cluster.state_dir / "shared-tmp" if cluster.shared_tmp else self.root / "tmp"
        #: Host side of HARNESS_DIR: inside the node's own /tmp, or its own directory mounted there.
        self.harness = self.root / "harness" if cluster.shared_tmp else self.tmp / HARNESS_DIR[len("/tmp/"):]
        self.etc_ssh = self.root / "etc-ssh"
        self.root_home = self.root / "root-home"
        self.init_pid: int | None = None
        self.frozen = False
        self._anchor: subprocess.Popen[str] | None = None
        self._sshd_overrides: dict[str, str] = {}
        self._overlays: dict[str, str] = {}  # directory in node -> its overlay in HARNESS_DIR

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.ip} {'up' if self.is_up else 'down'}>"

    @property
    def is_up(self) -> bool:
        return self.init_pid is not None and system.is_running(self.init_pid)

    def host_path(self, path_in_node: str) -> Path:
        """Where a path in one of the node's private directories lives on the host."""
        path = PurePosixPath(path_in_node)
        for private, on_host in (("/home", self.home_root), ("/opt", self.opt), (HARNESS_DIR, self.harness),
                                 ("/tmp", self.tmp),
                                 ("/etc/ssh", self.etc_ssh), ("/root", self.root_home)):
            if path.is_relative_to(private):
                return on_host / path.relative_to(private)
        raise ClusterError(f"{path_in_node} is on the filesystem all nodes share, not in {self.name}'s "
                           "private /home, /opt, /tmp, /root or /etc/ssh")

    # --- running things inside ------------------------------------------------------------------

    def run(self, cmd: str, user: str | None = None, timeout: float = 60, *, input: str | None = None,
            env: Mapping[str, str] | None = None, login: bool = False, check: bool = False) -> CommandResult:
        """Run ``cmd`` with bash in the node as ``user`` (default: the test user) from its home.

        The environment is what a non-interactive SSH session gets (HOME, USER, LOGNAME, SHELL, PATH,
        LANG) plus ``env``; ``login`` makes bash a login shell. A command still running after
        ``timeout`` seconds is killed and NodeCommandTimeout raised; ``check`` raises on non-zero exit.
        Background children that keep stdout open make this wait for them: redirect their output.
        """
        account = pwd.getpwnam(user or self.cluster.user)
        argv = self._argv(cmd, account.pw_name, env, login)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = "", ""
            raise NodeCommandTimeout(f"{self.name}: `{cmd}` still running after {timeout}s", out,
                                     err) from None
        result = CommandResult(proc.returncode, out, err)
        if check and result.rc != 0:
            raise ClusterError(f"{self.name}: `{cmd}` as {account.pw_name} exited {result.rc}\n"
                               f"stdout: {out[-2000:]}\nstderr: {err[-2000:]}")
        return result

    def run_in_terminal(self, cmd: str, answers: Mapping[str, str], timeout: float = 300,
                        env: Mapping[str, str] | None = None) -> CommandResult:
        """Run ``cmd`` as the test user on a terminal of its own (a pty, its controlling tty), typing
        ``answers[prompt]`` each time ``prompt`` appears in the output, as a person would.

        Returns the exit code and everything the terminal showed (stdout and stderr together); the
        prompts seen are in ``stderr`` as one line each, so tests can count them.
        """
        argv = self._argv(cmd, self.cluster.user, env, login=False)
        main, child = os.openpty()

        def controlling_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, preexec_fn=controlling_terminal,
                                close_fds=True)
        os.close(child)
        shown = b""
        prompts: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                if time.monotonic() > deadline:
                    raise NodeCommandTimeout(f"{self.name}: `{cmd}` still running after {timeout}s",
                                             shown.decode(errors="replace"), "")
                ready, _, _ = select.select([main], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(main, 4096)
                    except OSError:  # EIO: every process left the terminal
                        chunk = b""
                    if not chunk and proc.poll() is not None:
                        break
                    shown += chunk
                    text = shown.decode(errors="replace")
                    for prompt, answer in answers.items():
                        if text.count(prompt) > prompts.count(prompt):
                            prompts.append(prompt)
                            os.write(main, answer.encode() + b"\n")
                elif proc.poll() is not None:
                    break
        finally:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            os.close(main)
        return CommandResult(proc.returncode, shown.decode(errors="replace").replace("\r\n", "\n"),
                             "\n".join(prompts))

    def put_file(self, path_in_node: str, text: str, mode: int = 0o644, user: str | None = None) -> None:
        """Write ``text`` to a file in the node as ``user`` (default: the test user), making parent dirs."""
        path = shlex.quote(path_in_node)
        self.run(f'mkdir -p "$(dirname {path})" && cat > {path} && chmod {mode:o} {path}', user=user,
                 input=text, check=True)

    def _argv(self, cmd: str, user: str, env: Mapping[str, str] | None, login: bool) -> list[str]:
        """The host command that runs ``cmd`` in the node as ``user``, with a non-interactive SSH
        session's environment (plus ``env``), from the user's home."""
        if self.init_pid is None:
            raise ClusterError(f"{self.name} is down (killed); call boot() first")
        account = pwd.getpwnam(user)
        argv = [tool("nsenter"), "-t", str(self.init_pid), "-m", "-u", "-n", "-p", "--"]
        if account.pw_uid != 0:
            argv += [tool("setpriv"), f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                     "--init-groups"]
        environment = {"HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name,
                       "SHELL": account.pw_shell or "/bin/bash", "LANG": "C.UTF-8",
                       "PATH": ROOT_PATH if account.pw_uid == 0 else USER_PATH, **(env or {})}
        return [*argv, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in environment.items()),
                "/bin/bash", "-lc" if login else "-c", f"cd ~ 2>/dev/null || cd /\n{cmd}"]

    def read_file(self, path_in_node: str, user: str = "root") -> str:
        """The text of a file as the node sees it."""
        return self.run(f"cat {shlex.quote(path_in_node)}", user=user, check=True).stdout

    def pids(self) -> list[int]:
        """Host PIDs of every process in the node (sshd, user sessions, the node's init)."""
        plumbing = self._anchor.pid if self._anchor is not None else None  # unshare, outside the node
        return [pid for pid in system.pids_in_netns(self.netns) if pid != plumbing]

    # --- faults ---------------------------------------------------------------------------------

    def kill(self) -> None:
        """Power the node off: kill every process in it and take its link down.

        Connections to it then time out (no one answers on the wire). boot() brings it back with its
        disks (home, /opt) as they were.
        """
        if self.init_pid is not None:
            # The kernel kills the rest of the node's PID namespace with its init; unshare, which
            # waits for that init, then exits and is reaped here instead of leaving a zombie.
            system.signal_pids([self.init_pid], signal.SIGKILL)
        if self._anchor is not None:
            system.signal_pids([self._anchor.pid], signal.SIGCONT)
            with suppress(subprocess.TimeoutExpired):
                self._anchor.wait(timeout=10)
        system.kill_netns_processes(self.netns)
        self._anchor, self.init_pid, self.frozen = None, None, False
        sh([tool("ip"), "link", "set", self.veth, "down"], check=False)

    def boot(self, timeout: float = 30) -> None:
        """Start the node (again): link up, namespaces, mounts, sshd. A no-op on a running node."""
        if self.is_up:
            return
        sh([tool("ip"), "link", "set", self.veth, "up"])
        self._await_anchor(self._spawn_anchor(), time.monotonic() + timeout)
        for directory, overlay in self._overlays.items():
            self.run(f"mount --bind {overlay} {directory}", user="root", check=True)

    def freeze(self) -> None:
        """SIGSTOP every process in the node, sshd included: connections and commands over SSH hang."""
        for _ in range(3):  # catch processes forked while the first round was being stopped
            system.signal_pids(self.pids(), signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT every process in the node."""
        system.signal_pids(self.pids(), signal.SIGCONT)
        self.frozen = False

    def shape(self, rate: str = "1mbit", *, delay: str | None = None, loss: str | None = None,
              burst: str = "32kbit", latency: str = "400ms") -> None:
        """Limit the node's link to ``rate`` in both directions (tbf).

        ``delay``/``loss`` need the netem qdisc, which this machine's kernel lacks: asking for them
        raises ClusterError saying so (they work where netem exists).
        """
        if delay or loss:
            qdisc = ["netem", *(["delay", delay] if delay else []), *(["loss", loss] if loss else []),
                     "rate", rate]
        else:
            qdisc = ["tbf", "rate", rate, "burst", burst, "latency", latency]
        for prefix, device in (([tool("tc"), "-n", self.netns], "eth0"), ([tool("tc")], self.veth)):
            done = sh([*prefix, "qdisc", "replace", "dev", device, "root", *qdisc], check=False)
            if done.returncode != 0:
                if qdisc[0] == "netem":
                    raise ClusterError("delay/loss need the netem qdisc, which this kernel does not have "
                                       f"(tc: {done.stderr.strip()}); only rate limits (tbf) work here")
                raise ClusterError(f"tc could not shape {self.name}: {done.stderr.strip()}")

    def unshape(self) -> None:
        """Remove any shaping from the node's link."""
        sh([tool("tc"), "-n", self.netns, "qdisc", "del", "dev", "eth0", "root"], check=False)
        sh([tool("tc"), "qdisc", "del", "dev", self.veth, "root"], check=False)

    def qdisc(self) -> str:
        """``tc qdisc show`` of the node's eth0."""
        return sh([tool("tc"), "-n", self.netns, "qdisc", "show", "dev", "eth0"]).stdout

    def hide_binary(self, path: str) -> None:
        """Make ``path`` absent on this node only (``command -v`` fails, running it is 'not found').

        The node's view of the directory becomes a hard-linked copy of it without that entry.
        """
        directory, name = os.path.split(os.path.normpath(path))
        if directory not in self._overlays:
            overlay = f"{HARNESS_DIR}/overlay{directory.replace('/', '_')}"
            copied = sh(["cp", "-al", directory, str(self.host_path(overlay))], check=False)
            if copied.returncode != 0:
                raise ClusterError(f"cannot hide {path} on {self.name}: {copied.stderr.strip()}")
            self.run(f"mount --bind {overlay} {directory}", user="root", check=True)
            self._overlays[directory] = overlay
        entry = self.host_path(self._overlays[directory]) / name
        if not entry.is_symlink() and not entry.exists():
            raise ClusterError(f"{path} does not exist on {self.name}")
        entry.unlink()

    def unhide_binary(self, path: str) -> None:
        """Undo hide_binary for ``path``."""
        directory, name = os.path.split(os.path.normpath(path))
        if directory in self._overlays:
            with suppress(FileExistsError):
                os.link(path, self.host_path(self._overlays[directory]) / name, follow_symlinks=False)

    def plant_torch_version(self, version: str, env: str = pyenv.DEFAULT_ENV) -> None:
        """Make torch in this node's env report ``version`` (a hard-linked shadow copy)."""
        pyenv.plant_torch_version(self, version, env)

    def remove_python_env(self, env: str = pyenv.DEFAULT_ENV) -> None:
        """Delete the training env on this node only."""
        pyenv.remove(self, env)

    # --- sshd -----------------------------------------------------------------------------------

    def sshd_listening(self, timeout: float = 2) -> bool:
        """True if sshd on the node's address answers with an SSH banner within ``timeout``."""
        try:
            with socket.create_connection((self.ip, 22), timeout=timeout) as conn:
                conn.settimeout(timeout)
                return conn.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def host_public_key(self) -> str:
        """The node's host key as a public-key line (``ssh-ed25519 AAAA... root@node1``)."""
        return (self.etc_ssh / "ssh_host_ed25519_key.pub").read_text().strip()

    def restart_sshd(self) -> None:
        """Validate the config (``sshd -t``), stop the listening sshd, start it again.

        Sessions already open survive, as with a real ``systemctl restart ssh``.
        """
        config = "/etc/ssh/sshd_config"
        script = f"""
            /usr/sbin/sshd -t -f {config}
            if [ -s /etc/ssh/sshd.pid ]; then
                pid=$(cat /etc/ssh/sshd.pid); kill "$pid" 2>/dev/null || true
                for _ in $(seq 250); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
            fi
            /usr/sbin/sshd -f {config} -E /etc/ssh/sshd.log"""
        done = self.run(script, user="root", timeout=30)
        if done.rc != 0:
            raise ClusterError(f"sshd on {self.name} did not restart: {done.stderr.strip()}")
        self._wait_for_sshd(time.monotonic() + 10)

    def set_sshd_options(self, options: Mapping[str, str]) -> None:
        """Change sshd_config options (e.g. ``{"PasswordAuthentication": "no"}``) and restart sshd.

        The new config is checked with ``sshd -t`` first; if sshd rejects it, ClusterError carries
        sshd's message and the running sshd keeps its old config.
        """
        overrides = {**self._sshd_overrides, **options}
        candidate = self.etc_ssh / "sshd_config.candidate"
        candidate.write_text(self._sshd_config_text(overrides))
        checked = self.run("/usr/sbin/sshd -t -f /etc/ssh/sshd_config.candidate", user="root")
        if checked.rc != 0:
            candidate.unlink()
            raise ClusterError(f"sshd -t rejected the config for {self.name}: {checked.stderr.strip()}")
        candidate.replace(self.etc_ssh / "sshd_config")
        self._sshd_overrides = overrides
        self.restart_sshd()

    def serve_host_key_from_its_own_path(self) -> str:
        """sshd serves a new host key named in an included file only root can read, as hardened images
        do; the stale ``/etc/ssh/ssh_host_ed25519_key.pub`` stays. Returns the served public key line."""
        keys = self.etc_ssh / "keys"
        keys.mkdir(exist_ok=True)
        for old in keys.glob("host_ed25519*"):
            old.unlink()
        subprocess.run([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", f"root@{self.name}-own",
                        "-f", str(keys / "host_ed25519")], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        included = self.etc_ssh / "sshd_config.d"
        included.mkdir(exist_ok=True)
        conf = included / "10-host-key.conf"
        conf.write_text("HostKey /etc/ssh/keys/host_ed25519\n")
        conf.chmod(0o600)
        self.set_sshd_options({"Include": "/etc/ssh/sshd_config.d/*.conf", "HostKey": ""})
        return (keys / "host_ed25519.pub").read_text().strip()

    def regenerate_host_keys(self) -> None:
        """Give the node a new host key (as after a reinstall) and restart sshd with it."""
        for key in self.etc_ssh.glob("ssh_host_*"):
            key.unlink()
        self._keygen().wait(timeout=30)
        self.restart_sshd()

    # --- between tests -------------------------------------------------------------------------

    def reset_home(self) -> None:
        """Kill the test user's processes in the node; empty its home and the node's /tmp."""
        self._kill_user_processes()
        self._empty(self.home, self.tmp)

    def reset_disks(self) -> None:
        """As the node was when it first booted: the test user's processes killed; its home, /tmp,
        /opt and root's home emptied."""
        self._kill_user_processes()
        self._empty(self.home, self.tmp, self.opt, self.root_home)

    def _kill_user_processes(self) -> None:
        uid = pwd.getpwnam(self.cluster.user).pw_uid
        system.signal_pids([pid for pid in self.pids() if _owner(pid) == uid], signal.SIGKILL)

    def _empty(self, *directories: Path) -> None:
        # Mount points of the repo and venv (a clone under /tmp) stay: removing one unmounts it in the node.
        kept = {self.host_path(HARNESS_DIR), self.tmp / HARNESS_DIR[len("/tmp/"):],
                *(self.host_path(p) for p in pyenv.paths_nodes_need())}
        for directory in directories:
            for entry in directory.iterdir():
                if any(entry == k or k.is_relative_to(entry) for k in kept):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def heal(self) -> None:
        """Undo faults on this node: thawed, booted, unshaped, binaries back, default sshd config."""
        if self.frozen:
            self.thaw()
        self.boot()
        self.unshape()
        for directory, overlay in list(self._overlays.items()):
            self.run(f"umount --lazy {directory}", user="root", check=True)  # running binaries pin it
            # Its copy goes too, so a later hide_binary copies the directory anew (the old copy lacks
            # what was hidden before); removing hard links leaves the originals as they are.
            shutil.rmtree(self.host_path(overlay), ignore_errors=True)
            del self._overlays[directory]
        if self._sshd_overrides:
            self._sshd_overrides = {}
            (self.etc_ssh / "sshd_config").write_text(self._sshd_config_text({}))
            shutil.rmtree(self.etc_ssh / "sshd_config.d", ignore_errors=True)
            shutil.rmtree(self.etc_ssh / "keys", ignore_errors=True)
            self.restart_sshd()
        elif not self.sshd_listening():
            self.restart_sshd()

    # --- lifecycle (used by Cluster) -------------------------------------------------------------

    def _sshd_config_text(self, overrides: Mapping[str, str]) -> str:
        """The node's sshd_config: an ``Include`` first (sshd takes the first value it reads), then the
        options; an option overridden with "" is left out."""
        options = {**DEFAULT_SSHD_OPTIONS, **overrides}
        include = options.pop("Include", "")
        lines = ["# written by tests/cluster/harness.py", *([f"Include {include}"] if include else []),
                 f"ListenAddress {self.ip}:22", "ListenAddress 127.0.0.1:22",
                 *(f"{key} {value}" for key, value in options.items() if value)]
        return "\n".join(lines) + "\n"

    def _prepare(self, uid: int, gid: int, hosts_text: str) -> None:
        shared = {self.home} if self.cluster.shared_home else set()
        shared |= {self.tmp} if self.cluster.shared_tmp else set()
        for directory in (self.etc_ssh, self.opt, self.tmp, self.root_home, self.home):
            directory.mkdir(parents=True, exist_ok=directory in shared)
        os.chown(self.home, uid, gid)
        self.tmp.chmod(0o1777)
        self.root_home.chmod(0o711)  # lets the test user reach the shared interpreter under /root
        self.host_path(HARNESS_DIR).mkdir(mode=0o700)
        if self.cluster.shared_tmp:  # where each node mounts its own harness directory
            (self.tmp / HARNESS_DIR[len("/tmp/"):]).mkdir(mode=0o700, exist_ok=True)
        # PID 1 of the node: bash reaps every orphan handed to it while it waits.
        self.host_path(f"{HARNESS_DIR}/init.sh").write_text(
            "trap '' TERM INT HUP\nwhile :; do sleep 3600 & wait $! || true; done\n")
        for needed in pyenv.paths_nodes_need():
            self.host_path(needed).mkdir(parents=True, exist_ok=True)
        for name in ("ssh_config", "moduli"):
            if Path("/etc/ssh", name).exists():
                shutil.copy(Path("/etc/ssh", name), self.etc_ssh / name)
        (self.etc_ssh / "ssh_config.d").mkdir()
        (self.root / "hosts").write_text(hosts_text)
        (self.etc_ssh / "sshd_config").write_text(self._sshd_config_text({}))

    def _keygen(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C",
                                 f"root@{self.name}", "-f", str(self.etc_ssh / "ssh_host_ed25519_key")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def _anchor_script(self) -> str:
        q = shlex.quote
        # The repo, venv and interpreter go into the private directories' host-side copies first, and
        # those are mounted with --rbind, which carries them along.
        shared = "".join(f"mount --bind {q(d)} {q(str(self.host_path(d)))}\n" for d in pyenv.paths_nodes_need())
        if self.cluster.shared_tmp:  # this node's own harness directory inside the /tmp every node shares
            shared += f"mount --bind {q(str(self.harness))} {q(str(self.tmp / HARNESS_DIR[len('/tmp/'):]))}\n"
        # /tmp last: the state directory (under the host's /tmp) is hidden once it is mounted.
        return f"""set -euo pipefail
ip addr replace {self.ip}/24 dev eth0
ip link set lo up
ip link set eth0 up
echo {q(self.name)} > /proc/sys/kernel/hostname
{shared}mount --bind {q(str(self.etc_ssh))} /etc/ssh
mount --bind {q(str(self.root / 'hosts'))} /etc/hosts
mount --rbind {q(str(self.home_root))} /home
mount --rbind {q(str(self.opt))} /opt
mount --rbind {q(str(self.root_home))} /root
mount --rbind {q(str(self.tmp))} /tmp
/usr/sbin/sshd -t
/usr/sbin/sshd -E /etc/ssh/sshd.log
echo ready
exec -a ckt-init /bin/bash {HARNESS_DIR}/init.sh </dev/null >/dev/null 2>&1
"""

    def _spawn_anchor(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [tool("ip"), "netns", "exec", self.netns, tool("unshare"), "--mount", "--uts", "--pid",
             "--fork", "--mount-proc", "--propagation", "private", "--", "/bin/bash", "-c",
             self._anchor_script()],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)

    def _await_anchor(self, anchor: subprocess.Popen[str], deadline: float) -> None:
        assert anchor.stdout is not None and anchor.stderr is not None
        with selectors.DefaultSelector() as selector:
            selector.register(anchor.stdout, selectors.EVENT_READ)
            ready = selector.select(max(0.0, deadline - time.monotonic()))
        line = anchor.stdout.readline() if ready else ""
        if line.strip() != "ready":
            if anchor.poll() is None:
                os.killpg(anchor.pid, signal.SIGKILL)
            anchor.wait(timeout=10)
            why = anchor.stderr.read().strip() or "timed out"
            raise ClusterError(f"{self.name} did not come up: {why}")
        anchor.stdout.close()
        anchor.stderr.close()
        children = system.child_pids(anchor.pid)
        if len(children) != 1:
            raise ClusterError(f"{self.name}: expected one init process under unshare, found {children}")
        self._anchor, self.init_pid = anchor, children[0]
        self._wait_for_sshd(deadline)

    def _wait_for_sshd(self, deadline: float) -> None:
        while not self.sshd_listening(timeout=1):
            if time.monotonic() > deadline:
                log = self.etc_ssh / "sshd.log"
                tail = log.read_text()[-1000:] if log.exists() else ""
                raise ClusterError(f"sshd on {self.name} ({self.ip}:22) is not answering; log: {tail}")
            time.sleep(0.02)

    def _destroy(self) -> None:
        self.kill()
        sh([tool("ip"), "netns", "del", self.netns], check=False)
        sh([tool("ip"), "link", "del", self.veth], check=False)


def _owner(pid: int) -> int | None:
    try:
        return Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return None
