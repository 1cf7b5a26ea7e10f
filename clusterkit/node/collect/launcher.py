"""What DeepSpeed's pdsh launcher needs on this node: pdsh, ssh, rsync, sshd, ~/.ssh, .deepspeed_env.

Read as the agent sees them; over SSH that is exactly the non-interactive shell pdsh gets. Nothing
is judged here: checks lint the facts. Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Mapping

from clusterkit.node.collect.deadline import run_command
from clusterkit.node.collect.options import CollectOptions
from clusterkit.node.collect.sshtrust import collect_ssh_trust, served_host_keys
from clusterkit.node.facts import LauncherFacts, Maybe, TextFileFacts, Unavailable, known

TCP_LISTEN = "0A"
#: DeepSpeed's runner: ``os.getenv("DS_ENV_FILE", ".deepspeed_env")`` in ``[expanduser("~"), "."]``.
DS_ENV_FILE_VARIABLE = "DS_ENV_FILE"
DS_ENV_FILE_DEFAULT = ".deepspeed_env"
MAX_TEXT_FILE_BYTES = 1 << 20


_RCMD_LINE = re.compile(
    r"^\s*rcmd modules:\s*(?P<modules>[^(]*?)\s*(?:\(default:\s*(?P<default>[^)]*?)\s*\))?\s*$")


def parse_pdsh_version(text: str) -> tuple[Maybe[list[str]], Maybe[str]]:
    """rcmd modules and default from ``pdsh -V`` ("rcmd modules: ssh,rsh,exec (default: rsh)")."""
    for line in text.splitlines():
        match = _RCMD_LINE.match(line)
        if match:
            modules = [m.strip() for m in match.group("modules").split(",") if m.strip()]
            default = match.group("default")
            return modules, (default if default else Unavailable("pdsh -V names no default rcmd module"))
    why = Unavailable("pdsh -V printed no 'rcmd modules:' line")
    return why, why


def parse_listening_sockets(text: str) -> dict[int, int]:
    """Listening sockets (state 0A) in ``/proc/net/tcp`` or ``tcp6`` text, as inode -> local port."""
    sockets: dict[int, int] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_LISTEN:
            continue
        _, _, port_hex = fields[1].rpartition(":")
        try:
            sockets[int(fields[9])] = int(port_hex, 16)
        except ValueError:
            continue
    return sockets


def _sshd_pids(proc_root: Path) -> list[Path]:
    pids = []
    try:
        entries = list(proc_root.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(entry / "comm", encoding="utf-8", errors="replace") as f:
                if f.read().strip() == "sshd":
                    pids.append(entry)
        except OSError:
            continue
    return pids


def _socket_inodes(pid_dir: Path) -> set[int]:
    """Inodes of the sockets ``pid_dir`` holds open; raises OSError when its fds cannot be read."""
    inodes = set()
    for fd in (pid_dir / "fd").iterdir():
        try:
            target = os.readlink(str(fd))
        except OSError:
            continue
        match = re.match(r"^socket:\[(\d+)\]$", target)
        if match:
            inodes.add(int(match.group(1)))
    return inodes


def configured_sshd_ports(sshd_config: str) -> list[int]:
    """``Port`` lines of an sshd_config text; ``[22]`` when there are none."""
    ports = []
    for line in sshd_config.splitlines():
        match = re.match(r"^\s*Port\s+(\d+)\s*(?:#.*)?$", line, re.IGNORECASE)
        if match:
            ports.append(int(match.group(1)))
    return ports or [22]


def read_sshd_ports(proc_root: str = "/proc",
                    sshd_config_path: str = "/etc/ssh/sshd_config") -> Maybe[list[int]]:
    """TCP ports sshd listens on in this network namespace ([] when no sshd runs).

    Sockets are matched to sshd processes through ``/proc/<pid>/fd``. Where some sshd's fds cannot be
    read (the agent is not root), the ports sshd_config names that something listens on are added.
    """
    root = Path(proc_root)
    listening: dict[int, int] = {}
    problems = []
    for name in ("tcp", "tcp6"):
        try:
            with open(root / "net" / name, encoding="ascii", errors="replace") as f:
                listening.update(parse_listening_sockets(f.read()))
        except OSError as exc:
            problems.append(f"cannot read {root / 'net' / name}: {exc.strerror or exc}")
    if len(problems) == 2:
        return Unavailable("; ".join(problems))
    inodes: set[int] = set()
    unreadable = []
    pids = _sshd_pids(root)
    for pid_dir in pids:
        try:
            inodes |= _socket_inodes(pid_dir)
        except OSError as exc:
            unreadable.append(f"{pid_dir.name} ({exc.strerror or exc})")
    ports = {listening[inode] for inode in inodes if inode in listening}
    if unreadable:
        configured = set()
        for pid_dir in pids:
            configured |= _ports_from_sshd_cmdline(pid_dir, sshd_config_path)
        ports |= {port for port in listening.values() if port in configured}
    return sorted(ports)


def _ports_from_sshd_cmdline(pid_dir: Path, default_config: str) -> set[int]:
    """Ports an sshd was told to use: ``-p N`` / ``-o Port=N`` on its command line, else its config.

    The command line is world-readable even where the fds are not; a listener rewrites it to
    ``sshd: /usr/sbin/sshd -f cfg [listener] ...``, which still carries the options.
    """
    try:
        with open(pid_dir / "cmdline", "rb") as f:
            words = f.read().decode("utf-8", "replace").replace("\0", " ").split()
    except OSError:
        words = []
    ports: set[int] = set()
    config = default_config
    for option, value in zip(words, words[1:]):
        if option == "-p" and value.isdigit():
            ports.add(int(value))
        elif option == "-o" and value.lower().startswith("port="):
            port = value.split("=", 1)[1]
            if port.isdigit():
                ports.add(int(port))
        elif option == "-f":
            config = value if value.startswith("/") else str(pid_dir / "cwd" / value)
    if ports:
        return ports
    try:
        with open(config, encoding="utf-8", errors="replace") as f:
            return set(configured_sshd_ports(f.read()))
    except OSError:
        return {22}


def _mode(path: Path) -> Maybe[int]:
    try:
        return path.stat().st_mode & 0o777
    except OSError as exc:
        return Unavailable(f"{path}: {exc.strerror or exc}")


def read_text_file(path: Path) -> TextFileFacts:
    """A small text file as the lines Python's ``readlines()`` gives, newline removed."""
    if not path.exists():
        return TextFileFacts(path=str(path), exists=False,
                             lines=Unavailable(f"{path} does not exist"),
                             mode=Unavailable(f"{path} does not exist"))
    lines: Maybe[list[str]]
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(MAX_TEXT_FILE_BYTES + 1)
        if len(text) > MAX_TEXT_FILE_BYTES:
            lines = Unavailable(f"{path} is larger than {MAX_TEXT_FILE_BYTES} bytes")
        else:
            # Universal newlines and a split on "\n" only: the lines DeepSpeed's readlines() sees.
            lines = text.split("\n")
            if lines[-1] == "":
                lines.pop()
    except OSError as exc:
        lines = Unavailable(f"cannot read {path}: {exc.strerror or exc}")
    return TextFileFacts(path=str(path), exists=True, lines=lines, mode=_mode(path))


def deepspeed_env_paths(environ: Mapping[str, str], home: str, cwd: str) -> list[Path]:
    """Where DeepSpeed's runner looks for the env file, in its order (later files win).

    Launched from the home directory, both are one file (DeepSpeed reads it twice, to the same
    effect): it is listed once.
    """
    name = environ.get(DS_ENV_FILE_VARIABLE, DS_ENV_FILE_DEFAULT)
    paths = [Path(home, name), Path(cwd, name)]
    if os.path.realpath(paths[0]) == os.path.realpath(paths[1]):
        return paths[:1]
    return paths


def _is_dir(path: Path) -> Maybe[bool]:
    try:
        return path.is_dir()
    except OSError as exc:  # pragma: no cover - is_dir() swallows most errors itself
        return Unavailable(f"{path}: {exc.strerror or exc}")


def _script_exists(options: CollectOptions) -> Maybe[bool]:
    """Whether the training script is a file here, looked up from the launch directory as the launcher does."""
    if not options.script:
        return Unavailable("no training script named")
    try:
        return Path(options.cwd, options.script).is_file()
    except OSError as exc:  # pragma: no cover - is_file() swallows most errors itself
        return Unavailable(f"{options.script}: {exc.strerror or exc}")


def _which(program: str, environ: Mapping[str, str]) -> Maybe[str]:
    found = shutil.which(program, path=environ.get("PATH", ""))
    return found if found else Unavailable(f"{program} not found on PATH")


def _served_keys(options: CollectOptions) -> Maybe[list[str]] | None:
    """The host keys this node's sshd serves, where the head said how it reached it."""
    if not options.sshd_address:
        return None
    host, _, port = options.sshd_address.rpartition(":")
    addresses = [host.strip("[]"), "127.0.0.1"] if host.strip("[]") != "127.0.0.1" else ["127.0.0.1"]
    return served_host_keys(addresses, int(port) if port.isdigit() else 22)


def collect_launcher(options: CollectOptions, proc_root: str = "/proc",
                     environ: Mapping[str, str] | None = None,
                     sshd_config_path: str = "/etc/ssh/sshd_config",
                     command_timeout_s: float = 3.0) -> LauncherFacts:
    """pdsh and its rcmd modules, ssh, rsync, sshd ports, ~/.ssh modes and ``.deepspeed_env`` files."""
    env = os.environ if environ is None else environ
    home = env.get("HOME") or str(Path.home())
    pdsh = _which("pdsh", env)
    modules: Maybe[list[str]] = pdsh if not known(pdsh) else Unavailable("not read")
    default: Maybe[str] = modules if not known(modules) else Unavailable("not read")
    if known(pdsh):
        result = run_command([pdsh, "-V"], timeout_s=command_timeout_s)
        if known(result):
            modules, default = parse_pdsh_version(result.stdout + "\n" + result.stderr)
        else:
            modules = default = result
    ssh_dir = Path(home, ".ssh")
    return LauncherFacts(
        pdsh_path=pdsh,
        pdsh_rcmd_modules=modules,
        pdsh_default_rcmd=default,
        ssh_path=_which("ssh", env),
        rsync_path=_which("rsync", env),
        sshd_listening_ports=read_sshd_ports(proc_root, sshd_config_path),
        ssh_dir_mode=_mode(ssh_dir),
        authorized_keys_mode=_mode(ssh_dir / "authorized_keys"),
        deepspeed_env_files=[read_text_file(path) for path in deepspeed_env_paths(env, home, options.cwd)],
        cwd=options.cwd,
        cwd_exists=_is_dir(Path(options.cwd)),
        script=options.script or Unavailable("no training script named"),
        script_exists=_script_exists(options),
        ssh_trust=collect_ssh_trust(home, options.peers, sshd_config_path, served=_served_keys(options)),
    )
