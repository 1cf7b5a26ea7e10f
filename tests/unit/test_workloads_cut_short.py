"""A collectives run that ends before its sweep does still reports what it measured; a pair on a slow
link gets a figure, not a timeout.

The runs here are outcomes built from the lines the collectives script prints (``@@ck-result@@``
documents in its own format: the header first, each row as it is measured, the report at the end).
"""

from __future__ import annotations

import json
from typing import Any

from clusterkit.workloads.collectives import cut_short, pair_result, pair_sizes, partial_result
from clusterkit.workloads.diagnose import diagnose
from clusterkit.workloads.expect import Expectation, Hop
from clusterkit.workloads.run import LogLine, RunOutcome
from clusterkit.workloads.scripts.workload_io import DONE, PROGRESS, RESULT
from clusterkit.workloads.session import WorkloadRun
from clusterkit.workloads.slownode import PairResult, find_slow

HOSTS = ["node1", "node2"]
LAYOUT = {0: "node1", 1: "node2"}
MiB = 1 << 20
EXPECTED = Expectation(1.25, [Hop("Ethernet eth0", 1.25, "eth0 at 10000 Mb/s / 8000 = 1.25 GB/s", "node1")])


def row(size: int, busbw: float, *, requested: int | None = None) -> dict[str, Any]:
    seconds = size / 1e9 / busbw
    body = {"time_us": seconds * 1e6, "algbw": busbw, "busbw": busbw, "wrong": 0, "max_rank_time_us": seconds * 1e6}
    found: dict[str, Any] = {"size": size, "count": size // 4, "type": "float", "redop": "sum", "root": -1,
                             "op": "all_reduce", "out_of_place": None, "in_place": body}
    if requested:
        found["requested_bytes"] = requested
    return found


def result_line(kind: str, payload: dict[str, Any]) -> str:
    return f"{RESULT} " + json.dumps({"kind": kind, "rank": 0, "host": "node1", **payload})


HEADER = {"schema": "clusterkit.collectives/v1", "world_size": 2, "backend": "gloo", "device": "cpu",
          "dtype": "float32", "iters": 5, "warmup": 1, "hosts": HOSTS}


def run_of(texts: list[tuple[int, str]], *, timed_out: bool = False, returncode: int = 0) -> WorkloadRun:
    lines = [LogLine(float(i), "out", LAYOUT[rank], rank, text, text) for i, (rank, text) in enumerate(texts)]
    outcome = RunOutcome(["deepspeed"], "abc123abc123", -9 if timed_out else returncode, 90.0, lines,
                         timed_out=timed_out)
    return WorkloadRun("all_reduce node1 + node2", HOSTS, LAYOUT, outcome, diagnose(outcome, LAYOUT, "collectives"))


def sweep_lines(sizes: list[int], rows: list[tuple[int, dict[str, Any]]], *, ops: tuple[str, ...] = ("all_reduce",),
                finished: bool) -> list[tuple[int, str]]:
    texts = [(0, f"{PROGRESS} starting"), (1, f"{PROGRESS} starting"),
             (0, result_line("collectives_header", {**HEADER, "planned_ops": list(ops), "sizes": sizes}))]
    texts += [(0, result_line("collectives_row", {"op": "all_reduce", "size": wanted, "row": r})) for wanted, r in rows]
    if finished:
        report = {**HEADER, "ops": {"all_reduce": {"rows": [r for _, r in rows], "avg_busbw": 0.0, "wrong": 0}}}
        texts += [(0, result_line("collectives", report)), (0, DONE), (1, DONE)]
    return texts


# issue 19, M3: the sizes measured before the deadline are reported beside the deadline finding.
def test_a_sweep_cut_by_the_deadline_reports_each_size_measured_against_the_expectation() -> None:
    sizes = [1024, 64 * 1024, 4 * MiB, 64 * MiB]
    run = run_of(sweep_lines(sizes, [(1024, row(1024, 0.0002)), (64 * 1024, row(64 * 1024, 0.003)),
                                     (4 * MiB, row(4 * MiB, 0.0049))], ops=("all_reduce", "all_gather"),
                             finished=False), timed_out=True)
    result = partial_result(run.outcome)
    assert result is not None and result["complete"] is False
    assert [r["size"] for r in result["ops"]["all_reduce"]["rows"]] == [1024, 64 * 1024, 4 * MiB]
    assert result["ops"]["all_reduce"]["not_measured"] == [64 * MiB]
    assert result["ops"]["all_gather"] == {"rows": [], "avg_busbw": 0.0, "wrong": 0, "not_measured": sizes}
    findings = cut_short(result, EXPECTED, run.outcome)
    assert [f.check_id for f in findings] == ["collectives-cut-short"]
    message = findings[0].message
    assert message.startswith("measured before the deadline (90s): all_reduce: 1 KiB to 4 MiB measured "
                              "(64 MiB and up not), best busbw 0.0049 GB/s at 4 MiB = 0.39% of the expected 1.25 GB/s")
    assert message.endswith("all_gather: no size measured")
    assert "workload-deadline" in [f.check_id for f in run.diagnosis.findings]


def test_a_run_that_never_started_measuring_has_no_partial_result() -> None:
    run = run_of([(0, f"{PROGRESS} starting")], timed_out=True)
    assert partial_result(run.outcome) is None


# issue 19, W8: a slow pair is measured at a smaller message, so it gets a figure and is named slow.
def test_a_pair_that_shrank_its_message_to_fit_the_deadline_gets_a_figure() -> None:
    rows = [(256 * 1024, row(256 * 1024, 0.004)), (64 * MiB, row(8 * MiB, 0.0049, requested=64 * MiB))]
    run = run_of(sweep_lines(pair_sizes(64 * MiB), rows, finished=True))
    pair = pair_result(("node1", "node2"), run, 40.0)
    assert pair.busbw == 0.0049 and pair.size == 8 * MiB
    assert pair.detail == "64 MiB would not finish within the pair's deadline at this rate; measured 8 MiB"
    assert pair.measured == "0.0049 GB/s at 8 MiB"


def test_a_pair_cut_by_its_deadline_after_the_probe_is_measured_not_broken() -> None:
    run = run_of(sweep_lines(pair_sizes(64 * MiB), [(256 * 1024, row(256 * 1024, 0.004))], finished=False),
                 timed_out=True)
    pair = pair_result(("node1", "node2"), run, 120.0)
    assert pair.busbw == 0.004 and not pair.failed
    assert "the deadline ended the run after 256 KiB" in pair.detail


def test_a_pair_that_measured_nothing_is_broken_with_the_cause() -> None:
    run = run_of([(0, f"{PROGRESS} starting")], timed_out=True)
    pair = pair_result(("node1", "node2"), run, 120.0)
    assert pair.failed
    assert "did not finish within 90s" in pair.detail


def test_a_pair_whose_ranks_all_finished_but_whose_launcher_hung_keeps_its_figure() -> None:
    rows = [(256 * 1024, row(256 * 1024, 0.3)), (64 * MiB, row(64 * MiB, 0.9))]
    run = run_of(sweep_lines(pair_sizes(64 * MiB), rows, finished=True), timed_out=True)
    assert pair_result(("node1", "node2"), run, 120.0).busbw == 0.9
    deadline = next(f for f in run.diagnosis.findings if f.check_id == "workload-deadline")
    assert "every rank had reported done" in deadline.message and "ranks not done: none" not in deadline.message


def test_a_pair_measures_a_small_probe_first() -> None:
    assert pair_sizes(64 * MiB) == [256 * 1024, 64 * MiB]
    assert pair_sizes(64 * 1024) == [64 * 1024]


def test_the_slow_node_is_named_with_its_figure_and_message_size() -> None:
    rates = {"node1": (0.9, 64 * MiB), "node2": (0.0049, 8 * MiB), "node3": (0.9, 64 * MiB)}

    def measure(groups: list[tuple[str, ...]]) -> list[PairResult]:
        slowest = [min((rates[n] for n in g), key=lambda r: r[0]) for g in groups]
        return [PairResult(g, busbw, "", 1.0, size) for g, (busbw, size) in zip(groups, slowest, strict=True)]

    search = find_slow(["node1", "node2", "node3"], measure)
    assert search.verdicts == {"node1": "good", "node2": "slow", "node3": "good"}
    assert search.why("node2").startswith("with node1: 0.0049 GB/s at 8 MiB; with node3: 0.0049 GB/s at 8 MiB")
    assert "round 1: node1 + node2: 0.0049 GB/s at 8 MiB (0.54% of the best pair) -> slow" in search.evidence()
