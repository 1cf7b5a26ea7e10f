"""Launcher checks: what DeepSpeed's pdsh launcher needs on a node (pdsh, ssh, sshd, ~/.ssh modes),
``.deepspeed_env`` files, and environment variables that change what the launcher does."""

from __future__ import annotations

import stat
from collections.abc import Iterator

from clusterkit.checks.registry import NodeContext, launch_check, node_check
from clusterkit.core.dsenv import DsEnvEntry, DsEnvProblem, parse_deepspeed_env
from clusterkit.core.findings import NotApplicable, Problem, Severity, require
from clusterkit.node.facts import LauncherFacts, NodeFacts, known

#: The first DeepSpeed release that double-quotes exported values (multinode_runner.add_export).
DS_QUOTES_VALUES_SINCE = (0, 15, 2)
_RHEL_LIKE = ("red hat", "rhel", "rocky", "alma", "centos", "fedora", "oracle linux", "amazon linux")


def _install(facts: NodeFacts, debian: str, rhel: str) -> str:
    os_name = facts.host.os_name.lower() if known(facts.host.os_name) else ""
    if any(name in os_name for name in _RHEL_LIKE):
        return f"sudo dnf install -y {rhel}"
    return f"sudo apt-get install -y {debian}"


def _launcher(facts: NodeFacts) -> LauncherFacts:
    return require(facts.launcher, "launcher facts")


def _not_over_slurm(ctx: NodeContext) -> None:
    """Skip where srun starts the ranks (a Slurm allocation): no pdsh, no SSH between nodes."""
    if ctx.via_slurm:
        raise NotApplicable("srun starts the ranks under Slurm: no pdsh or SSH is involved")


def _pdsh_launch(ctx: NodeContext) -> None:
    """Skip where DeepSpeed runs without pdsh: a one-host launch on this machine, or under Slurm."""
    _not_over_slurm(ctx)
    if not ctx.multi_node:
        raise NotApplicable("a launch on this machine alone starts its ranks without pdsh or SSH")


def _reached_over_ssh(ctx: NodeContext) -> None:
    """Skip where no SSH login reaches this machine (the launching machine outside the hostfile)."""
    _not_over_slurm(ctx)
    if not ctx.needs_sshd:
        raise NotApplicable("no launch logs into this machine over SSH")


# --------------------------------------------------------------------------------------- pdsh, ssh


@launch_check("pdsh-missing", Severity.ERROR, tags=("launcher", "pdsh"),
            why="DeepSpeed's default multi-node launcher is pdsh; without it the launch stops with "
                "\"RuntimeError: launcher 'pdsh' not installed.\"",
            fix="sudo apt-get install -y pdsh   # RHEL: sudo dnf install -y pdsh pdsh-rcmd-ssh (EPEL)")
def check_pdsh(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """pdsh is installed where jobs are launched from (workers need only sshd)."""
    _pdsh_launch(ctx)
    launcher = _launcher(facts)
    if not known(launcher.pdsh_path):
        yield Problem(f"pdsh is not on the non-interactive PATH ({launcher.pdsh_path.reason})", where="PATH",
                      fix=_install(facts, "pdsh", "pdsh pdsh-rcmd-ssh   # from EPEL"))


@launch_check("pdsh-ssh-module-missing", Severity.ERROR, tags=("launcher", "pdsh"),
            why="DeepSpeed runs pdsh with PDSH_RCMD_TYPE=ssh; a pdsh without its ssh module cannot "
                "reach any node.",
            fix="install pdsh's ssh module (RHEL/EPEL: sudo dnf install -y pdsh-rcmd-ssh)")
def check_pdsh_ssh_module(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """pdsh has its ssh remote-command module."""
    _pdsh_launch(ctx)
    launcher = _launcher(facts)
    require(launcher.pdsh_path, "pdsh")
    modules = require(launcher.pdsh_rcmd_modules, "pdsh rcmd modules")
    if "ssh" not in modules:
        yield Problem(f"pdsh has no ssh module (rcmd modules: {', '.join(modules) or 'none'})",
                      where="pdsh -V", fix=_install(facts, "pdsh", "pdsh-rcmd-ssh"))


@launch_check("pdsh-default-rcmd-rsh", Severity.INFO, tags=("launcher", "pdsh"),
            why="pdsh's default remote command is rsh; DeepSpeed sets PDSH_RCMD_TYPE=ssh itself, but a "
                "hand test like 'pdsh -w host hostname' fails with 'rcmd: socket: Permission denied'.",
            fix="test pdsh by hand with: pdsh -R ssh -w HOST hostname (or export PDSH_RCMD_TYPE=ssh)")
def check_pdsh_default_rcmd(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """pdsh's default remote command (DeepSpeed overrides it with ssh)."""
    _pdsh_launch(ctx)
    launcher = _launcher(facts)
    default = require(launcher.pdsh_default_rcmd, "pdsh default rcmd")
    if facts.env_vars.get("PDSH_RCMD_TYPE") == "ssh":
        raise NotApplicable("PDSH_RCMD_TYPE=ssh is set")
    if default != "ssh":
        yield Problem(f"pdsh's default rcmd is {default}: test by hand with 'pdsh -R ssh'", where="pdsh -V")


@node_check("ssh-client-missing", Severity.ERROR, tags=("launcher", "ssh"),
            why="pdsh's ssh module and DeepSpeed's reachability test ('ssh HOST hostname') run the ssh "
                "client.",
            fix="sudo apt-get install -y openssh-client", on_launch_machine=True)
def check_ssh_client(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """The ssh client is installed."""
    _not_over_slurm(ctx)
    if ctx.is_launch_node:
        _pdsh_launch(ctx)
    launcher = _launcher(facts)
    if not known(launcher.ssh_path):
        yield Problem(f"ssh is not on the non-interactive PATH ({launcher.ssh_path.reason})", where="PATH",
                      fix=_install(facts, "openssh-client", "openssh-clients"))


@node_check("sshd-not-listening", Severity.ERROR, tags=("launcher", "ssh"),
            why="pdsh logs into every node over SSH, the launch node itself included: without sshd on "
                "port 22 it fails with 'ssh: connect to host ... port 22: Connection refused'.",
            fix="sudo apt-get install -y openssh-server && sudo service ssh start")
def check_sshd(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """sshd listens on port 22."""
    _reached_over_ssh(ctx)
    launcher = _launcher(facts)
    ports = require(launcher.sshd_listening_ports, "sshd listening ports")
    if 22 in ports:
        return
    if ports:
        listed = ", ".join(map(str, sorted(ports)))
        yield Problem(f"sshd listens on port {listed}, not 22", where=f"sshd :{listed}",
                      fix=f"pass --ssh_port {sorted(ports)[0]} to deepspeed (and 'Port' in ~/.ssh/config for "
                          "pdsh), or add 'Port 22' to /etc/ssh/sshd_config")
    else:
        yield Problem("nothing listens for SSH on port 22", where="sshd :22",
                      fix=_install(facts, "openssh-server", "openssh-server") + " && sudo service ssh start")


def _writable_by_others(mode: int) -> bool:
    return bool(stat.S_IMODE(mode) & (stat.S_IWGRP | stat.S_IWOTH))


@node_check("ssh-dir-permissions", Severity.ERROR, tags=("launcher", "ssh"),
            why="sshd's StrictModes ignores authorized_keys when ~/.ssh or the file is writable by group "
                "or others, so key login fails with 'Permission denied (publickey)'.",
            fix="chmod 700 ~/.ssh && chmod 600 ~/.ssh/authorized_keys")
def check_ssh_modes(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """~/.ssh and authorized_keys are writable only by their owner."""
    _reached_over_ssh(ctx)
    launcher = _launcher(facts)
    dir_mode = require(launcher.ssh_dir_mode, "~/.ssh mode")
    if _writable_by_others(dir_mode):
        yield Problem(f"~/.ssh has mode {stat.S_IMODE(dir_mode):04o}: writable by group or others",
                      where="~/.ssh", fix="chmod 700 ~/.ssh")
    keys_mode = launcher.authorized_keys_mode
    if known(keys_mode) and _writable_by_others(keys_mode):
        yield Problem(f"~/.ssh/authorized_keys has mode {stat.S_IMODE(keys_mode):04o}: writable by group or "
                      "others", where="~/.ssh/authorized_keys", fix="chmod 600 ~/.ssh/authorized_keys")


# ------------------------------------------------------------------------------------ .deepspeed_env


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def quotes_values(facts: NodeFacts) -> bool:
    """Whether this node's DeepSpeed double-quotes exported values (unknown: assume a current one)."""
    env = facts.python_env
    if known(env) and known(env.deepspeed_version):
        return _version_tuple(env.deepspeed_version) >= DS_QUOTES_VALUES_SINCE
    return True


def _dsenv_files(facts: NodeFacts, ctx: NodeContext) -> list[tuple[str, list[DsEnvEntry], list[DsEnvProblem]]]:
    _pdsh_launch(ctx)  # DeepSpeed reads .deepspeed_env only for a multi-node launch
    launcher = _launcher(facts)
    files = [f for f in launcher.deepspeed_env_files if f.exists]
    if not files:
        raise NotApplicable("no .deepspeed_env file in ~ or the launch directory")
    parsed = []
    for file in files:
        lines = require(file.lines, f"contents of {file.path}")
        entries, problems = parse_deepspeed_env(lines, file.path, quotes_values=quotes_values(facts))
        parsed.append((file.path, entries, problems))
    return parsed


@node_check("dsenv-invalid", Severity.ERROR, tags=("launcher", "dsenv"),
            why="DeepSpeed reads .deepspeed_env with a bare split('='): a blank or comment line crashes "
                "the runner ('ValueError: not enough values to unpack'), '# K=v' comments out the whole "
                "remote command (nodes start nothing and exit 0), and quoting mistakes cut values.",
            fix="keep only KEY=value lines: no comments, no blank lines, no quotes", on_launch_machine=True)
def check_dsenv_invalid(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """.deepspeed_env files hold only lines DeepSpeed exports correctly."""
    for _, _, problems in _dsenv_files(facts, ctx):
        for problem in problems:
            if problem.breaks_launch:
                yield _dsenv_problem(problem.message, problem.where, problem.fix, ctx)


@node_check("dsenv-risky", Severity.WARNING, tags=("launcher", "dsenv"),
            why="Lines DeepSpeed accepts but not as written: duplicate keys (last wins), stripped "
                "whitespace, pdsh's %h/%n substitution, commands run at launch, a PATH that drops the "
                "system directories, the same key in ~ and in the launch directory.",
            fix="follow the fix on each line", on_launch_machine=True)
def check_dsenv_risky(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """.deepspeed_env files have no lines that work differently than they read."""
    seen: dict[str, str] = {}
    for path, entries, problems in _dsenv_files(facts, ctx):
        for problem in problems:
            if not problem.breaks_launch:
                yield _dsenv_problem(problem.message, problem.where, problem.fix, ctx)
        for entry in {e.key: e for e in entries}.values():
            where = f"{path}:{entry.line}"
            if entry.key in seen:
                yield _dsenv_problem(f"{entry.key} is set in {seen[entry.key]} and {where}; DeepSpeed reads ~ "
                                     "first and the launch directory last, so the last one wins", where,
                                     f"keep {entry.key} in one of the two files", ctx)
            seen[entry.key] = where


def _dsenv_problem(message: str, where: str, fix: str, ctx: NodeContext) -> Problem:
    """DeepSpeed reads .deepspeed_env only where it is launched: elsewhere a bad line is a warning."""
    if ctx.is_launch_node:
        return Problem(message, where=where, fix=fix)
    return Problem(f"{message} (this matters when a job is launched from {ctx.host})", where=where, fix=fix,
                   severity=Severity.WARNING)


# ---------------------------------------------------------------------------------- environment


@node_check("cuda-visible-devices-set", Severity.INFO, tags=("launcher", "gpu", "env"),
            why="On multi-node runs DeepSpeed's launcher replaces CUDA_VISIBLE_DEVICES with the hostfile's "
                "slots, so it does not select GPUs there (use --include HOST:0,1); other tools started "
                "over SSH see only the listed GPUs.",
            fix="select GPUs with the hostfile slots or --include HOST:0,1 and unset CUDA_VISIBLE_DEVICES in "
                "~/.bashrc")
def check_cuda_visible_devices(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """CUDA_VISIBLE_DEVICES is not set in the non-interactive environment."""
    _not_over_slurm(ctx)  # Slurm sets it for the GPUs it gives a task: judged by slurm-gpus-hidden
    value = facts.env_vars.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        yield Problem(f"CUDA_VISIBLE_DEVICES={value} is set in the non-interactive environment",
                      where="CUDA_VISIBLE_DEVICES")
