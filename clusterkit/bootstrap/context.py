"""Run state shared by the bootstrap steps, and the per-node outcome model they report in."""

from __future__ import annotations

import getpass
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from clusterkit.bootstrap.playbook import StepSpec
from clusterkit.cluster.remote import HostResult, ProgressListener, RemoteError, SshSettings, connect, fan_out
from clusterkit.core.inventory import ActiveHost
from clusterkit.node.facts import NodeFacts

OK, CHANGED, WOULD_CHANGE, FAILED, SKIPPED = "ok", "changed", "would change", "failed", "skipped"


def terminal_password_prompt() -> str:
    """Ask for the nodes' SSH password on the terminal; stop the run cleanly where none can be typed."""
    if not sys.stdin.isatty():
        raise AbortBootstrap("--ask-password needs a terminal to ask on, and standard input is not one",
                             "pass the password with --password-env VAR instead")
    try:
        return getpass.getpass("SSH password for the nodes (first contact only; not stored): ")
    except EOFError:
        raise AbortBootstrap("no password was typed (end of input)", "rerun, or use --password-env VAR") from None


def home_identity_command(create: bool) -> str:
    """Shell printing an identity of ``$HOME`` that nodes sharing the home (NFS) print alike.

    ``~/.clusterkit/home-id`` holds a random id, created once by whichever node gets there first
    (``set -C``: an exclusive create, which NFS honours). A dry run creates nothing: it falls back to
    the home directory's inode, birth and change times, which only one directory has.
    """
    token = uuid.uuid4().hex
    read = ('f="$HOME/.clusterkit/home-id"; if [ -s "$f" ]; then cat "$f"; '
            'else echo "stat:$(stat -L -c %i:%W:%Z "$HOME")"; fi')
    if not create:
        return read
    return ('umask 077; mkdir -p "$HOME/.clusterkit" && f="$HOME/.clusterkit/home-id" && '
            f'{{ [ -s "$f" ] || (set -C; echo "home-{token}" > "$f") 2>/dev/null; }}; '
            'for _ in $(seq 100); do [ -s "$f" ] && break; sleep 0.05; done; cat "$f"')


@dataclass
class NodeOutcome:
    """What a step did (or would do) on one node."""

    status: str
    actions: list[str] = field(default_factory=list)
    error: str | None = None
    fix: str | None = None


@dataclass
class StepReport:
    """One step's outcome on every node it ran on, plus a note for the whole step."""

    step: StepSpec
    outcomes: dict[str, NodeOutcome] = field(default_factory=dict)
    note: str = ""
    #: The step stopped the whole run (AbortBootstrap).
    aborted: bool = False

    @property
    def failed_hosts(self) -> list[str]:
        return [h for h, o in self.outcomes.items() if o.status == FAILED]


class AbortBootstrap(Exception):
    """Stop the whole run (e.g. a changed host key): continuing could spread a compromised trust.

    ``report``: what the step found on each node before it stopped the run.
    """

    def __init__(self, message: str, fix: str, report: StepReport | None = None) -> None:
        super().__init__(message)
        self.fix = fix
        self.report = report


class BootstrapView(Protocol):
    """Where a bootstrap run shows itself: a terminal view (``clusterkit.ui.bootstrap``), or nothing."""

    def step_started(self, spec: StepSpec) -> None:
        """A step begins."""

    def step_done(self, report: StepReport) -> None:
        """A step ended, on every host it ran on."""

    def progress(self, hosts: Sequence[str], title: str) -> AbstractContextManager[ProgressListener]:
        """A per-host progress listener for the length of a block."""


class _Silent:
    def update(self, host: str, state: str, detail: str = "") -> None:
        """Nothing is shown."""


class QuietView:
    """Shows nothing (tests, and callers that render the reports themselves)."""

    def step_started(self, spec: StepSpec) -> None:
        """Nothing is shown."""

    def step_done(self, report: StepReport) -> None:
        """Nothing is shown."""

    @contextmanager
    def progress(self, hosts: Sequence[str], title: str) -> Iterator[ProgressListener]:
        yield _Silent()


@dataclass
class BootstrapContext:
    """Everything the steps share: the hosts, SSH settings, flags, and what earlier steps learnt."""

    hosts: list[ActiveHost]
    settings: SshSettings
    python: str
    view: BootstrapView = field(default_factory=QuietView)
    dry_run: bool = False
    install_packages: bool = False
    sync_dir: Path | None = None
    password_prompt: Callable[[], str] | None = None
    #: Hosts a step failed on; later steps leave them out and say so.
    failed: dict[str, str] = field(default_factory=dict)
    head_public_key: str = ""
    node_public_keys: dict[str, str] = field(default_factory=dict)
    #: host -> (key type, base64) of the host key the head verified.
    host_keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: host -> address it resolves to from the head.
    addresses: dict[str, str] = field(default_factory=dict)
    facts: dict[str, NodeFacts] = field(default_factory=dict)
    #: host -> identity of its home directory; hosts with one identity share one home (NFS).
    home_ids: dict[str, str] = field(default_factory=dict)
    #: The hostfile entry that is this machine (the launching machine), or None (a login node).
    head_entry: str | None = None
    #: ``python`` was named with --python (a training env to ship), not clusterkit's own interpreter.
    python_named: bool = False
    #: Hosts that get the training env from env-push in this run (in a dry run: would get it).
    env_installs: set[str] = field(default_factory=set)
    _head_home_id: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    @property
    def live(self) -> list[str]:
        """Hosts still in the run (no failed step so far)."""
        return [h for h in self.names if h not in self.failed]

    def ensure_password(self) -> None:
        """Make sure a password is at hand for first contact; asks at most once per run, and only
        with --ask-password from a terminal."""
        if self.settings.password is not None:
            return
        if self.password_prompt is None:
            raise AbortBootstrap("some nodes do not accept your key yet and no password was given",
                                 "rerun with --ask-password (from a terminal) or --password-env VAR")
        with self._lock:
            if self.settings.password is None:
                self.settings = replace(self.settings, password=self.password_prompt())


    def head_home_id(self) -> str:
        """This machine's home identity, as :meth:`home_groups` gives the nodes'."""
        import subprocess

        if not self._head_home_id:
            done = subprocess.run(["bash", "-c", home_identity_command(create=not self.dry_run)],
                                  capture_output=True, text=True, timeout=30, check=False)
            self._head_home_id = done.stdout.strip() or f"unknown: {done.stderr.strip()}"
        return self._head_home_id

    def home_groups(self, spec: StepSpec, hosts: list[str]) -> tuple[list[list[str]], dict[str, NodeOutcome]]:
        """``hosts`` grouped by the home directory they share (one group per home), and the hosts
        whose home could not be identified (as failed outcomes)."""
        unknown = [h for h in hosts if h not in self.home_ids]
        failed: dict[str, NodeOutcome] = {}
        if unknown:
            def identify(host: str) -> str:
                # A fresh token per host: the first node of a home to get there writes the one it shares.
                command = home_identity_command(create=not self.dry_run)
                with connect(host, self.settings) as conn:
                    out = conn.run(command, hide=True, warn=True, timeout=min(spec.timeout_s, 30))
                identity = str(out.stdout).strip()
                if out.exited != 0 or not identity:
                    raise RemoteError(f"cannot identify the home directory on {host}: "
                                      f"{out.stderr.strip() or 'no output'}")
                return identity

            for host, result in fan_out(unknown, identify, spec.timeout_s, None, self.settings).items():
                if result.ok and result.value:
                    self.home_ids[host] = result.value
                else:
                    failed[host] = NodeOutcome(FAILED, error=result.error, fix=result.fix)
        groups: dict[str, list[str]] = {}
        for host in hosts:
            if host in self.home_ids:
                groups.setdefault(self.home_ids[host], []).append(host)
        return list(groups.values()), failed

    def per_home(self, spec: StepSpec, work: Callable[[str, list[str]], NodeOutcome],
                 hosts: list[str] | None = None) -> StepReport:
        """Like :meth:`per_node`, but a home shared by several nodes (NFS) is edited once, from one of
        them: ``work(host, sharing)`` runs for the first node of each home, ``sharing`` being every
        node of that home. The others report the same outcome, saying whose home they share."""
        targets = self.live if hosts is None else hosts
        groups, failed = self.home_groups(spec, targets)
        sharing = {group[0]: group for group in groups}
        report = self.per_node(spec, lambda host: work(host, sharing[host]), list(sharing))
        report.outcomes.update(failed)
        for group in groups:
            first = report.outcomes.get(group[0])
            for other in group[1:]:
                if first is None:
                    continue
                if first.status == FAILED:
                    report.outcomes[other] = NodeOutcome(FAILED, error=f"shares its home with {group[0]}, "
                                                                       f"where this step failed", fix=first.fix)
                else:
                    report.outcomes[other] = NodeOutcome(first.status, [f"home shared with {group[0]} "
                                                                        "(edited there)"])
        shared = [group for group in groups if len(group) > 1]
        if shared:
            report.note = "; ".join(f"one home shared by {', '.join(g)}: its files were edited once, from {g[0]}"
                                    for g in shared)
        return report

    def per_node(self, spec: StepSpec, work: Callable[[str], NodeOutcome],
                 hosts: list[str] | None = None) -> StepReport:
        """Run ``work(host)`` on every live host in parallel with a live view; errors become FAILED."""
        targets = self.live if hosts is None else hosts
        report = StepReport(spec)
        if not targets:
            return report
        with self.view.progress(targets, spec.id) as progress:
            def task(host: str) -> NodeOutcome:
                progress.update(host, "working")
                outcome = work(host)
                progress.update(host, outcome.status, outcome.error or "; ".join(outcome.actions))
                return outcome

            results: dict[str, HostResult[NodeOutcome]] = fan_out(targets, task, spec.timeout_s, None,
                                                                   self.settings)
            for host, result in results.items():
                if result.ok and result.value is not None:
                    report.outcomes[host] = result.value
                else:
                    report.outcomes[host] = NodeOutcome(FAILED, error=result.error, fix=result.fix)
                    progress.update(host, FAILED, result.error or "")
        return report
