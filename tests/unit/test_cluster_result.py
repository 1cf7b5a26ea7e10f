"""The one group result every call on Nodes returns, and the stand-in Nodes unit tests use."""

from __future__ import annotations

from clusterkit.cluster import CommandOutput, GroupResult, HostResult
from tests.fake_nodes import FakeNodes, hosts_named


def test_a_group_result_keeps_the_order_asked_and_splits_successes_from_failures() -> None:
    group = GroupResult.of([HostResult("b", value=2), HostResult("a", error="refused", fix="ssh a"),
                            HostResult("c", value=None)])
    assert list(group) == ["b", "a", "c"]
    assert group.succeeded == {"b": 2}
    assert set(group.failed) == {"a", "c"}


def test_then_judges_each_success_and_a_judge_that_raises_fails_only_that_host() -> None:
    def judge(host: str, value: int) -> int:
        if value < 0:
            raise ValueError(f"{host} said {value}")
        return value * 10

    group = GroupResult.of([HostResult("a", value=1), HostResult("b", value=-1), HostResult("c", error="down")])
    judged = group.then(judge)
    assert judged.succeeded == {"a": 10}
    assert judged["b"].error == "b said -1"
    assert judged["c"].error == "down"


def test_a_command_output_says_its_tail_from_stderr_first() -> None:
    assert CommandOutput(1, stdout="x\n", stderr="a\nb\nc\nd\n").tail() == "b | c | d"
    assert CommandOutput(0, stdout="only\n").tail() == "only"
    assert CommandOutput(0).tail() == "no output"


def test_the_fake_scripts_each_host_and_records_each_call() -> None:
    def on_run(host: str, command: str) -> CommandOutput:
        if host == "n2":
            raise RuntimeError("connection refused")
        return CommandOutput(0, stdout=host)

    nodes = FakeNodes(hosts_named("n1", "n2", "n3"), on_run=on_run, timeouts={"n3"})
    result = nodes.run("hostname", 5.0)
    assert result.succeeded["n1"].stdout == "n1"
    assert result["n2"].error == "connection refused"
    assert "no answer" in (result["n3"].error or "")
    assert [c.kind for c in nodes.calls] == ["run"]
