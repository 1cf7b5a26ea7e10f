"""One findings model: every judge (doctor check, config rule) runs through one runner, one semantics."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from clusterkit.core.findings import (
    INTERNAL_ERROR_ID,
    Catalogue,
    JudgeSpec,
    NotApplicable,
    Outcome,
    Problem,
    Severity,
    judge,
)
from clusterkit.dsconfig.load import parse_ds_config
from clusterkit.dsconfig.rules import CheckInput, Rule, run_rules

SPEC = JudgeSpec("half-judge", Severity.ERROR, ("t",), "all good", "why", "the generic fix")


def half() -> Iterator[Problem]:
    yield Problem("first item is bad", where="item 0")
    raise NotApplicable("the rest could not be read")


def test_problems_found_before_a_judge_runs_out_of_facts_stand() -> None:
    found = judge(SPEC, "node1", half)
    assert [(f.outcome, f.message, f.where, f.fix) for f in found] == [
        (Outcome.FAIL, "first item is bad", "item 0", "the generic fix")]


def test_a_config_rule_keeps_them_too() -> None:
    config = parse_ds_config(json.dumps({"train_batch_size": 8}, indent=2), "ds.json")
    def half_rule(check: CheckInput) -> Iterator[Problem]:
        yield Problem("bad batch", path=("train_batch_size",))
        yield from half()

    rule = Rule("half-rule", Severity.WARNING, (), "fine", "why", "fix", half_rule)
    found = run_rules(CheckInput(config=config, effective=config.data), [rule])
    assert [(f.check_id, f.outcome, f.where) for f in found] == [("half-rule", Outcome.FAIL, "ds.json:2:3"),
                                                                 ("half-rule", Outcome.FAIL, "item 0")]


def test_a_crash_is_an_internal_error_naming_the_judge_and_severity_only_goes_down() -> None:
    def crash() -> Iterator[Problem]:
        raise KeyError("gpus")
    (crashed,) = judge(SPEC, "node1", crash)
    assert (crashed.check_id, crashed.where, crashed.is_error) == (INTERNAL_ERROR_ID, "half-judge", True)
    assert "half-judge crashed: KeyError: 'gpus'" in crashed.message
    mild = JudgeSpec("mild", Severity.WARNING, (), "s", "w", "f")
    (raised,) = judge(mild, "h", lambda: [Problem("x", severity=Severity.ERROR)])
    (lowered,) = judge(SPEC, "h", lambda: [Problem("x", severity=Severity.INFO)])
    assert (raised.severity, lowered.severity) == (Severity.WARNING, Severity.INFO)


def test_a_judge_module_that_fails_to_import_is_an_error_not_a_smaller_catalogue() -> None:
    catalogue: Catalogue[JudgeSpec] = Catalogue("check", "clusterkit.checks", ["gpu", "no_such_module"], "x")
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        catalogue.load()
