"""The node-check catalog as a whole: metadata, isolation of crashes, and whole-node verdicts."""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterkit.checks import load_checks
from clusterkit.checks.registry import (
    REGISTRY,
    NodeContext,
    checks_for_machine,
    node_check,
    run_node_checks,
    select_checks,
)
from clusterkit.core.findings import INTERNAL_ERROR_ID, Outcome, Problem, Severity
from clusterkit.node.facts import NodeFacts, Unavailable
from tests.factories import cpu_only_node, h100_fixture_node, healthy_gpu_node, with_gpu

MY_MODULES = ("gpu", "system", "software", "network", "launcher")
ID_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)+$")


def node_findings(facts: NodeFacts, expected_gpus: int | None = None) -> list[Any]:
    load_checks()
    specs = checks_for_machine(select_checks(), node=True, launch=True)  # this machine, as doctor sees it
    return run_node_checks(specs, facts, NodeContext("node-0", expected_gpus=expected_gpus))


def failing(facts: NodeFacts, expected_gpus: int | None = None) -> dict[str, str]:
    return {f.check_id: f.severity.value for f in node_findings(facts, expected_gpus) if f.outcome is Outcome.FAIL}


# ----------------------------------------------------------------------------------------- metadata


def test_there_are_at_least_25_node_checks() -> None:
    load_checks()
    mine = [s for s in REGISTRY.values()
            if s.scope in ("node", "launch") and s.func.__module__.rsplit(".", 1)[-1] in MY_MODULES]
    assert len(mine) >= 25


def test_every_check_has_an_id_summary_why_and_fix() -> None:
    load_checks()
    for spec in REGISTRY.values():
        assert ID_PATTERN.match(spec.id), spec.id
        assert spec.summary and spec.summary != spec.id, f"{spec.id}: docstring summary missing"
        assert len(spec.why) > 20, f"{spec.id}: why too short"
        assert spec.fix.strip(), f"{spec.id}: no fix"
        assert spec.tags, f"{spec.id}: no tags"
        assert isinstance(spec.severity, Severity)


def test_a_check_id_cannot_be_registered_twice() -> None:
    load_checks()
    with pytest.raises(RuntimeError, match="registered twice"):
        node_check("pcie-width-degraded", Severity.ERROR, tags=("gpu",), why="w", fix="f")(lambda f, c: iter(()))


# --------------------------------------------------------------------------------- crash isolation


@pytest.fixture
def crashing_check() -> Iterator[str]:
    check_id = "test-crashing-check"

    @node_check(check_id, Severity.WARNING, tags=("test",), why="exists only in this test", fix="none")
    def explode(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
        """Always crashes."""
        raise KeyError("boom")

    yield check_id
    del REGISTRY[check_id]


def test_a_crashing_check_becomes_an_internal_error_finding(crashing_check: str) -> None:
    findings = run_node_checks([REGISTRY[crashing_check], REGISTRY["pcie-width-degraded"]], healthy_gpu_node(),
                               NodeContext("node-0"))
    assert [(f.check_id, f.outcome, f.severity, f.where) for f in findings] == [
        (INTERNAL_ERROR_ID, Outcome.FAIL, Severity.ERROR, crashing_check),
        ("pcie-width-degraded", Outcome.PASS, Severity.ERROR, "")]
    assert "KeyError: 'boom'" in findings[0].message


def test_facts_of_the_wrong_type_crash_only_their_check() -> None:
    facts = with_gpu(healthy_gpu_node(), 0, clock_event_reasons=None)
    findings = node_findings(facts)
    crashed = [f for f in findings if f.check_id == INTERNAL_ERROR_ID]
    assert {f.where for f in crashed} == {"gpu-hw-slowdown", "gpu-throttled"}
    assert any(f.check_id == "pcie-width-degraded" and f.outcome is Outcome.PASS for f in findings)


def _maybe_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every field typed ``Maybe[...]`` inside ``value`` (dataclasses and lists of them)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hints = typing.get_type_hints(type(value))
        for f in dataclasses.fields(value):
            child = getattr(value, f.name)
            if Unavailable in typing.get_args(hints[f.name]) and not isinstance(child, Unavailable):
                yield (*path, f.name)
            yield from _maybe_paths(child, (*path, f.name))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _maybe_paths(item, (*path, i))


def _blank(value: Any, path: tuple[Any, ...]) -> Any:
    head, rest = path[0], path[1:]
    if isinstance(value, list):
        copy = list(value)
        copy[head] = _blank(value[head], rest)
        return copy
    child = Unavailable("blanked by the test") if not rest else _blank(getattr(value, head), rest)
    return dataclasses.replace(value, **{head: child})


HEALTHY = {"gpu-8": healthy_gpu_node(), "cpu": cpu_only_node(), "h100": h100_fixture_node()}
PATHS = {name: sorted(set(_maybe_paths(facts)), key=str) for name, facts in HEALTHY.items()}


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(HEALTHY)).flatmap(
    lambda name: st.tuples(st.just(name), st.lists(st.sampled_from(PATHS[name]), max_size=12, unique=True))),
    st.sampled_from([None, 1, 8]))
def test_no_check_crashes_whatever_facts_are_unavailable(blanked: tuple[str, list[tuple[Any, ...]]],
                                                         expected_gpus: int | None) -> None:
    name, paths = blanked
    facts = HEALTHY[name]
    for path in paths:
        try:
            facts = _blank(facts, path)
        except (IndexError, AttributeError, TypeError):
            continue  # an earlier blank removed the parent
    crashed = [f for f in node_findings(facts, expected_gpus) if f.check_id == INTERNAL_ERROR_ID]
    assert not crashed, [f.message for f in crashed]


# --------------------------------------------------------------------------------- whole-node verdicts


def test_a_healthy_8_gpu_node_fails_nothing_but_the_pdsh_hint() -> None:
    assert failing(healthy_gpu_node(), expected_gpus=8) == {"pdsh-default-rcmd-rsh": "info"}


def test_a_cpu_only_node_is_judged_as_a_cpu_run() -> None:
    assert failing(cpu_only_node(), expected_gpus=2) == {"pdsh-default-rcmd-rsh": "info"}


def test_the_real_h100_readings_give_its_real_state() -> None:
    assert failing(h100_fixture_node(), expected_gpus=1) == {
        "ecc-aggregate-uncorrectable": "warning",
        "row-remap-history": "info",
        "ulimit-nofile-low": "warning",
        "deepspeed-op-incompatible": "warning",
        "pdsh-default-rcmd-rsh": "info",
    }


def test_every_skip_says_why() -> None:
    for facts in HEALTHY.values():
        for finding in node_findings(facts):
            if finding.outcome is Outcome.SKIP:
                assert finding.message.strip(), finding.check_id


def test_problems_found_before_a_check_gives_up_are_kept() -> None:
    from clusterkit.checks.registry import NodeCheck, NodeContext, run_node_checks
    from clusterkit.core.findings import NotApplicable, Outcome, Problem, Severity
    from tests.factories import healthy_gpu_node

    def half(facts: object, ctx: object) -> Iterator[Problem]:
        yield Problem("GPU 0 is bad", where="GPU 0")
        raise NotApplicable("GPU 1 unreadable")

    spec = NodeCheck("half-check", Severity.ERROR, (), "summary", "why", "fix", "node", half)
    findings = run_node_checks([spec], healthy_gpu_node(), NodeContext(host="n"))
    assert [(f.outcome, f.message) for f in findings] == [(Outcome.FAIL, "GPU 0 is bad")]
