"""Bootstrap steps that build all-to-all passwordless SSH: reachability, host keys, user keys,
authorized_keys, known_hosts, and the mesh verification."""

from __future__ import annotations

import shlex
import socket
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

from clusterkit.bootstrap.context import (
    CHANGED,
    FAILED,
    OK,
    WOULD_CHANGE,
    AbortBootstrap,
    BootstrapContext,
    NodeOutcome,
    StepReport,
)
from clusterkit.bootstrap.files import edit_home_file, ensure_ssh_dir
from clusterkit.bootstrap.playbook import StepSpec
from clusterkit.cluster.remote import (
    RemoteError,
    connect,
    explain,
    key_fingerprint,
    known_host_name,
    load_known_hosts,
    record_trusted_key,
    run_agent,
    served_host_key,
    ssh_target,
)
from clusterkit.core.facts_codec import from_jsonable
from clusterkit.node.collect.sshtrust import fingerprint, known_host_entries
from clusterkit.node.facts import SshLoginProbe


def reachability(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """TCP to the SSH port and an SSH banner on every node (the launching machine too when it is a
    hostfile node: pdsh logs into it by that name)."""
    def probe(host: str) -> NodeOutcome:
        target, port = ssh_target(host, ctx.settings)
        try:
            address = socket.getaddrinfo(target, port, type=socket.SOCK_STREAM)[0][4][0]
        except socket.gaierror as exc:
            return NodeOutcome(FAILED, error=f"cannot resolve {target}: {exc.strerror}",
                               fix=f"add {target} to DNS or /etc/hosts")
        ctx.addresses[host] = str(address)
        try:
            with socket.create_connection((target, port), timeout=min(spec.timeout_s, 10)) as sock:
                sock.settimeout(min(spec.timeout_s, 10))
                banner = sock.recv(256).decode("latin-1").strip()
        except OSError as exc:
            explained = explain(exc, host, ctx.settings)
            return NodeOutcome(FAILED, error=str(explained), fix=explained.fix)
        if not banner.startswith("SSH-"):
            return NodeOutcome(FAILED, error=f"{target}:{port} answers but is not sshd ({banner[:40]!r})")
        return NodeOutcome(OK, [f"{banner.split()[0]} on {address}:{port}"])

    return ctx.per_node(spec, probe)


def host_keys(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """Verify each node's host key against known_hosts; trust new ones only with --trust-new-hosts."""
    known = load_known_hosts()
    changed: list[str] = []

    def probe(host: str) -> NodeOutcome:
        target, port = ssh_target(host, ctx.settings)
        name = known_host_name(target, port)
        entry = known.lookup(name)
        # Like OpenSSH: ask for the key type already known first.
        key = served_host_key(host, ctx.settings, prefer=list(entry) if entry is not None else None)
        ctx.host_keys[host] = (key.get_name(), key.get_base64())
        fingerprint = key_fingerprint(key)
        if entry is not None and key.get_name() in entry:
            if entry[key.get_name()] == key:
                return NodeOutcome(OK, [f"{key.get_name()} {fingerprint} known"])
            changed.append(host)
            return NodeOutcome(FAILED, error=f"host key of {host} CHANGED: now {fingerprint}",
                               fix=f"verify on {host}: ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub; then "
                                   f"ssh-keygen -R {shlex.quote(name)} and rerun with --trust-new-hosts")
        if ctx.dry_run:
            verdict = WOULD_CHANGE if ctx.settings.trust_new_hosts else FAILED
            return NodeOutcome(verdict, [f"would trust {key.get_name()} {fingerprint}"],
                               error=None if ctx.settings.trust_new_hosts else "unknown host key")
        if not ctx.settings.trust_new_hosts:
            return NodeOutcome(FAILED, error=f"host key of {host} is not in ~/.ssh/known_hosts "
                                             f"({key.get_name()} {fingerprint})",
                               fix="compare the fingerprint with the node's console (ssh-keygen -lf "
                                   "/etc/ssh/ssh_host_ed25519_key.pub), then rerun with --trust-new-hosts")
        record_trusted_key(name, key)
        return NodeOutcome(CHANGED, [f"trusted {key.get_name()} {fingerprint} (logged)"])

    report = ctx.per_node(spec, probe)
    if changed:
        first = report.outcomes[changed[0]]
        errors = "; ".join(report.outcomes[h].error or h for h in changed)
        raise AbortBootstrap(f"{errors}. Refusing to go on: a changed key means a reinstalled node or "
                             "someone in the middle", first.fix or "", report)
    return report


def _public_key_path(ctx: BootstrapContext) -> Path:
    if ctx.settings.identity_file:
        return Path(ctx.settings.identity_file + ".pub").expanduser()
    return Path("~/.ssh/id_ed25519.pub").expanduser()


def head_key(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """The head has a key pair (ed25519 unless --identity names another)."""
    report = StepReport(spec)
    public = _public_key_path(ctx)
    private = public.with_suffix("")
    actions: list[str] = []
    if not private.exists():
        if ctx.dry_run:
            report.outcomes["head"] = NodeOutcome(WOULD_CHANGE, [f"would create {private} (ed25519)"])
            ctx.head_public_key = "<new key>"
            return report
        private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        f"clusterkit@{socket.gethostname()}", "-f", str(private)], check=True, timeout=30)
        actions.append(f"created {private}")
    elif not public.exists():
        if not ctx.dry_run:
            out = subprocess.run(["ssh-keygen", "-y", "-f", str(private)], check=True, capture_output=True,
                                 text=True, timeout=30)
            public.write_text(out.stdout)
        actions.append(f"wrote {public} from the private key")
    if private.exists() and private.stat().st_mode & 0o077:
        if not ctx.dry_run:
            private.chmod(0o600)
        actions.append(f"set {private} to 0600")
    ctx.head_public_key = public.read_text().strip() if public.exists() else "<new key>"
    status = OK if not actions else (WOULD_CHANGE if ctx.dry_run else CHANGED)
    report.outcomes["head"] = NodeOutcome(status, actions or [f"{public.name} present"])
    return report


def _key_body(line: str) -> str:
    """The 'type base64' part of an authorized_keys line (options and comment stripped)."""
    parts = line.split()
    for i, part in enumerate(parts):
        if part.startswith(("ssh-", "ecdsa-", "sk-")) and i + 1 < len(parts):
            return f"{part} {parts[i + 1]}"
    return line.strip()


def add_authorized_keys(conn: Any, keys: list[str], dry_run: bool) -> list[str]:
    """Append the missing ``keys`` to ~/.ssh/authorized_keys (backup first); return actions."""
    actions = [] if dry_run else ensure_ssh_dir(conn)

    def edit(current: str | None) -> tuple[str | None, str]:
        text = current or ""
        present = {_key_body(line) for line in text.splitlines() if line.strip() and not line.startswith("#")}
        missing = [k for k in dict.fromkeys(keys) if _key_body(k) not in present]
        if not missing:
            return None, ""
        comments = ", ".join(k.split()[2] if len(k.split()) > 2 else k.split()[0] for k in missing)
        return text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(missing) + "\n", \
            f"{len(missing)} key(s) ({comments})"

    done = edit_home_file(conn, ".ssh/authorized_keys", edit, 0o600, dry_run)
    if done is None:
        return actions
    what, backup = done
    if dry_run:
        return [f"would add {what} to ~/.ssh/authorized_keys"]
    return [*actions, f"added {what}" + (f", backup {backup}" if backup else "")]


def authorize_head(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """The head's key logs into every node; nodes that refuse it get it via one password prompt."""
    import paramiko

    keyless = replace(ctx.settings, password=None)
    needs_password: list[str] = []

    def try_key(host: str) -> NodeOutcome:
        try:
            with connect(host, keyless):
                return NodeOutcome(OK, ["key accepted"])
        except paramiko.SSHException as exc:  # AuthenticationException, or no key to offer at all
            if not isinstance(exc, paramiko.AuthenticationException) and "authentication" not in str(exc):
                raise
            needs_password.append(host)
            return NodeOutcome(WOULD_CHANGE, ["needs the password once"])

    report = ctx.per_node(spec, try_key)
    if not needs_password:
        return report
    if ctx.settings.password is None and ctx.password_prompt is None:
        if not ctx.dry_run:
            raise AbortBootstrap(f"{', '.join(sorted(needs_password))} refuse this machine's key and no password "
                                 "was given", "rerun with --ask-password (from a terminal) or --password-env VAR")
        for host in needs_password:  # later steps cannot look without a login
            ctx.failed[host] = "dry run: give --ask-password or --password-env to look further"
    else:
        ctx.ensure_password()  # asked here, once, and only because a node refused the key
    if ctx.dry_run:
        for host in needs_password:
            report.outcomes[host] = NodeOutcome(WOULD_CHANGE, ["would log in with the password and add the "
                                                               "head's key to ~/.ssh/authorized_keys"])
        return report

    def push(host: str, sharing: list[str]) -> NodeOutcome:
        with connect(host, ctx.settings) as conn:
            return NodeOutcome(CHANGED, add_authorized_keys(conn, [ctx.head_public_key], dry_run=False))

    pushed = ctx.per_home(spec, push, needs_password)
    report.outcomes.update(pushed.outcomes)
    report.note = pushed.note
    return report


_NODE_KEY = (
    'umask 077; k="$HOME/.ssh/id_ed25519"; made=0; '
    'if [ ! -f "$k" ]; then {create} fi; '
    'if [ ! -f "$k.pub" ] && [ -f "$k" ]; then ssh-keygen -y -f "$k" > "$k.pub"; fi; '
    'echo "made=$made"; cat "$k.pub" 2>/dev/null || true'
)


def node_keys(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """Every node has its own ed25519 key pair (private keys never leave their node); nodes that share
    a home share the one pair in it."""
    def ensure(host: str, sharing: list[str]) -> NodeOutcome:
        with connect(host, ctx.settings) as conn:
            create = ('made=1; ' if ctx.dry_run else
                      'mkdir -p -m 700 "$HOME/.ssh" && ssh-keygen -q -t ed25519 -N "" '
                      '-C "clusterkit@$(hostname)" -f "$k" && made=1; ')
            out = conn.run(_NODE_KEY.format(create=create), hide=True, timeout=spec.timeout_s)
            lines = out.stdout.strip().splitlines()
            made = lines[0] == "made=1"
            public = next((ln for ln in lines[1:] if ln.startswith("ssh-")), "")
            if public:
                for node in sharing:
                    ctx.node_public_keys[node] = public
            if made:
                status = WOULD_CHANGE if ctx.dry_run else CHANGED
                return NodeOutcome(status, ["would create ~/.ssh/id_ed25519" if ctx.dry_run
                                            else "created ~/.ssh/id_ed25519"])
            return NodeOutcome(OK, ["~/.ssh/id_ed25519 present"])

    return ctx.per_home(spec, ensure)


def authorize_all(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """Every node's key (and the head's) is in every node's authorized_keys."""
    keys = [k for k in [ctx.head_public_key, *ctx.node_public_keys.values()] if k.startswith("ssh-")]

    keys_pending = not ctx.head_public_key.startswith("ssh-") or len(ctx.node_public_keys) < len(ctx.live)

    def ensure(host: str, sharing: list[str]) -> NodeOutcome:
        with connect(host, ctx.settings) as conn:
            actions = add_authorized_keys(conn, keys, ctx.dry_run)
        if ctx.dry_run and keys_pending:
            actions.append("would add the keys the steps above create")
        if not actions:
            return NodeOutcome(OK, [f"all {len(set(keys))} keys present"])
        return NodeOutcome(WOULD_CHANGE if ctx.dry_run else CHANGED, actions)

    report = ctx.per_home(spec, ensure)
    missing = [h for h in ctx.live if h not in ctx.node_public_keys and not ctx.dry_run]
    if missing:
        report.note = f"no key known yet for {', '.join(missing)} (their node-keys step failed)"
    return report


_LOOPBACK_NAMES = ("localhost", "127.0.0.1")


def _wanted_known_hosts(ctx: BootstrapContext, sharing: list[str]) -> list[tuple[list[str], str, str]]:
    """(names, key type, base64) a known_hosts shared by the ``sharing`` nodes must hold: every node's
    key under its hostfile name and address, and each sharing node's own key under localhost."""
    wanted = []
    for other, (key_type, b64) in ctx.host_keys.items():
        names = [other] + ([ctx.addresses[other]] if ctx.addresses.get(other) not in (None, other) else [])
        if other in sharing:
            names += list(_LOOPBACK_NAMES)
        wanted.append((names, key_type, b64))
    return wanted


def plan_known_hosts(current: str, wanted: list[tuple[list[str], str, str]]) -> tuple[list[str], list[str]]:
    """The lines to append to a known_hosts file, and the names it holds another key for.

    A name is fine when any of its keys is the wanted one (OpenSSH accepts a host when one matches);
    it conflicts when it holds a key of the same type that differs, except under localhost, which a
    shared home holds for several nodes.
    """
    names = {name for entry_names, _, _ in wanted for name in entry_names}
    known = known_host_entries(current.splitlines(), names)
    add: list[str] = []
    conflicts: list[str] = []
    for entry_names, key_type, b64 in wanted:
        want = fingerprint(b64)
        missing = []
        for name in entry_names:
            keys = known.get(name, [])
            if any(fp == want for _, fp in keys):
                continue
            if name in _LOOPBACK_NAMES or not any(kind == key_type for kind, _ in keys):
                missing.append(name)
            else:
                conflicts.append(name)
        if missing:
            add.append(f"{','.join(missing)} {key_type} {b64}")
    return add, conflicts


def known_hosts(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """Every node's known_hosts knows every node's (verified) host key, by name and address."""
    def ensure(host: str, sharing: list[str]) -> NodeOutcome:
        wanted = _wanted_known_hosts(ctx, sharing)
        conflicts: list[str] = []

        def edit(current: str | None) -> tuple[str | None, str]:
            text = current or ""
            add, found = plan_known_hosts(text, wanted)
            conflicts[:] = found
            if found or not add:
                return None, ""
            return text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(add) + "\n", \
                f"{len(add)} known_hosts line(s)"

        with connect(host, ctx.settings) as conn:
            if not ctx.dry_run:
                ensure_ssh_dir(conn)
            done = edit_home_file(conn, ".ssh/known_hosts", edit, 0o600, ctx.dry_run)
        if conflicts:
            return NodeOutcome(FAILED, error=f"~/.ssh/known_hosts on {host} holds a different key for "
                                             f"{', '.join(conflicts)}",
                               fix=f"on {host}: " + "; ".join(f"ssh-keygen -R {shlex.quote(n)}"
                                                             for n in conflicts) + "; then rerun")
        if done is None:
            return NodeOutcome(OK, [f"{len(ctx.host_keys)} host keys known"])
        what, backup = done
        if ctx.dry_run:
            return NodeOutcome(WOULD_CHANGE, [f"would add {what}"])
        return NodeOutcome(CHANGED, [f"added {what}" + (f", backup {backup}" if backup else "")])

    return ctx.per_home(spec, ensure)


def ssh_mesh(ctx: BootstrapContext, spec: StepSpec) -> StepReport:
    """Verify `ssh -o BatchMode=yes` from every node to every node by hostfile name.

    Only nodes still in the run are targets: a node that already failed (dead, say) is reported
    once, not again as a broken route from every healthy node.
    """
    names = ctx.live

    def verify(host: str) -> NodeOutcome:
        if ctx.dry_run and ctx.node_public_keys.keys() != set(ctx.live):
            return NodeOutcome(WOULD_CHANGE, ["would verify after keys are in place"])
        with connect(host, ctx.settings) as conn:
            args = ["ssh-mesh", "--hosts", ",".join(names), "--timeout", "10"]
            if ctx.settings.port:
                args += ["--port", str(ctx.settings.port)]
            logins = from_jsonable(list[SshLoginProbe], run_agent(conn, args, timeout_s=spec.timeout_s - 5))
        broken = [f"{host} -> {login.host}: {login.error}" for login in logins if not login.ok]
        if broken:
            if ctx.dry_run:
                return NodeOutcome(WOULD_CHANGE, [f"{len(broken)} route(s) not working yet"])
            raise RemoteError("; ".join(broken), fix="rerun `clusterkit bootstrap`; if it persists: "
                                                     f"ssh -v from {host}")
        return NodeOutcome(OK, [f"reaches all {len(logins)} nodes"])

    report = ctx.per_node(spec, verify)
    if len(names) < len(ctx.names):
        report.note = f"not tested as targets (failed earlier): {', '.join(sorted(set(ctx.names) - set(names)))}"
    return report
