"""Bootstrap steps that make nodes launch-ready: pdsh, code sync, and ``.deepspeed_env``."""

from __future__ import annotations

import ipaddress
import os
import shlex
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

from clusterkit.bootstrap.context import (
    CHANGED,
    FAILED,
    OK,
    WOULD_CHANGE,
    BootstrapContext,
    NodeOutcome,
    StepReport,
)
from clusterkit.bootstrap.files import read_home_file, write_home_file
from clusterkit.bootstrap.playbook import StepSpec
from clusterkit.dsenv import merge_deepspeed_env, parse_deepspeed_env, render_deepspeed_env
from clusterkit.facts import NodeFacts, Unavailable
from clusterkit.remote import RemoteError, connect

_INSTALL_PDSH = (
    'if [ "$(id -u)" = 0 ]; then S=""; else S="sudo -n"; fi; '
    "if command -v apt-get >/dev/null; then $S env DEBIAN_FRONTEND=noninteractive apt-get install -y -q pdsh "
    "|| { $S apt-get update -q && $S env DEBIAN_FRONTEND=noninteractive apt-get install -y -q pdsh; }; "
    "elif command -v dnf >/dev/null; then $S dnf install -y pdsh pdsh-rcmd-ssh; "
    "elif command -v yum >/dev/null; then $S yum install -y pdsh pdsh-rcmd-ssh; "
    "elif command -v zypper >/dev/null; then $S zypper --non-interactive install pdsh; "
    "else echo 'no known package manager' >&2; exit 3; fi"
)
PDSH_FIX = ("sudo apt-get install -y pdsh   (Debian/Ubuntu; RHEL: sudo dnf install -y pdsh pdsh-rcmd-ssh "
            "from EPEL), or rerun with --install-packages")


def _ssh_command(ctx: BootstrapContext) -> list[str]:
    """The ssh client line rsync and pdsh use: never prompts, never hangs on a dead node."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(ctx.settings.connect_timeout_s)}"]
    if ctx.settings.port:
        argv += ["-p", str(ctx.settings.port)]
    if ctx.settings.user:
        argv += ["-l", ctx.settings.user]
    if ctx.settings.identity_file:
        argv += ["-i", ctx.settings.identity_file]
    return argv


def pdsh(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """pdsh on every node, then `pdsh -R ssh -w <all> hostname` from the head answers from each."""
    def ensure(host: str) -> NodeOutcome:
        with connect(host, ctx.settings) as conn:
            found = conn.run("command -v pdsh", hide=True, warn=True, timeout=20)
            if found.exited == 0:
                return NodeOutcome(OK, [f"pdsh at {found.stdout.strip()}"])
            if not ctx.install_packages:
                return NodeOutcome(FAILED, error=f"pdsh is not installed on {host}", fix=f"on {host}: {PDSH_FIX}")
            if ctx.dry_run:
                return NodeOutcome(WOULD_CHANGE, ["would install pdsh with the OS package manager"])
            out = conn.run(_INSTALL_PDSH, hide=True, warn=True, timeout=spec.timeout_s - 10)
            if conn.run("command -v pdsh", hide=True, warn=True, timeout=20).exited != 0:
                tail = " | ".join((out.stderr.strip() or out.stdout.strip()).splitlines()[-2:])
                return NodeOutcome(FAILED, error=f"installing pdsh on {host} failed: {tail}",
                                   fix=f"on {host}: {PDSH_FIX}")
            return NodeOutcome(CHANGED, ["installed pdsh"])

    report = ctx.per_node(spec, ensure)
    ready = [h for h in ctx.live if report.outcomes.get(h, NodeOutcome(OK)).status in (OK, CHANGED)]
    if ctx.dry_run or not ready:
        return report
    _verify_pdsh_from_head(ctx, ready, spec, report)
    return report


def _verify_pdsh_from_head(ctx: BootstrapContext, hosts: list[str], spec: StepSpec, report: StepReport) -> None:
    ssh = _ssh_command(ctx)
    env = dict(os.environ, PDSH_RCMD_TYPE="ssh", PDSH_SSH_ARGS_APPEND=" ".join(ssh[1:]))
    argv = ["pdsh", "-R", "ssh", "-t", str(int(ctx.settings.connect_timeout_s)), "-u", str(int(spec.timeout_s)),
            "-w", ",".join(hosts), "hostname"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=spec.timeout_s)
    except FileNotFoundError:
        report.note = f"pdsh is not installed on this machine, so `pdsh -R ssh` was not verified ({PDSH_FIX})"
        return
    except subprocess.TimeoutExpired:
        report.note = f"`{' '.join(argv)}` did not finish within {spec.timeout_s:g}s"
        return
    answered = {line.split(":", 1)[0].strip() for line in proc.stdout.splitlines() if ":" in line}
    for host in hosts:
        if host not in answered:
            err = [ln for ln in proc.stderr.splitlines() if host in ln]
            report.outcomes[host] = NodeOutcome(
                FAILED, error=f"`pdsh -R ssh -w {host} hostname` from the head failed: "
                              f"{err[-1] if err else 'no answer'}",
                fix=f"ssh -o BatchMode=yes {host} hostname   (must work without a prompt)")
    report.note = f"`pdsh -R ssh -w {','.join(hosts)} hostname` answered from {len(answered & set(hosts))} " \
                  f"of {len(hosts)} nodes"


def code_sync(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """The --sync directory at the same absolute path everywhere: rsync, or a shared filesystem."""
    assert ctx.sync_dir is not None
    source = ctx.sync_dir.resolve()
    marker = source / f".clusterkit-shared-probe-{uuid.uuid4().hex[:12]}"
    rsync_ssh = " ".join(shlex.quote(a) for a in _ssh_command(ctx))
    if not ctx.dry_run:
        marker.write_text("clusterkit probe: is this directory shared between nodes?\n")
    try:
        def ensure(host: str) -> NodeOutcome:
            with connect(host, ctx.settings) as conn:
                probe = conn.run(f"test -f {shlex.quote(str(marker))} && echo shared; "
                                 "command -v rsync >/dev/null || echo no-rsync", hide=True, warn=True, timeout=20)
            if "shared" in probe.stdout:
                return NodeOutcome(OK, ["same filesystem as the head: nothing to copy"])
            if "no-rsync" in probe.stdout:
                return NodeOutcome(FAILED, error=f"rsync is not installed on {host}",
                                   fix=f"on {host}: sudo apt-get install -y rsync")
            base = ["rsync", "-a", "-e", rsync_ssh, "--exclude", marker.name, f"{source}/", f"{host}:{source}/"]
            dry = subprocess.run([*base[:2], "--dry-run", "--itemize-changes", *base[2:]], capture_output=True,
                                 text=True, timeout=spec.timeout_s)
            if dry.returncode != 0:
                raise RemoteError(f"rsync to {host} failed: {dry.stderr.strip().splitlines()[-1:]}")
            changes = [ln for ln in dry.stdout.splitlines() if ln.strip()]
            if not changes:
                return NodeOutcome(OK, [f"{source} up to date"])
            if ctx.dry_run:
                return NodeOutcome(WOULD_CHANGE, [f"would copy {len(changes)} item(s) to {host}:{source}"])
            real = subprocess.run(base, capture_output=True, text=True, timeout=spec.timeout_s)
            if real.returncode != 0:
                raise RemoteError(f"rsync to {host} failed: {real.stderr.strip().splitlines()[-1:]}")
            return NodeOutcome(CHANGED, [f"copied {len(changes)} item(s) to {source}"])

        report = ctx.per_node(spec, ensure)
    finally:
        marker.unlink(missing_ok=True)
    shared = [h for h, o in report.outcomes.items() if o.status == OK and "same filesystem" in o.actions[0]]
    if len(shared) > 1:
        report.note = f"{source} is on a filesystem shared by {', '.join(shared)}"
    return report


def _interface_for(facts: NodeFacts, address: str) -> str | None:
    """The interface whose IPv4 network holds ``address`` (the node's hostfile address)."""
    if isinstance(facts.network, Unavailable) or isinstance(facts.network.nics, Unavailable):
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    for nic in facts.network.nics:
        for cidr in nic.ipv4:
            try:
                if ip in ipaddress.ip_interface(cidr).network and nic.kind != "loopback":
                    return nic.name
            except ValueError:
                continue
    return None


def plan_deepspeed_env(facts: Mapping[str, NodeFacts], addresses: Mapping[str, str], python: str,
                       launch_env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """What ``.deepspeed_env`` must export, and notes on what could not be decided.

    ``launch_env`` is the environment of the shell that runs the launcher (this process): its PATH
    and LD_LIBRARY_PATH are exactly what non-interactive shells on the nodes lack.
    """
    values: dict[str, str] = {}
    notes: list[str] = []
    env_bin = str(Path(python).parent)
    path_parts = [env_bin] + [p for p in launch_env.get("PATH", "").split(":") if p and p != env_bin]
    values["PATH"] = ":".join(dict.fromkeys(path_parts))
    if launch_env.get("LD_LIBRARY_PATH"):
        values["LD_LIBRARY_PATH"] = launch_env["LD_LIBRARY_PATH"]
    cuda_home = launch_env.get("CUDA_HOME")
    if not cuda_home:
        homes = {f.cuda.cuda_home for f in facts.values()
                 if not isinstance(f.cuda, Unavailable) and isinstance(f.cuda.cuda_home, str)}
        cuda_home = homes.pop() if len(homes) == 1 else None
    if cuda_home:
        values["CUDA_HOME"] = cuda_home
    names: dict[str, str] = {}
    for host, node in facts.items():
        address = addresses.get(host, "")
        if address.startswith("127.") or address == "::1":
            continue
        name = _interface_for(node, address)
        if name is None:
            notes.append(f"no interface on {host} holds its address {address or '(unresolved)'}")
        else:
            names[host] = name
    if names and not notes:
        distinct = sorted(set(names.values()))
        all_nics = {n.name for f in facts.values() if not isinstance(f.network, Unavailable)
                    and not isinstance(f.network.nics, Unavailable) for n in f.network.nics}
        ambiguous = any(other != name and other.startswith(name) for name in distinct for other in all_nics)
        values["NCCL_SOCKET_IFNAME"] = ("=" if ambiguous else "") + ",".join(distinct)
    ib_known = [f for f in facts.values()
                if not isinstance(f.network, Unavailable) and not isinstance(f.network.ib_ports, Unavailable)]
    if ib_known and len(ib_known) == len(facts) and not any(
            p.state == "ACTIVE" for f in ib_known for p in f.network.ib_ports):  # type: ignore[union-attr]
        values["NCCL_IB_DISABLE"] = "1"
    return values, notes


def deepspeed_env(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """Write ~/.deepspeed_env on every node with what non-interactive shells miss; keep the rest."""
    from clusterkit.survey import SurveyOptions, survey_cluster

    live_hosts = [h for h in ctx.hosts if h.name in ctx.live]
    facts, _ = survey_cluster(live_hosts, ctx.settings,
                              SurveyOptions(python=ctx.python, timeout_s=spec.timeout_s, probes=False),
                              ctx.console)
    ctx.facts = {h: f for h, f in facts.items() if not isinstance(f, Unavailable)}
    values, notes = plan_deepspeed_env(ctx.facts, ctx.addresses, ctx.python, os.environ)

    def ensure(host: str) -> NodeOutcome:
        with connect(host, ctx.settings) as conn:
            current = read_home_file(conn, ".deepspeed_env")
            entries, problems = parse_deepspeed_env((current or "").splitlines(), f"{host}:~/.deepspeed_env")
            merged, changed = merge_deepspeed_env(entries, values)
            text = render_deepspeed_env(merged)
            dropped = [f"dropped line {p.line} ({p.code})" for p in problems if p.breaks_launch]
            if text == (current or "") or (not changed and not dropped and current is not None):
                return NodeOutcome(OK, [f"{len(merged)} entries up to date"])
            actions = [f"set {', '.join(changed)}"] if changed else []
            if ctx.dry_run:
                return NodeOutcome(WOULD_CHANGE, [f"would {a}" for a in actions + dropped])
            backup = write_home_file(conn, ".deepspeed_env", text, 0o644)
            return NodeOutcome(CHANGED, actions + dropped + ([f"backup {backup}"] if backup else []))

    report = ctx.per_node(spec, ensure, [h for h in ctx.live if h in ctx.facts])
    for host in ctx.live:
        if host not in ctx.facts:
            report.outcomes[host] = NodeOutcome(FAILED, error=f"facts from {host}: {facts.get(host)}")
    report.note = "; ".join(notes + [f"{k}={v}" for k, v in values.items() if k != "PATH"])
    return report
