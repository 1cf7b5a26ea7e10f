"""Run state shared by the bootstrap steps, and the per-node outcome model they report in."""

from __future__ import annotations

import getpass
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from clusterkit.bootstrap.playbook import StepSpec
from clusterkit.errors import UsageError
from clusterkit.facts import NodeFacts
from clusterkit.inventory import ActiveHost
from clusterkit.progress import NodeProgress
from clusterkit.remote import HostResult, SshSettings, fan_out

OK, CHANGED, WOULD_CHANGE, FAILED, SKIPPED = "ok", "changed", "would change", "failed", "skipped"


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

    @property
    def failed_hosts(self) -> list[str]:
        return [h for h, o in self.outcomes.items() if o.status == FAILED]


class AbortBootstrap(Exception):
    """Stop the whole run (e.g. a changed host key): continuing could spread a compromised trust."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


@dataclass
class BootstrapContext:
    """Everything the steps share: the hosts, SSH settings, flags, and what earlier steps learnt."""

    hosts: list[ActiveHost]
    settings: SshSettings
    python: str
    console: Console
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    @property
    def live(self) -> list[str]:
        """Hosts still in the run (no failed step so far)."""
        return [h for h in self.names if h not in self.failed]

    def ensure_password(self) -> None:
        """Make sure a password is at hand for first contact; asks at most once per run."""
        if self.settings.password is not None:
            return
        if self.password_prompt is None:
            if not sys.stdin.isatty():
                raise UsageError("some nodes do not accept your key yet and no password was given: rerun "
                                 "with --password-env VAR (or --ask-password from a terminal)")
            self.password_prompt = lambda: getpass.getpass(
                "SSH password for the nodes (first contact only; not stored): ")
        with self._lock:
            if self.settings.password is None:
                self.settings = replace(self.settings, password=self.password_prompt())

    def per_node(self, spec: StepSpec, work: Callable[[str], NodeOutcome],
                 hosts: list[str] | None = None) -> StepReport:
        """Run ``work(host)`` on every live host in parallel with a live view; errors become FAILED."""
        targets = self.live if hosts is None else hosts
        report = StepReport(spec)
        if not targets:
            return report
        with NodeProgress(targets, spec.id, self.console) as progress:
            def task(host: str) -> NodeOutcome:
                progress.update(host, "working")
                outcome = work(host)
                progress.update(host, outcome.status, outcome.error or "; ".join(outcome.actions)[:80])
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
