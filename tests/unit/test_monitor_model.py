"""Samples decoded, node states judged, stragglers found, recordings read: all without Textual."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clusterkit.cluster.remote.stream import StreamState
from clusterkit.errors import InputError, UsageError
from clusterkit.monitor.model import SampleError, decode_sample, parse_sample_line
from clusterkit.monitor.sources import ReplaySource, load_recording
from clusterkit.monitor.state import ClusterState
from clusterkit.monitor.views import find_stragglers, node_status, rank_rows, summarize_node
from clusterkit.ui.tui.thresholds import Thresholds

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "tests" / "fixtures" / "monitor" / "synthetic-4x8gpu-job.jsonl"


def raw(seq: int, boot: str = "b1", t: float = 100.0, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "seq": seq, "boot": boot, "t": t, "cpu": 10.0, "ncpu": 4, "mem": [100, 40], "net": [5, 6],
            "gpus": [], "gpu_na": "NVML not found: no driver", "xid": [], "xid_na": None, "ranks": [], **extra}


def test_a_newer_sample_protocol_says_to_upgrade_the_head() -> None:
    with pytest.raises(SampleError, match="upgrade clusterkit on the head"):
        decode_sample(raw(0, v=2))


def test_a_malformed_sample_is_an_error_and_a_banner_line_is_not_a_sample() -> None:
    with pytest.raises(SampleError, match="malformed sample"):
        decode_sample({"v": 1, "seq": "x", "t": 1})
    assert parse_sample_line("Welcome to node1!") is None
    sample = parse_sample_line("@@ck-sample@@ " + json.dumps(raw(3)))
    assert sample is not None
    assert (sample.seq, sample.mem_available, sample.gpu_na) == (3, 40, "NVML not found: no driver")


def test_missed_sequence_numbers_and_agent_restarts_are_counted() -> None:
    state = ClusterState(["a"])
    for seq, boot in ((0, "b1"), (1, "b1"), (4, "b1"), (0, "b2")):
        state.apply_raw("a", raw(seq, boot), 100.0 + seq)
    view = state.nodes["a"]
    assert (view.missed, view.restarts) == (2, 1)


def test_an_unreadable_sample_sets_the_node_error_and_keeps_its_last_sample() -> None:
    state = ClusterState(["a"])
    state.apply_raw("a", raw(0), 100.0)
    state.apply_raw("a", raw(1, v=7), 101.0)
    assert state.nodes["a"].last is not None and state.nodes["a"].last.seq == 0
    assert "upgrade clusterkit on the head" in (state.nodes["a"].error or "")


def test_a_node_is_up_then_stale_when_silent_then_down_when_its_link_is_lost() -> None:
    state = ClusterState(["a"])
    view = state.nodes["a"]
    assert node_status(view, 100.0, 3.0) == ("waiting", None)
    state.apply_raw("a", raw(0), 100.0)
    assert node_status(view, 102.0, 3.0)[0] == "up"
    assert node_status(view, 104.0, 3.0) == ("stale", "no sample for 4s")
    state.apply_link(StreamState("a", "lost", 105.0, error="no output for 10s"))
    summary = summarize_node(view, 110.0, 3.0)
    assert (summary.status, summary.why, summary.age_s) == ("down", "no output for 10s", 10.0)


def test_stragglers_need_a_busy_job_and_enough_peers() -> None:
    source = ReplaySource(JOB, speed=0)
    source.seek(source.start_time + 5)  # before the sag
    t = Thresholds()
    assert find_stragglers(source.state, t.stale_after_s, t.straggler_ratio) == []
    source.seek(source.start_time + 19)
    found = find_stragglers(source.state, t.stale_after_s, t.straggler_ratio)
    assert {(s.host, s.gpu, s.metric) for s in found} == {
        ("gpu-node03", 5, "util%"), ("gpu-node03", 5, "sm MHz"), ("gpu-node03", 5, "power W")}
    assert find_stragglers(source.state, t.stale_after_s, t.straggler_ratio, min_peers=64) == []


def test_a_rank_gone_while_its_node_still_reports_has_exited() -> None:
    source = ReplaySource(JOB, speed=0)
    source.seek(source.end_time)
    rows = {r.rank: r for r in rank_rows(source.state, 3.0, 30.0)}
    assert rows[31].status == "exited" and rows[31].host == "gpu-node04"
    assert {r.status for k, r in rows.items() if k != 31} == {"running"}


def test_a_recording_with_a_bad_line_is_an_input_error_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"k":"header","v":1,"hosts":["a"],"interval":1}\n{"k":"sample","h":"a","rx":1,"s":{}}\nnot json\n')
    with pytest.raises(InputError, match=r"bad.jsonl:3: not a JSON line"):
        load_recording(bad)
    (tmp_path / "other.jsonl").write_text('{"hello": 1}\n')
    with pytest.raises(InputError, match=r"other.jsonl:1: a recording starts with a header line"):
        load_recording(tmp_path / "other.jsonl")


def test_a_recording_cut_mid_line_keeps_what_is_whole_and_says_where_it_was_cut(tmp_path: Path) -> None:
    """issue 19, C3: a recording cut mid-line (its session died) could not be replayed at all."""
    header = '{"k":"header","v":2,"hosts":["a"],"interval":1}\n'
    sample = '{"k":"sample","h":"a","rx":1,"s":{}}\n'
    cut = tmp_path / "cut.jsonl"
    for tail in ('{"k":"sample","h":"a","rx":2,"s":{"v":1,"se', '{"k":"sam\0\0\0\0'):  # NULs: a crash's tail
        cut.write_text(header + sample + tail)
        recording = load_recording(cut)
        assert [r["rx"] for r in recording.records] == [1]
        assert recording.cut == (f"{cut}:3: the recording ends in the middle of this line (its writer stopped "
                                 "mid-line): played up to line 2")
    cut.write_text(header + sample)
    assert load_recording(cut).cut is None  # cut between lines: nothing lost
    cut.write_text(header[:20])
    with pytest.raises(InputError, match=r"cut.jsonl: empty recording \(cut short in its header line\)"):
        load_recording(cut)


def test_a_version_1_recording_plays_and_progress_records_need_no_host(tmp_path: Path) -> None:
    assert load_recording(JOB).header["v"] == 1
    recording = tmp_path / "v2.jsonl"
    recording.write_text('{"k":"header","v":2,"hosts":["a"],"interval":1}\n'
                         '{"k":"progress","rx":5,"p":{"step":3,"loss":0.5}}\n')
    source = ReplaySource(recording, speed=0)
    source.seek(source.end_time)
    assert source.state.progress is not None and (source.state.progress.step, source.state.progress.loss) == (3, 0.5)


def test_thresholds_take_overrides_and_reject_unknown_names() -> None:
    t = Thresholds.for_interval(2.0).with_overrides(["temp_warn_c=80", "straggler_window=5"])
    assert (t.stale_after_s, t.lost_after_s, t.temp_warn_c, t.straggler_window) == (6.0, 16.0, 80.0, 5)
    with pytest.raises(UsageError, match="NAME one of stale_after_s"):
        t.with_overrides(["hot=1"])


def clusterkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clusterkit", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_once_json_on_a_replay_prints_nodes_ranks_stragglers_and_alerts() -> None:
    done = clusterkit("monitor", "--replay", str(JOB), "--once", "--json")
    assert done.returncode == 1, done.stderr  # a rank exited: a critical alert
    doc = json.loads(done.stdout)
    assert doc["schema"] == 1 and doc["live"] is False
    assert [n["host"] for n in doc["nodes"]] == ["gpu-node01", "gpu-node02", "gpu-node03", "gpu-node04"]
    assert {n["status"] for n in doc["nodes"]} == {"up"}
    assert len(doc["nodes"][0]["gpus"]) == 8 and len(doc["ranks"]) == 32
    assert doc["nodes"][1]["restarts"] == 1
    assert any(s["host"] == "gpu-node03" and s["gpu"] == 5 for s in doc["stragglers"])
    assert {"level": "crit", "host": "gpu-node04", "gpu": 7, "text": "rank 31 (pid 4007) exited"} in doc["alerts"]


def test_json_without_once_and_a_bad_alert_are_usage_errors() -> None:
    done = clusterkit("monitor", "--replay", str(JOB), "--json")
    assert done.returncode == 2 and "use it with --once" in done.stderr
    done = clusterkit("monitor", "--replay", str(JOB), "--once", "--alert", "temp=3")
    assert done.returncode == 2 and "--alert 'temp=3'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_rank_without_cpu_time_for_the_stall_period_is_marked_stalled() -> None:
    state = ClusterState(["a"])
    rank = {"pid": 7, "rank": 0, "local": 0, "world": 1, "job": "j", "cmd": "python", "state": "S", "rss": 1}
    for second in range(40):
        state.apply_raw("a", raw(second, ranks=[dict(rank, cpu=90.0 if second < 5 else 0.2)]), 100.0 + second)
        status = rank_rows(state, 3.0, 30.0)[0].status
        assert status == ("stalled" if second >= 34 else "running"), second  # idle since 4 s
