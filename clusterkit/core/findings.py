"""Findings: what a judge found, and the one way every judge runs.

A judge is a small function that reads values and yields :class:`Problem` values (none means pass)
or raises :class:`NotApplicable` saying what it lacked. Doctor checks judge facts, config rules judge
a DeepSpeed config, log patterns judge a failed run's output; all declare an id, a severity, tags,
why it matters and a generic fix (:class:`JudgeSpec`), and all run through :func:`judge`, which turns
what they say into :class:`Finding` values for the renderers in :mod:`clusterkit.ui.report`:

- problems yielded before a ``NotApplicable`` still stand (the judge found them before it ran out
  of facts);
- any other exception becomes an ``internal-error`` finding: one broken judge never stops a run and
  never passes silently.
"""

from __future__ import annotations

import difflib
import enum
import importlib
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from clusterkit.errors import UsageError
from clusterkit.node.facts import Maybe, Unavailable

INTERNAL_ERROR_ID = "internal-error"
#: The host of findings about the cluster as a whole (not one node).
CLUSTER_HOST = "cluster"
T = TypeVar("T")


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for the gravest: sort by it."""
        return {"error": 0, "warning": 1, "info": 2}[self.value]


class Outcome(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


#: A place inside a document, as its keys (``("zero_optimization", "stage")``).
KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class Problem:
    """What a judge found wrong.

    ``where`` names the place (``GPU 3``, ``~/.deepspeed_env:2``); a judge of a document may give a
    key ``path`` instead, which the runner turns into ``file:line``. ``fix`` replaces the judge's
    generic fix when it can be exact; ``host`` puts the problem on another host than the one judged;
    ``severity`` may lower the judge's own, never raise it.
    """

    message: str
    where: str = ""
    fix: str | None = None
    host: str | None = None
    severity: Severity | None = None
    path: KeyPath = ()


class NotApplicable(Exception):
    """Raised by a judge that does not apply here (no GPUs, no hostfile, a fact it needs is missing)."""


def require(value: Maybe[T], what: str) -> T:
    """Return a read fact, or skip the judge saying which fact was unavailable and why."""
    if isinstance(value, Unavailable):
        raise NotApplicable(f"{what} unavailable: {value.reason}")
    return value


@dataclass(frozen=True)
class Finding:
    """One result line: a judge's outcome on one host (``cluster``, ``config`` for whole-run judges)."""

    check_id: str
    severity: Severity
    outcome: Outcome
    host: str
    where: str
    message: str
    why: str
    fix: str

    @property
    def is_error(self) -> bool:
        return self.outcome is Outcome.FAIL and self.severity is Severity.ERROR


@dataclass(frozen=True)
class JudgeSpec:
    """What every judge declares: its id, severity, tags, one-line summary, why it matters, the fix."""

    id: str
    severity: Severity
    tags: tuple[str, ...]
    summary: str
    why: str
    fix: str


def lower(severity: Severity, override: Severity | None) -> Severity:
    """``override`` where it is milder than ``severity``: a problem may soften its judge, never harden it."""
    return override if override is not None and override.rank > severity.rank else severity


def judge(spec: JudgeSpec, host: str, call: Callable[[], Iterable[Problem]], *, default_where: str = "",
          place: Callable[[KeyPath], str] | None = None) -> list[Finding]:
    """Run one judge and return its findings; never raises.

    ``place`` turns a problem's key path into its ``where`` (a config rule's ``file:line``);
    ``default_where`` is the where of passes, skips and problems that name none.
    """
    def finding(outcome: Outcome, message: str, problem: Problem | None = None) -> Finding:
        where = default_where
        if problem is not None and problem.where:
            where = problem.where
        elif problem is not None and problem.path and place is not None:
            where = place(problem.path)
        fix = problem.fix if problem is not None and problem.fix is not None else spec.fix
        severity = lower(spec.severity, problem.severity if problem is not None else None)
        return Finding(spec.id, severity, outcome, (problem.host if problem and problem.host else host), where,
                       message, spec.why, fix)

    problems: list[Problem] = []
    try:
        problems.extend(call())
    except NotApplicable as exc:
        if not problems:  # problems found before the judge ran out of facts still stand
            return [finding(Outcome.SKIP, str(exc))]
    except Exception as exc:
        tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return [Finding(INTERNAL_ERROR_ID, Severity.ERROR, Outcome.FAIL, host, spec.id,
                        f"{spec.id} crashed: {tail}", "a crashed check cannot vouch for anything it covers",
                        "rerun with CLUSTERKIT_DEBUG=1 and report the traceback")]
    if not problems:
        return [finding(Outcome.PASS, spec.summary)]
    return [finding(Outcome.FAIL, p.message, p) for p in problems]


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    """Failures by severity plus passed/skipped totals."""
    counted: Counter[str] = Counter()
    for f in findings:
        counted[f.severity.value if f.outcome is Outcome.FAIL else f.outcome.value] += 1
    return {key: counted.get(key, 0) for key in ("error", "warning", "info", "pass", "skip")}


class _Declared(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def tags(self) -> tuple[str, ...]: ...


S = TypeVar("S", bound=_Declared)


class Catalogue(Generic[S]):
    """Judges of one kind, registered by id as their modules are imported.

    ``load()`` imports every module; one that fails to import is an error (a smaller catalogue
    would pass what it no longer judges).
    """

    def __init__(self, kind: str, package: str, modules: Sequence[str], listed_by: str) -> None:
        self.kind = kind
        self.package = package
        self.modules = tuple(modules)
        #: Where a user finds the ids (for the error on an unknown one).
        self.listed_by = listed_by
        self.by_id: dict[str, S] = {}

    def add(self, spec: S) -> None:
        if spec.id in self.by_id:
            raise RuntimeError(f"{self.kind} id {spec.id!r} registered twice")
        self.by_id[spec.id] = spec

    def load(self) -> dict[str, S]:
        for name in self.modules:
            importlib.import_module(f"{self.package}.{name}")
        return self.by_id

    def select(self, only: Sequence[str] = (), skip: Sequence[str] = ()) -> list[S]:
        """Judges chosen by ids or tags; an unknown name is a usage error with a did-you-mean."""
        known = set(self.by_id) | {tag for spec in self.by_id.values() for tag in spec.tags}
        for name in [*only, *skip]:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UsageError(f"unknown {self.kind} id or tag {name!r}{hint}; {self.listed_by} lists them")

        def matches(spec: S, names: Sequence[str]) -> bool:
            return spec.id in names or any(tag in names for tag in spec.tags)

        return [spec for spec in self.by_id.values()
                if (not only or matches(spec, only)) and not matches(spec, skip)]
