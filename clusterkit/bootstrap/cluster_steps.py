"""Bootstrap steps that make nodes launch-ready: pdsh, code sync, and ``.deepspeed_env``."""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
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
from clusterkit.bootstrap.files import Edit, edit_home_file, edit_local_file
from clusterkit.bootstrap.playbook import StepSpec
from clusterkit.bootstrap.sync_rules import parse_hidden, rsync_excludes, without_hidden
from clusterkit.cluster import SshReach, Target, open_nodes
from clusterkit.cluster.remote import RemoteError, connect, fan_out
from clusterkit.cluster.remote.openssh import pdsh_environment, rsync_rsh
from clusterkit.core.dsenv import update_deepspeed_env
from clusterkit.node.facts import NodeFacts, Unavailable

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


def pdsh(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """pdsh where jobs are launched from (this machine), then `pdsh -R ssh -w <all> hostname` answers
    from every node. Nodes need only sshd; with --install-packages they get pdsh too, so that any of
    them can launch."""
    def ensure(host: str) -> NodeOutcome:
        with connect(host, ctx.settings) as conn:
            found = conn.run("command -v pdsh", hide=True, warn=True, timeout=20)
            if found.exited == 0:
                return NodeOutcome(OK, [f"pdsh at {found.stdout.strip()}"])
            if not ctx.install_packages:
                return NodeOutcome(OK, ["no pdsh (needed only to launch from this node; --install-packages "
                                        "adds it)"])
            if ctx.dry_run:
                return NodeOutcome(WOULD_CHANGE, ["would install pdsh with the OS package manager"])
            out = conn.run(_INSTALL_PDSH, hide=True, warn=True, timeout=spec.timeout_s - 10)
            if conn.run("command -v pdsh", hide=True, warn=True, timeout=20).exited != 0:
                tail = " | ".join((out.stderr.strip() or out.stdout.strip()).splitlines()[-2:])
                return NodeOutcome(FAILED, error=f"installing pdsh on {host} failed: {tail}",
                                   fix=f"on {host}: {PDSH_FIX}")
            return NodeOutcome(CHANGED, ["installed pdsh"])

    report = ctx.per_node(spec, ensure)
    head = _pdsh_here(ctx, spec)
    report.outcomes["head"] = head
    ready = [h for h in ctx.live if report.outcomes.get(h, NodeOutcome(OK)).status in (OK, CHANGED)]
    if ctx.dry_run or not ready or head.status == FAILED:
        return report
    _verify_pdsh_from_head(ctx, ready, spec, report)
    return report


def _pdsh_here(ctx: BootstrapContext, spec: StepSpec) -> NodeOutcome:
    """pdsh on this machine: DeepSpeed's runner looks it up here (`launcher 'pdsh' not installed`)."""
    found = shutil.which("pdsh")
    if found:
        return NodeOutcome(OK, [f"pdsh at {found}"])
    if not ctx.install_packages:
        return NodeOutcome(FAILED, error="pdsh is not installed on this machine, where `deepspeed` launches "
                                         "from: DeepSpeed stops with \"launcher 'pdsh' not installed\"",
                           fix=f"on this machine: {PDSH_FIX}")
    if ctx.dry_run:
        return NodeOutcome(WOULD_CHANGE, ["would install pdsh on this machine"])
    out = subprocess.run(["bash", "-c", _INSTALL_PDSH], capture_output=True, text=True, timeout=spec.timeout_s,
                         check=False)
    if not shutil.which("pdsh"):
        tail = " | ".join((out.stderr.strip() or out.stdout.strip()).splitlines()[-2:])
        return NodeOutcome(FAILED, error=f"installing pdsh on this machine failed: {tail}", fix=PDSH_FIX)
    return NodeOutcome(CHANGED, ["installed pdsh on this machine"])


def _verify_pdsh_from_head(ctx: BootstrapContext, hosts: list[str], spec: StepSpec, report: StepReport) -> None:
    env = pdsh_environment(ctx.settings)
    argv = ["pdsh", "-R", "ssh", "-t", str(int(ctx.settings.connect_timeout_s)), "-u", str(int(spec.timeout_s)),
            "-w", ",".join(hosts), "hostname"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=spec.timeout_s)
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
    """The --sync directory at the same absolute path everywhere: rsync, or a shared filesystem.

    Sharing is probed with a marker file in the directory, removed again before anything is copied and
    with the directory's modification time put back, so a rerun finds nothing to copy.
    """
    assert ctx.sync_dir is not None
    source = ctx.sync_dir.resolve()
    shared = _shared_with(ctx, source, spec)
    rsync_ssh = rsync_rsh(ctx.settings)
    left_out: set[str] = set()

    def ensure(host: str) -> NodeOutcome:
        if shared.get(host) == "shared":
            return NodeOutcome(OK, ["same filesystem as this machine: nothing to copy"])
        if shared.get(host) == "no-rsync":
            return NodeOutcome(FAILED, error=f"rsync is not installed on {host}",
                               fix=f"on {host}: sudo apt-get install -y rsync")
        base = ["rsync", "-a", *rsync_excludes(), "-e", rsync_ssh, f"{source}/", f"{host}:{source}/"]
        # --debug=FILTER1 names every path an exclude left out, so the run can say what stayed here.
        dry = subprocess.run([*base[:2], "--dry-run", "--itemize-changes", "--debug=FILTER1", *base[2:]],
                             capture_output=True, text=True, timeout=spec.timeout_s)
        if dry.returncode != 0:
            raise RemoteError(f"rsync to {host} failed: {' | '.join(dry.stderr.strip().splitlines()[-2:])}")
        left_out.update(parse_hidden(dry.stdout))
        changes = without_hidden(dry.stdout)
        if not changes:
            return NodeOutcome(OK, [f"{source} up to date"])
        if ctx.dry_run:
            return NodeOutcome(WOULD_CHANGE, [f"would copy {len(changes)} item(s) to {host}:{source}"])
        real = subprocess.run(base, capture_output=True, text=True, timeout=spec.timeout_s)
        if real.returncode != 0:
            raise RemoteError(f"rsync to {host} failed: {' | '.join(real.stderr.strip().splitlines()[-2:])}")
        return NodeOutcome(CHANGED, [f"copied {len(changes)} item(s) to {source}"])

    report = ctx.per_node(spec, ensure)
    notes = []
    sharing = [h for h, state in shared.items() if state == "shared"]
    if sharing:
        notes.append(f"{source} is on a filesystem this machine shares with {', '.join(sharing)}")
    if left_out:
        shown = sorted(left_out)
        notes.append(f"not copied (private keys, credentials and clusterkit's state stay on each machine): "
                     f"{', '.join(shown[:12])}" + (f" and {len(shown) - 12} more" if len(shown) > 12 else ""))
    report.note = "; ".join(notes)
    return report


def _shared_with(ctx: BootstrapContext, source: Path, spec: StepSpec) -> dict[str, str]:
    """host -> "shared" (sees ``source`` on the same filesystem), "no-rsync", or "" (a copy is needed).

    A dry run writes no marker: a node that has the directory counts as needing a look by rsync.
    """
    marker = source / f".clusterkit-shared-probe-{uuid.uuid4().hex[:12]}"
    before = source.stat()
    if not ctx.dry_run:
        marker.write_text("clusterkit probe: is this directory shared between nodes?\n")
    try:
        def probe(host: str) -> str:
            with connect(host, ctx.settings) as conn:
                out = conn.run(f"test -f {shlex.quote(str(marker))} && echo shared; "
                               "command -v rsync >/dev/null || echo no-rsync", hide=True, warn=True, timeout=20)
            return "shared" if "shared" in out.stdout else ("no-rsync" if "no-rsync" in out.stdout else "")

        results = fan_out(ctx.live, probe, min(spec.timeout_s, 60), None, ctx.settings)
    finally:
        marker.unlink(missing_ok=True)
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    return {host: result.value or "" for host, result in results.items() if result.ok}


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
            p.active for f in ib_known for p in f.network.ib_ports):  # type: ignore[union-attr]
        values["NCCL_IB_DISABLE"] = "1"
    return values, notes


def deepspeed_env(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """~/.deepspeed_env with what non-interactive shells miss, on every node and on this machine.

    DeepSpeed's runner reads the file only where it is launched (this machine) and exports it to every
    rank; the nodes get it too, so a launch from any of them works alike. A home shared by several
    machines holds one file, edited once.
    """
    from clusterkit.survey import SurveyOptions, survey_nodes

    live = Target([h for h in ctx.hosts if h.name in ctx.live], SshReach(ctx.settings))
    with open_nodes(live) as nodes, ctx.view.progress(nodes.names, "collecting facts over SSH") as progress:
        facts, _ = survey_nodes(nodes, SurveyOptions(python=ctx.python, timeout_s=spec.timeout_s, probes=False),
                                progress)
    ctx.facts = {h: f for h, f in facts.items() if not isinstance(f, Unavailable)}
    values, notes = plan_deepspeed_env(ctx.facts, ctx.addresses, ctx.python, os.environ)
    env_bin = str(Path(ctx.python).parent)
    no_python = {h for h, f in ctx.facts.items() if not isinstance(f.python_env, Unavailable)
                 and not f.python_env.exists}

    def edit_for(label: str) -> Edit:
        def edit(current: str | None) -> tuple[str | None, str]:
            update = update_deepspeed_env(current, values, label, env_bin)
            return (None if update.text == (current or "") else update.text), "; ".join(update.changes)
        return edit

    def ensure(host: str, sharing: list[str]) -> NodeOutcome:
        # In a dry run, env-push has only said it would install the env there: not a missing env.
        missing = [h for h in sharing if h in no_python and not (ctx.dry_run and h in ctx.env_installs)]
        if missing:
            return NodeOutcome(FAILED, error=f"interpreter {ctx.python} does not exist on {', '.join(missing)}: "
                                             "DeepSpeed runs it there; PATH would name an env that is not there",
                               fix=f"put the env at {ctx.python} on {', '.join(missing)} (the same path as on "
                                   "this machine), then rerun")
        with connect(host, ctx.settings) as conn:
            done = edit_home_file(conn, ".deepspeed_env", edit_for(f"{host}:~/.deepspeed_env"), 0o644,
                                  ctx.dry_run)
        return _dsenv_outcome(done, ctx.dry_run)

    report = ctx.per_home(spec, ensure, [h for h in ctx.live if h in ctx.facts])
    for host in ctx.live:
        if host not in ctx.facts:
            report.outcomes[host] = NodeOutcome(FAILED, error=f"facts from {host}: {facts.get(host)}")
    report.outcomes["head"] = _dsenv_here(ctx, edit_for("~/.deepspeed_env"))
    report.note = "; ".join(filter(None, [report.note, *notes,
                                          ", ".join(f"{k}={v}" for k, v in values.items() if k != "PATH")]))
    return report


def _dsenv_here(ctx: BootstrapContext, edit: Edit) -> NodeOutcome:
    """This machine's ~/.deepspeed_env: the one DeepSpeed's runner reads when launched from here."""
    if ctx.head_entry is not None:
        return NodeOutcome(OK, [f"written as hostfile node {ctx.head_entry}"])
    mine = ctx.head_home_id()
    shared = next((h for h, home in ctx.home_ids.items() if home == mine), None)
    if shared is not None:
        return NodeOutcome(OK, [f"home shared with {shared} (written there)"])
    done = edit_local_file(Path.home() / ".deepspeed_env", edit, 0o644, ctx.dry_run)
    return _dsenv_outcome(done, ctx.dry_run)


def _dsenv_outcome(done: tuple[str, str | None] | None, dry_run: bool) -> NodeOutcome:
    if done is None:
        return NodeOutcome(OK, ["~/.deepspeed_env up to date"])
    what, backup = done
    if dry_run:
        return NodeOutcome(WOULD_CHANGE, [f"would write ~/.deepspeed_env: {what}"])
    return NodeOutcome(CHANGED, [f"wrote ~/.deepspeed_env: {what}"] + ([f"backup {backup}"] if backup else []))
