"""Workloads across a real 3-node cluster (gloo on CPU) through DeepSpeed's own pdsh launcher.

The collectives sweep returns correct data on every rank in nccl-tests' layout, set against the
Ethernet link the nodes have; a node whose link is shaped to a fraction of the others' rate is named
by the slow-node search and the hostfile written without it launches; the ZeRO suite trains every
stage to the same losses and gets the weights back from every checkpoint; a frozen node costs the
deadline, not a hang (test_workload_faults.py).
"""

from __future__ import annotations

import json
import re

import pytest

from tests.cluster.clusterkit_run import bootstrapped_from_bare_homes
from tests.cluster.harness import Cluster
from tests.cluster.workloads_env import bench, bench_json, finding_ids, install_env_with_optimizer_ops

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def training_python(cluster: Cluster) -> str:
    return install_env_with_optimizer_ops(cluster)


@pytest.fixture(scope="module")
def bootstrapped(cluster: Cluster, training_python: str) -> Cluster:
    return bootstrapped_from_bare_homes(cluster, training_python)


def test_every_collective_is_correct_on_every_rank_and_set_against_the_link(bootstrapped: Cluster,
                                                                            training_python: str) -> None:
    head = bootstrapped.nodes[0]
    result, doc = bench_json(head, training_python, "collectives ~/hostfile --max-bytes 256K --step-factor 16 "
                                                    "--iters 3 --save /tmp/coll/sweep.json")
    assert result.rc == 0, result.stderr[-4000:]
    sweep = doc["result"]
    assert sweep["world_size"] == 3 and sweep["backend"] == "gloo"
    assert sorted(sweep["hosts"]) == ["node1", "node2", "node3"]
    assert list(sweep["ops"]) == ["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast"]
    for op, body in sweep["ops"].items():
        # 1K, 16K, 256K; chunked collectives round each rank's third down to 16 bytes (nccl-tests' sizing).
        chunked = op in ("all_gather", "reduce_scatter", "all_to_all")
        assert [row["size"] for row in body["rows"]] == ([1008, 16368, 262128] if chunked
                                                         else [1024, 16384, 262144]), op
        assert body["wrong"] == 0
        assert all((v or {}).get("wrong", 0) == 0 for row in body["rows"] for v in (row["out_of_place"],
                                                                                      row["in_place"]))
    # veth reports 10000 Mb/s: gloo's expectation is that link, 1.25 GB/s.
    assert doc["expected_busbw_gbs"] == pytest.approx(1.25)
    assert "Ethernet eth0 (node1, node2, node3): eth0 at 10000 Mb/s" in doc["expectation"]
    assert "collectives-wrong" not in finding_ids(doc)
    png = head.host_path("/tmp/coll/sweep.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    saved = json.loads(head.host_path("/tmp/coll/sweep.json").read_text())
    assert saved["result"]["ops"].keys() == sweep["ops"].keys()
    table = bench(head, training_python, "collectives ~/hostfile --ops all_reduce --sizes 64K --iters 2")
    assert table.rc == 0, table.stderr[-3000:]
    assert "#       size         count      type   redop    root     time   algbw   busbw  #wrong" in table.stdout
    assert "= expected 1.25 GB/s" in table.stdout


# issue 19, W8: at the default --size (64M) a pair with a node shaped to 40 Mbit/s ran into its deadline and
# the node was named broken; each pair now fits its message to its deadline, so the node is named slow
# with the busbw it measured.
def test_a_node_shaped_to_a_fraction_of_the_rate_is_named_and_the_cleaned_hostfile_launches(
        bootstrapped: Cluster, training_python: str) -> None:
    head, node2, _ = bootstrapped.nodes
    node2.shape("40mbit")
    try:
        # A pair with node2 fits its message to its deadline: 45 s instead of 90 only fits a smaller one
        # (64 MiB still does not fit at 40 Mbit/s), and each such pair takes ~25 s instead of ~40.
        result, doc = bench_json(head, training_python, "find-slow ~/hostfile --pair-deadline 45 "
                                                        "--write-hostfile ~/hostfile.clean")
    finally:
        node2.unshape()
    assert result.rc == 1, result.stderr[-4000:]
    search = doc["slow_node_search"]
    assert search["verdicts"] == {"node1": "good", "node2": "slow", "node3": "good"}, search["evidence"]
    assert search["excluded"] == ["node2"]
    with_node2 = [pair for rnd in search["rounds"] for pair in rnd if "node2" in pair["nodes"]]
    assert len(with_node2) == 2 and all(pair["busbw_gbs"] and pair["size_bytes"] for pair in with_node2)
    assert any(re.match(r"node2 is slow: with node1: [\d.e-]+ GB/s at [\d.]+ [KM]iB", line)
               for line in search["evidence"]), search["evidence"]
    assert [f["host"] for f in doc["findings"] if f["check"] == "node-slow"] == ["node2"]
    cleaned = head.read_file("/home/ckuser/hostfile.clean")
    assert cleaned.splitlines()[0] == "node1 slots=1"
    assert cleaned.splitlines()[1].startswith("# node2 slots=1  # left out by clusterkit bench find-slow: slow: ")
    assert cleaned.splitlines()[2] == "node3 slots=1"
    ran, doc = bench_json(head, training_python, "collectives ~/hostfile.clean --ops all_reduce --sizes 64K "
                                                 "--iters 2 --no-expect")
    assert ran.rc == 0, ran.stderr[-3000:]
    assert doc["result"]["world_size"] == 2 and sorted(doc["result"]["hosts"]) == ["node1", "node3"]


# issue 19, M3: a sweep the deadline cuts short (a node shaped to 40 Mbit/s) reports the sizes it measured,
# their busbw against the expectation, beside the deadline finding.
def test_a_sweep_cut_short_by_its_deadline_reports_what_it_measured(bootstrapped: Cluster,
                                                                     training_python: str) -> None:
    head, node2, _ = bootstrapped.nodes
    node2.shape("40mbit")
    try:
        # Two all_reduces per size (no warm-up, one timed, the check): the sweep reaches 64 MiB ~35 s after
        # the launch began, and 64 MiB alone takes over 36 s at 40 Mbit/s, so the deadline falls inside it.
        result, doc = bench_json(head, training_python, "collectives ~/hostfile --ops all_reduce --max-bytes 64M "
                                                        "--warmup 0 --iters 1 --deadline 55")
    finally:
        node2.unshape()
    assert result.rc == 1, result.stderr[-4000:]
    assert {"workload-deadline", "collectives-cut-short"} <= set(finding_ids(doc))
    sweep = doc["result"]
    assert sweep["complete"] is False and sweep["world_size"] == 3
    rows = sweep["ops"]["all_reduce"]["rows"]
    assert rows and [row["size"] for row in rows] == [1024 * 4 ** i for i in range(len(rows))]
    assert 64 << 20 in sweep["ops"]["all_reduce"]["not_measured"]
    measured = next(f["message"] for f in doc["findings"] if f["check"] == "collectives-cut-short")
    assert measured.startswith("measured before the deadline (")
    assert re.search(r"all_reduce: 1 KiB to [\d.]+ [KM]iB measured \(64 MiB and up not\), best busbw [\d.e-]+ GB/s "
                     r"at [\d.]+ [KM]iB = [\d.]+% of the expected 1.25 GB/s", measured), measured


# issue 19, W9: input no workload can run with is a usage error before anything is launched.
@pytest.mark.parametrize(("flags", "says"), [
    ("--iters 0", "--iters 0: must be at least 1"),
    ("--step-factor 1", "--step-factor 1: must be at least 2"),
    ("--min-bytes 16M --max-bytes 1K", "--min-bytes 16M --max-bytes 1K: the smallest message is larger"),
])
def test_bad_bench_input_is_refused_before_anything_is_launched(bootstrapped: Cluster, training_python: str,
                                                                flags: str, says: str) -> None:
    head = bootstrapped.nodes[0]
    head.run("rm -f /tmp/w9-log.json")
    refused = bench(head, training_python, f"collectives ~/hostfile {flags} --log /tmp/w9-log.json")
    assert refused.rc == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clusterkit: error: ") and says in lines[0], refused.stderr
    assert head.run("test -e /tmp/w9-log.json").rc != 0  # nothing was launched, so nothing was logged


# issue 19, M6: without --allow-cpu on nodes without a GPU, bench gpu says why nothing was measured, exit 1.
def test_bench_gpu_on_nodes_without_a_gpu_says_why_nothing_was_measured(bootstrapped: Cluster,
                                                                      training_python: str) -> None:
    head = bootstrapped.nodes[0]
    shown = bench(head, training_python, "gpu ~/hostfile --no-expect")
    assert shown.rc == 1, shown.stdout[-2000:] + shown.stderr[-3000:]
    assert "GPU health" not in shown.stdout  # no empty table
    assert "nothing measured: no node's training env sees a GPU" in shown.stderr
    assert "gpu-not-measured" in shown.stderr
    assert "no GPU measured on node[1-3]: no CUDA device visible to torch" in shown.stderr
    assert "--allow-cpu measures the CPU instead" in shown.stderr


def test_every_zero_stage_trains_to_the_same_losses_and_gets_its_weights_back(bootstrapped: Cluster,
                                                                              training_python: str) -> None:
    head = bootstrapped.nodes[0]
    result, doc = bench_json(head, training_python, "zero ~/hostfile --steps 2 --deadline 900", timeout=1200)
    assert result.rc == 0, result.stderr[-6000:]
    assert set(doc["builds"]) == {"node1", "node2", "node3"}  # the ops: once per node, before the stages
    for build in doc["builds"].values():
        assert {op["op"] for op in build["ops"]} == {"deepspeed_shm_comm", "fused_adam", "cpu_adam"}
        assert all(op["ok"] for op in build["ops"])
    suite = doc["result"]
    assert suite["world_size"] == 3 and suite["precision"] == "fp32"
    assert [s["stage"] for s in suite["stages"]] == ["0", "1", "2", "3", "3o"]
    assert suite["loss_agreement"]["agree"] is True
    assert all(diff <= 1e-4 for diff in suite["loss_agreement"]["stages"].values())
    for stage in suite["stages"]:
        assert "error" not in stage, stage
        assert stage["checkpoint"]["loaded"] and stage["checkpoint"]["max_abs_diff"] == 0.0
        if stage["stage"] != "0":
            assert stage["zero_to_fp32"]["max_abs_diff"] == 0.0
            assert stage["zero_to_fp32"]["shards_copied_to_rank0"] >= 2  # node-local checkpoints, gathered
    for stage in suite["stages"][3:]:
        assert stage["save_16bit"]["max_abs_diff"] == 0.0
    assert "zero-ops-built-during-run" not in finding_ids(doc)
    assert not finding_ids(doc)
    assert {"build_launch_s", "suite_launch_s", "startup_s", "train_s"} <= set(doc["timings"])
