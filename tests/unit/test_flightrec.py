"""The flight-recorder analyzer names the first collective the ranks disagree on, from dumps in torch's
format: real ones recorded from a gloo job (tests/fixtures/flightrec/gloo-desync), and synthetic ones
built here in the same format for the cases a real job makes hard to plant."""

from __future__ import annotations

import base64
import pickle
from pathlib import Path
from typing import Any

import pytest

from clusterkit.cluster import CommandOutput
from clusterkit.core.flightrec import DumpError, RankTrace, first_disagreement, flightrec_env, load_dump
from clusterkit.stacks.flightrec import hook_source, prepare_recorder, read_flight_records
from tests.fake_nodes import FakeNodes, hosts_named

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "flightrec" / "gloo-desync"


def recorded(rank: int) -> RankTrace:
    return load_dump((RECORDED / f"rank_{rank}").read_bytes(), rank, f"node{rank}")


def synthetic_dump(calls: list[tuple[int, str, list[list[int]]]], ranks: str = "[0, 1, 2]",
                   group: str = "0") -> dict[str, Any]:
    """A dump as torch 2.13 writes it (version 2.10), with only the fields the analyzer reads filled in."""
    entries = [{"record_id": i, "pg_id": 0, "process_group": (group, "default_pg"), "collective_seq_id": seq,
                "p2p_seq_id": 0, "op_id": seq, "profiling_name": op, "input_sizes": sizes, "output_sizes": sizes,
                "input_dtypes": ["Float"], "output_dtypes": ["Float"], "state": "scheduled", "is_p2p": False,
                "retired": True, "timeout_ms": 1800000} for i, (seq, op, sizes) in enumerate(calls)]
    return {"version": "2.10", "pg_config": {group: {"name": group, "desc": "default_pg", "ranks": ranks}},
            "pg_status": {}, "entries": entries}


def trace(rank: int, calls: list[tuple[int, str, list[list[int]]]], ranks: str = "[0, 1, 2]") -> RankTrace:
    return load_dump(pickle.dumps(synthetic_dump(calls, ranks)), rank, f"node{rank}")


def reduces(*seqs: int, size: int = 1000) -> list[tuple[int, str, list[list[int]]]]:
    return [(s, "gloo:all_reduce", [[size]]) for s in seqs]


def test_a_recorded_gloo_job_names_the_all_reduce_rank_1_never_reached() -> None:
    found = first_disagreement([recorded(0), recorded(1), recorded(2)])
    assert found is not None
    assert (found.seq, found.expected.op, found.expected.input_sizes) == (5, "gloo:all_reduce", ((1000,),))
    assert found.missing == [1]
    assert "never by rank(s) 1 (on node1)" in found.describe()


def test_ranks_that_agree_on_every_collective_have_no_disagreement() -> None:
    assert first_disagreement([trace(r, reduces(1, 2, 3)) for r in range(3)]) is None


def test_a_rank_calling_another_op_at_the_same_number_is_a_disagreement_with_both_variants() -> None:
    odd = [*reduces(1, 2), (3, "gloo:broadcast", [[1000]])]
    found = first_disagreement([trace(0, reduces(1, 2, 3)), trace(1, odd), trace(2, reduces(1, 2, 3))])
    assert found is not None and found.seq == 3 and not found.missing
    assert [(c.op, ranks) for c, ranks in found.variants] == [("gloo:all_reduce", [0, 2]), ("gloo:broadcast", [1])]


def test_a_rank_reducing_a_tensor_of_another_shape_is_a_disagreement() -> None:
    found = first_disagreement([trace(0, reduces(1, 2)), trace(1, reduces(1) + reduces(2, size=999)),
                                trace(2, reduces(1, 2))])
    assert found is not None and found.seq == 2
    assert found.variants[1][0].input_sizes == ((999,),) and found.variants[1][1] == [1]


def test_a_member_rank_with_no_dump_is_named_unheard_not_judged() -> None:
    assert first_disagreement([trace(0, reduces(1, 2)), trace(1, reduces(1, 2))]) is None
    found = first_disagreement([trace(0, reduces(1, 2, 3)), trace(1, reduces(1, 2))])
    assert found is not None and (found.seq, found.missing, found.unheard) == (3, [1], [2])
    assert "rank(s) 2 gave no dump" in found.describe()


def test_a_rank_with_a_dump_but_no_collective_yet_never_reached_the_first() -> None:
    # the recorded gloo dumps key the default group's config by "" while entries call it "0"
    empty = load_dump(pickle.dumps({**pickle.loads((RECORDED / "rank_1").read_bytes()), "entries": []}), 1)
    found = first_disagreement([recorded(0), empty, recorded(2)])
    assert found is not None and (found.seq, found.missing) == (1, [1])


def test_the_world_the_dumps_list_names_a_rank_whose_node_gave_none() -> None:
    # node2 (rank 1) did not answer; rank 2's buffer was cut short, so rank 0 is alone in #5
    cut = load_dump(pickle.dumps({**pickle.loads((RECORDED / "rank_2").read_bytes()),
                                  "entries": pickle.loads((RECORDED / "rank_2").read_bytes())["entries"][:4]}), 2)
    found = first_disagreement([recorded(0), cut])
    assert found is not None and (found.seq, found.missing, found.unheard) == (5, [2], [1])


def test_collectives_a_rank_buffer_no_longer_holds_are_not_judged() -> None:
    # rank 1's ring buffer kept only 4..5: 1..3 are unknown there, not missing
    found = first_disagreement([trace(0, reduces(1, 2, 3, 4, 5, 6)), trace(1, reduces(4, 5)),
                                trace(2, reduces(1, 2, 3, 4, 5, 6))])
    assert found is not None and found.seq == 6 and found.missing == [1]


def test_a_dump_that_names_a_class_is_refused_unopened() -> None:
    with pytest.raises(DumpError, match="names no classes"):
        load_dump(pickle.dumps({"entries": [Path("/")]}), 0)
    with pytest.raises(DumpError, match="not a flight-recorder dump"):
        load_dump(b"hello", 0)


def test_the_environment_turns_the_recorder_on_under_new_and_old_names() -> None:
    env = flightrec_env("/tmp/x/flightrec", 500)
    assert env["TORCH_FR_BUFFER_SIZE"] == env["TORCH_NCCL_TRACE_BUFFER_SIZE"] == "500"
    assert env["TORCH_FR_DUMP_TEMP_FILE"] == env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] == "/tmp/x/flightrec/rank_"


def test_the_hook_carries_the_buffer_size_asked_for() -> None:
    assert 'BUFFER_SIZE = "64"' in hook_source(64)


def reply(files: dict[str, bytes], written: int = 200, asked: int = 100,
          directory: str = "/tmp/clusterkit-runs/j/flightrec") -> CommandOutput:
    lines = [f"@@clusterkit-fr dir {directory}"]
    for name, data in files.items():
        lines += [f"@@clusterkit-fr file {name} {written} {asked}", base64.b64encode(data).decode()]
    return CommandOutput(0, "\n".join(lines) + "\n")


def test_the_reader_gathers_every_node_and_names_the_node_that_did_not_answer() -> None:
    dumps = {r: (RECORDED / f"rank_{r}").read_bytes() for r in range(3)}
    answers = {"node1": reply({"rank_0": dumps[0], "rank_1": dumps[1]}), "node2": reply({"rank_2": dumps[2]})}
    nodes = FakeNodes(hosts_named("node1", "node2", "node3"), on_run=lambda host, _command: answers[host],
                      timeouts={"node3"})
    report = read_flight_records(nodes, "j", timeout_s=5, wait_s=0)
    assert [(t.rank, t.host) for t in report.traces] == [(0, "node1"), (1, "node1"), (2, "node2")]
    assert list(report.unreachable) == ["node3"]
    assert report.disagreement is not None and report.disagreement.missing == [1]
    assert [f.check_id for f in report.findings()] == ["collective-desync", "flightrec-unread"]
    assert "/tmp/clusterkit-runs/j/flightrec" in nodes.calls[0].detail


def test_without_a_job_id_a_node_whose_newest_job_is_another_is_read_for_the_job_the_others_ran() -> None:
    dumps = {r: (RECORDED / f"rank_{r}").read_bytes() for r in range(3)}

    def answer(host: str, command: str) -> CommandOutput:
        if host != "node3":
            rank = int(host[-1]) - 1
            return reply({f"rank_{rank}": dumps[rank]}, directory="/tmp/clusterkit-runs/j2/flightrec")
        if "clusterkit-runs/j2/flightrec" in command:  # asked for j2 by its id
            return reply({"rank_2": dumps[2]}, directory="/tmp/clusterkit-runs/j2/flightrec")
        return reply({"rank_2": b"a later job's dump"}, directory="/tmp/clusterkit-runs/j3/flightrec")

    nodes = FakeNodes(hosts_named("node1", "node2", "node3"), on_run=answer)
    report = read_flight_records(nodes, None, timeout_s=5, wait_s=0)
    assert report.other_jobs == {"node3": "j3"}
    assert set(report.directories.values()) == {"/tmp/clusterkit-runs/j2/flightrec"}
    assert [(t.rank, t.host) for t in report.traces] == [(0, "node1"), (1, "node2"), (2, "node3")]
    assert report.unreadable == {}
    assert "flightrec-other-job" in [f.check_id for f in report.findings()]


def test_a_rank_whose_dump_is_older_than_the_request_is_named_unresponsive() -> None:
    data = (RECORDED / "rank_0").read_bytes()
    nodes = FakeNodes(hosts_named("node1"), on_run=lambda h, c: reply({"rank_0": data}, written=50, asked=100))
    report = read_flight_records(nodes, None, timeout_s=5, wait_s=0)
    assert report.stale == {0: "node1"}
    assert any(f.check_id == "rank-unresponsive" and "rank 0 on node1" in f.message for f in report.findings())


def test_a_launch_puts_the_hook_after_the_launch_directory_and_names_nodes_it_could_not_reach() -> None:
    nodes = FakeNodes(hosts_named("node1", "node2"), timeouts={"node2"})
    setup = prepare_recorder(nodes, "/work/job", "/opt/lib", timeout_s=5, entries=64, job_id="j1")
    assert setup.directory == "/tmp/clusterkit-runs/j1/flightrec"
    assert setup.exports == {"PYTHONPATH": "/work/job:/tmp/clusterkit-runs/j1/flightrec:/opt/lib"}
    assert list(setup.failed) == ["node2"]
    written = nodes.calls[0].detail
    assert "/tmp/clusterkit-runs/j1/flightrec/sitecustomize.py" in written
    payload = written.split("printf %s ")[1].split(" ")[0]
    assert 'BUFFER_SIZE = "64"' in base64.b64decode(payload).decode()


@pytest.mark.parametrize("flags", [["--job", "a/b"], ["--dir", "relative/dir"], ["--timeout", "1e9"],
                                   ["--timeout", "nan"], ["--timeout", "0"]])
def test_a_job_id_that_is_a_path_a_relative_dir_or_a_timeout_out_of_bounds_is_a_usage_error(flags: list[str]) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "clusterkit", "flightrec", *flags], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
