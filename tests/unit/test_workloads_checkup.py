"""``doctor --workloads`` as a library call: the names it takes, and each workload launched in turn on the
nodes it is given, its findings returned (never printed)."""

from __future__ import annotations

import pytest

from clusterkit.cli import main
from clusterkit.errors import UsageError
from clusterkit.workloads.checkup import WORKLOADS, chosen_workloads, run_workloads
from tests.unit.test_workloads_session import context, runner


def test_the_workloads_are_named_by_a_comma_list_and_an_unknown_one_is_refused() -> None:
    assert chosen_workloads("collectives, gpu") == ["collectives", "gpu"]
    assert chosen_workloads(",".join(WORKLOADS)) == list(WORKLOADS)
    with pytest.raises(UsageError, match="--workloads: unknown nccl; choose from collectives, gpu, zero"):
        chosen_workloads("collectives,nccl")


def test_doctor_refuses_an_unknown_workload_before_it_checks_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--workloads", "nccl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--workloads: unknown nccl" in err


def test_each_workload_runs_in_turn_on_the_nodes_given_and_a_failed_run_is_a_finding() -> None:
    nodes = runner("import sys; print('launcher: no ranks started'); sys.exit(1)")
    announced: list[str] = []
    findings = run_workloads(context(nodes, cwd="/"), ["collectives", "gpu", "zero"], {}, announced.append)
    assert announced == ["collectives", "gpu", "zero"]
    scripts = [c.detail.script.rsplit("/", 1)[-1] for c in nodes.calls if c.kind == "launch_line"]
    assert scripts == ["collectives.py", "gpu_health.py", "zero_suite.py"]  # zero's ops build failed: no stages
    assert any(f.is_error for f in findings)
