"""What changed between two saved runs: the comparison names exactly the change, on exactly the node that
has it, grouped by host list at 64 nodes with the surprising changes first; an unchanged cluster
compared with itself reports nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from clusterkit.core.change_report import comparison_findings
from clusterkit.core.findings import Finding, Outcome
from clusterkit.core.run_diff import compare_runs, node_readings
from clusterkit.core.saved_run import Figure, SavedRun, figures_from_bench, run_from_json, run_to_json
from clusterkit.node.collect.gpu import ReplayWorld, collect_nvidia
from clusterkit.node.collect.node import CollectOptions
from clusterkit.node.facts import NodeFacts, Unavailable
from tests.factories import (
    dsenv_file,
    healthy_gpu_node,
    make_host,
    make_launcher,
    make_network,
    make_nic,
    with_section,
    xid,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
H100 = FIXTURES / "h100-x1" / "nvml-readings.json"
H100_AT_X8 = FIXTURES / "synthetic-h100-x1-pcie-x8" / "nvml-readings.json"
H100_SWAPPED = FIXTURES / "synthetic-h100-x1-swapped-gpu" / "nvml-readings.json"


def h100_node(name: str, recording: Path = H100) -> NodeFacts:
    """The real H100 machine's NVML recording, as a node named ``name`` (other sections healthy)."""
    nvidia = collect_nvidia(CollectOptions(nvml_timeout_s=2.0), ReplayWorld(str(recording)))
    return healthy_gpu_node(1, nvidia=nvidia, host=make_host(name))


def doctor_run(nodes: dict[str, NodeFacts]) -> SavedRun:
    return SavedRun("doctor", hosts=list(nodes), facts=dict(nodes))


def changes(before: SavedRun, after: SavedRun) -> list[Finding]:
    return [f for f in comparison_findings(compare_runs(before, after), "run good") if f.outcome is Outcome.FAIL]


def named(findings: list[Finding]) -> list[tuple[str, str, str]]:
    return [(f.check_id, f.host, f.where) for f in findings]


def three_h100s() -> dict[str, NodeFacts]:
    return {name: h100_node(name) for name in ("node1", "node2", "node3")}


# ------------------------------------------------------------------------------ nothing changed


def test_an_unchanged_cluster_compared_with_itself_reports_nothing() -> None:
    good = doctor_run(three_h100s())
    again = run_from_json(run_to_json(doctor_run(three_h100s())))
    findings = comparison_findings(compare_runs(good, again), "run good")
    assert [(f.check_id, f.outcome) for f in findings] == [("nothing-changed", Outcome.PASS)]
    assert "3 node(s)" in findings[0].message


def test_a_saved_run_reads_back_as_it_was_written() -> None:
    run = SavedRun("bench", hosts=["node1"], facts={"node1": h100_node("node1")},
                   figures=[Figure("node1", "GPU 0 memory bandwidth", 2900.0, "GB/s"),
                            Figure("node1", "GPU 1 memory bandwidth", 0.0, "GB/s", "rank exited 1")], workload="gpu")
    back = run_from_json(run_to_json(run))
    assert back == run
    assert run_to_json(back)["schema"] == "clusterkit.run/v1"


# ------------------------------------------------------------------------- hardware, one node


def test_a_gpu_retrained_at_x8_is_named_on_its_node() -> None:
    good = doctor_run(three_h100s())
    now = doctor_run({**three_h100s(), "node2": h100_node("node2", H100_AT_X8)})
    (finding,) = changes(good, now)
    assert named([finding]) == [("changed-hardware", "node2", "GPU 0 PCIe width")]
    assert finding.message == "GPU 0 PCIe width changed: x16 -> x8; node[1,3]: unchanged"


def test_a_swapped_gpu_is_named_by_its_new_uuid() -> None:
    good = doctor_run(three_h100s())
    now = doctor_run({**three_h100s(), "node3": h100_node("node3", H100_SWAPPED)})
    (finding,) = changes(good, now)
    assert named([finding]) == [("changed-hardware", "node3", "GPU 0 UUID")]
    assert "GPU-944ba4d1-ba97-eb4c-5067-8840a9b23fdb -> GPU-0b7c3e55-9d12-4a6f-8e3b-5c1d2f9a7e41" in finding.message


def test_an_xid_added_is_a_counter_that_grew() -> None:
    good = doctor_run(three_h100s())
    node1 = h100_node("node1")
    assert not isinstance(node1.nvidia, Unavailable)
    now = doctor_run({**three_h100s(), "node1": dataclasses.replace(
        node1, nvidia=dataclasses.replace(node1.nvidia, xid_events=[xid(79, "00000000:00:06.0")]))})
    (finding,) = changes(good, now)
    assert named([finding]) == [("counter-grew", "node1", "XID 79 events")]
    assert finding.message.startswith("XID 79 events grew: 0 -> 1")


def test_counters_that_fell_are_no_news() -> None:
    """The recording has 3 uncorrectable remapped rows; a node reporting fewer (a reset) is not a change."""
    before = h100_node("node1")
    assert "GPU 0 remapped rows uncorrectable" in node_readings(before)
    nvidia = before.nvidia
    assert not isinstance(nvidia, Unavailable) and isinstance(nvidia.gpus, list)
    gpu = dataclasses.replace(nvidia.gpus[0], remapped_rows=dataclasses.replace(nvidia.gpus[0].remapped_rows,
                                                                                uncorrectable=0))
    after = dataclasses.replace(before, nvidia=dataclasses.replace(nvidia, gpus=[gpu]))
    assert changes(doctor_run({"node1": before}), doctor_run({"node1": after})) == []
    assert [f.where for f in changes(doctor_run({"node1": after}), doctor_run({"node1": before}))] == [
        "GPU 0 remapped rows uncorrectable"]


# ------------------------------------------------------------------------------- software


def test_a_deepspeed_env_line_edited_on_one_node_is_named_with_both_values() -> None:
    good = doctor_run(three_h100s())
    edited = with_section(h100_node("node2"), "launcher", deepspeed_env_files=[
        dsenv_file(["NCCL_SOCKET_IFNAME=eth1", "NCCL_IB_DISABLE=0"])])
    original = make_launcher().deepspeed_env_files
    good.facts = {**good.facts, "node2": with_section(h100_node("node2"), "launcher", deepspeed_env_files=[
        dsenv_file(["NCCL_SOCKET_IFNAME=eth0", "NCCL_IB_DISABLE=0"]), *original[1:]])}
    now = doctor_run({**three_h100s(), "node2": edited})
    found = changes(good, now)
    assert ("changed-software", "node2", "/root/.deepspeed_env NCCL_SOCKET_IFNAME") in named(found)
    line = next(f for f in found if f.where == "/root/.deepspeed_env NCCL_SOCKET_IFNAME")
    assert line.message.startswith("/root/.deepspeed_env NCCL_SOCKET_IFNAME changed: eth0 -> eth1")


def with_nics(node: NodeFacts, *nics: tuple[str, str, str]) -> NodeFacts:
    """``node`` with lo, eth0 and each (name, kind, state) interface given."""
    extra = [make_nic(name, kind=kind, operstate=state) for name, kind, state in nics]
    return with_section(node, "network", nics=[*make_network().nics, *extra])


def test_a_containers_veth_that_came_or_went_is_no_change_but_one_that_went_down_is() -> None:
    good = doctor_run({"node1": with_nics(h100_node("node1"), ("veth3f2a", "virtual", "up")),
                       "node2": with_nics(h100_node("node2"), ("ckv0", "virtual", "up"))})
    now = doctor_run({"node1": with_nics(h100_node("node1"), ("veth9c01", "virtual", "up"), ("br0", "bridge", "up")),
                      "node2": with_nics(h100_node("node2"), ("ckv0", "virtual", "down"))})
    assert [(host, where) for _, host, where in named(changes(good, now))] == [("node2", "NIC ckv0 state")]


def test_a_physical_nic_that_vanished_is_a_change() -> None:
    good = doctor_run({"node1": with_nics(h100_node("node1"), ("eth1", "physical", "up"))})
    now = doctor_run({"node1": with_nics(h100_node("node1"))})
    assert ("changed-hardware", "node1", "NIC eth1 state") in named(changes(good, now))


def test_a_package_moved_on_one_node_is_named_there_only() -> None:
    good = doctor_run(three_h100s())
    now = doctor_run({**three_h100s(), "node3": with_section(h100_node("node3"), "python_env",
                                                             deepspeed_version="0.16.0", env_hash="sha256:other")})
    found = changes(good, now)
    assert sorted(named(found)) == [("changed-software", "node3", "DeepSpeed"),
                                    ("changed-software", "node3", "env package hash")]
    assert all(f.severity.value == "warning" for f in found)  # on some nodes only: the cluster is split


# ------------------------------------------------------------------------------ 64 nodes


def test_at_64_nodes_identical_changes_are_grouped_and_the_partial_one_comes_first() -> None:
    names = [f"node{i:02d}" for i in range(1, 65)]
    good = doctor_run({n: h100_node(n) for n in names})
    nodes = {}
    for n in names:
        node = h100_node(n)
        node = dataclasses.replace(node, host=dataclasses.replace(node.host, kernel="6.8.0-50"))  # every node
        if n <= "node62":
            assert not isinstance(node.nvidia, Unavailable)
            node = dataclasses.replace(node, nvidia=dataclasses.replace(node.nvidia, driver_version="560.28"))
        nodes[n] = node
    found = changes(good, doctor_run(nodes))
    assert [(f.host, f.message) for f in found] == [
        ("node[01-62]", "driver changed: 580.159.04 -> 560.28; node[63-64]: unchanged"),
        ("node[01-64]", f"kernel changed: {make_host().kernel} -> 6.8.0-50"),
    ]
    assert [f.severity.value for f in found] == ["warning", "info"]


def test_a_driver_on_three_versions_is_one_finding_per_version_biggest_group_first() -> None:
    names = [f"gpu{i}" for i in range(1, 9)]
    good = doctor_run({n: h100_node(n) for n in names})
    versions = {"gpu1": "560.28", "gpu2": "560.28", "gpu3": "560.28", "gpu4": "560.28", "gpu5": "555.42"}
    nodes = {}
    for n in names:
        node = h100_node(n)
        if n in versions:
            assert not isinstance(node.nvidia, Unavailable)
            node = dataclasses.replace(node, nvidia=dataclasses.replace(node.nvidia, driver_version=versions[n]))
        nodes[n] = node
    assert [(f.host, f.message) for f in changes(good, doctor_run(nodes))] == [
        ("gpu[1-4]", "driver changed: 580.159.04 -> 560.28; gpu[6-8]: unchanged"),
        ("gpu5", "driver changed: 580.159.04 -> 555.42; gpu[6-8]: unchanged"),
    ]


# ------------------------------------------------------------------------------ figures


def bench_run(figures: list[Figure], workload: str = "find-slow") -> SavedRun:
    return SavedRun("bench", hosts=["node1", "node2", "node3"], figures=figures, workload=workload)


def test_a_figure_within_the_noise_is_no_change_and_one_past_it_is() -> None:
    good = bench_run([Figure("node[1-3]", "all_reduce busbw at 1M", 1.0, "GB/s")])
    assert changes(good, bench_run([Figure("node[1-3]", "all_reduce busbw at 1M", 0.6, "GB/s")])) == []
    (fell,) = changes(good, bench_run([Figure("node[1-3]", "all_reduce busbw at 1M", 0.2, "GB/s")]))
    assert (fell.check_id, fell.host) == ("figure-fell", "node[1-3]")
    assert fell.message == "all_reduce busbw at 1M fell: 1 GB/s -> 0.2 GB/s (80% lower)"


def test_a_pair_measured_before_and_tried_and_failed_now_is_not_measured_never_unchanged() -> None:
    metric = "all_reduce busbw of the pair"
    good = bench_run([Figure("node[1-2]", metric, 1.1, "GB/s"), Figure("node[1,3]", metric, 1.2, "GB/s")])
    now = bench_run([Figure("node[1-2]", metric, 0.0, "GB/s", "timed out"), Figure("node[1,3]", metric, 1.1, "GB/s")])
    (gone,) = changes(good, now)
    assert (gone.check_id, gone.host) == ("figure-fell", "node2")
    assert gone.message.startswith(f"{metric} fell: 1.1 GB/s -> not measured (timed out) on node[1-2]; node2 is")
    # a pair this run did not try (a node left out, another order, no second round) is no change
    assert changes(good, bench_run([Figure("node[1,3]", metric, 1.1, "GB/s")])) == []


def test_pairs_that_fell_and_pairs_not_measured_are_counted_apart() -> None:
    metric = "all_reduce busbw of the pair"
    subjects = ["node[1-2]", "node[3-4]", "node[5-6]"]
    good = bench_run([Figure(s, metric, 1.0, "GB/s") for s in subjects])
    now = bench_run([Figure("node[1-2]", metric, 0.1, "GB/s"), Figure("node[3-4]", metric, 0.0, "GB/s", "exit 1"),
                     Figure("node[5-6]", metric, 1.0, "GB/s")])
    (fell,) = changes(good, now)
    assert "fell: 90%-90% lower on 1, not measured on 1 of 3" in fell.message


def test_runs_with_no_figure_in_common_say_nothing_was_compared_whatever_else_was() -> None:
    good = bench_run([Figure("node[1-2]", "all_reduce busbw of the pair", 1.1, "GB/s")])
    findings = comparison_findings(compare_runs(good, bench_run([])), "run good")
    assert [(f.check_id, f.outcome) for f in findings] == [("nothing-compared", Outcome.FAIL)]
    assert "no node's facts and no figure in both runs (figures: 1 saved, 0 in this run)" in findings[0].message
    # collectives keep the nodes' facts: those compared, the figures at other sizes are still said not to be
    at_64m = SavedRun("bench", hosts=list(three_h100s()), facts=dict(three_h100s()), workload="collectives",
                      figures=[Figure("node[1-3]", "all_reduce busbw at 64M", 1.0, "GB/s")])
    at_1m = SavedRun("bench", hosts=list(three_h100s()), facts=dict(three_h100s()), workload="collectives",
                     figures=[Figure("node[1-3]", "all_reduce busbw at 1M", 1.0, "GB/s")])
    (only,) = comparison_findings(compare_runs(at_64m, at_1m), "run good")
    assert only.check_id == "nothing-compared" and ": no figure in both runs" in only.message
    # a host added does not hide it
    more = SavedRun("bench", hosts=["node1", "node2", "node3", "node4"], workload="find-slow")
    assert {f.check_id for f in comparison_findings(compare_runs(good, more), "run good")} == {
        "nothing-compared", "hosts-changed"}


def test_the_node_in_every_pair_that_fell_and_none_that_held_is_named() -> None:
    metric = "all_reduce busbw of the pair"
    good = bench_run([Figure("node[1-2]", metric, 1.1, "GB/s"), Figure("node[1,3]", metric, 1.2, "GB/s")])
    now = bench_run([Figure("node[1-2]", metric, 0.004, "GB/s"), Figure("node[1,3]", metric, 1.1, "GB/s")])
    (fell,) = changes(good, now)
    assert (fell.check_id, fell.host) == ("figure-fell", "node2")
    assert "node2 is in every one that fell and in none that held" in fell.message


def test_bench_documents_give_their_figures() -> None:
    collectives = {"hosts": ["node1", "node2"], "result": {"hosts": ["node1", "node2"], "ops": {"all_reduce": {"rows": [
        {"size": 1048576, "out_of_place": {"busbw": 1.1}, "in_place": {"busbw": 1.3}},
        {"size": 1024, "out_of_place": None, "in_place": None}]}}}}
    assert figures_from_bench("collectives", collectives) == [
        Figure("node[1-2]", "all_reduce busbw at 1M", 1.3, "GB/s")]
    search = {"slow_node_search": {"rounds": [[{"nodes": ["node1", "node2"], "busbw_gbs": 0.9},
                                               {"nodes": ["node3", "node4"], "busbw_gbs": None,
                                                "detail": "timed out after 60 s"}]]}}
    assert figures_from_bench("find-slow", search) == [
        Figure("node[1-2]", "all_reduce busbw of the pair", 0.9, "GB/s"),
        Figure("node[3-4]", "all_reduce busbw of the pair", 0.0, "GB/s", "timed out after 60 s")]
    gpu = {"readings": [{"host": "node1", "rank": 0, "device": {"index": 0}, "values": {"memory_gbs": 2900.0}}]}
    assert figures_from_bench("gpu", gpu) == [Figure("node1", "GPU 0 memory bandwidth", 2900.0, "GB/s")]


def test_a_node_without_facts_in_one_run_is_said_not_compared() -> None:
    good = doctor_run(three_h100s())
    now = doctor_run({**three_h100s(), "node3": Unavailable("ssh: timed out")})  # type: ignore[dict-item]
    found = changes(good, now)
    assert [(f.check_id, f.host, f.message) for f in found] == [
        ("hosts-changed", "node3", "not compared: no facts in the new run (ssh: timed out)")]


def test_a_saved_host_whose_facts_do_not_decode_is_not_compared_and_the_others_still_are() -> None:
    doc = run_to_json(doctor_run(three_h100s()))
    doc["facts"]["node2"]["host"] = "a shape this clusterkit never wrote"
    good = run_from_json(doc)
    now = doctor_run({**three_h100s(), "node3": with_section(h100_node("node3"), "host", kernel="6.9.0")})
    found = [(f.check_id, f.host) for f in changes(good, now)]
    assert ("hosts-changed", "node2") in found and ("changed-software", "node3") in found, found


def test_a_doctor_json_document_with_its_facts_reads_as_a_doctor_run() -> None:
    from clusterkit.core.findings_report import DoctorReport, report_to_json

    nodes = three_h100s()
    doc = report_to_json(DoctorReport(hosts=list(nodes), facts=nodes, findings=[]))
    run = run_from_json(doc)
    assert (run.kind, run.hosts) == ("doctor", ["node1", "node2", "node3"])
    assert changes(run, doctor_run(three_h100s())) == []
