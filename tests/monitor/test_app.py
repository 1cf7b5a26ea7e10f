"""The monitor app driven headless with Pilot over the synthetic job recording (paused, stepped)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from rich.text import Text
from textual.widgets import Input, Static

from clusterkit.monitor.progress import Progress
from clusterkit.monitor.sources import ReplaySource
from clusterkit.ui.tui.app import HelpScreen, JobScreen, MonitorApp, NodeScreen, OverviewScreen
from clusterkit.ui.tui.grid import Grid
from clusterkit.ui.tui.thresholds import Thresholds
from tests.monitor.conftest import FIXTURES, JOB, SIZE, replay_app

CLUSTER = FIXTURES / "cluster-3node-gloo.jsonl"


def table_rows(app: MonitorApp, selector: str) -> list[list[str]]:
    grid = app.screen.query_one(selector, Grid)
    return [grid.row(key) for key in grid.keys]


def column(app: MonitorApp, selector: str, index: int = 0) -> list[str]:
    return [row[index] for row in table_rows(app, selector)]


def text_of(app: MonitorApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


@pytest.mark.asyncio
async def test_the_overview_has_a_row_per_node_in_hostfile_order() -> None:
    app, _ = replay_app(5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, OverviewScreen)
        rows = table_rows(app, "#nodes")
        assert [r[0] for r in rows] == ["gpu-node01", "gpu-node02", "gpu-node03", "gpu-node04"]
        assert all(r[1] == "up" and r[2] == "8/8" and r[13] == "8" for r in rows)
        assert "4/4 nodes up" in text_of(app, "#summary")


@pytest.mark.asyncio
async def test_a_node_whose_agent_dies_shows_down_with_its_age_then_comes_back() -> None:
    app, source = replay_app(19)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert table_rows(app, "#nodes")[1][1] == "up"
        await pilot.press(*"nnnn")  # 23 s: the agent died at 20 s, the head is reconnecting
        node2 = table_rows(app, "#nodes")[1]
        assert node2[1] == "DOWN"
        assert node2[14] == "3s"  # the age of its last sample, still counting
        assert "3/4 nodes up" in text_of(app, "#summary")
        assert "gpu-node02: down: the remote command exited 137: Killed (last sample 3s ago)" in text_of(app, "#alerts")
        await pilot.press(*"nnnnn")  # 28 s: reconnected, a new agent sends again
        node2 = table_rows(app, "#nodes")[1]
        assert (node2[1], node2[14]) == ("up", "0s")
        assert source.state.nodes["gpu-node02"].restarts == 1


@pytest.mark.asyncio
async def test_s_cycles_the_sort_and_puts_the_down_node_first_by_status() -> None:
    app, _ = replay_app(23)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")  # hostfile -> status
        assert "sort: status" in text_of(app, "#summary")
        assert column(app, "#nodes")[0] == "gpu-node02"
        await pilot.press("s")  # -> util: the lowest average first
        assert column(app, "#nodes")[0].startswith("gpu-node03")
        await pilot.press("r")
        assert column(app, "#nodes")[-1].startswith("gpu-node03")
        assert "(reversed)" in text_of(app, "#summary")


@pytest.mark.asyncio
async def test_slash_filters_the_nodes_and_escape_clears_the_filter() -> None:
    app, _ = replay_app(5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash")
        assert app.screen.query_one("#filter", Input).has_focus
        await pilot.press(*"node0", "4", "enter")
        assert column(app, "#nodes") == ["gpu-node04"]
        assert "filter: 'node04'" in text_of(app, "#summary")
        await pilot.press("escape")
        assert len(column(app, "#nodes")) == 4


@pytest.mark.asyncio
async def test_f_shows_only_nodes_with_faults() -> None:
    app, _ = replay_app(23)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        # node01: GPU2 at its power cap; node02: down; node03: a straggler. node04 is healthy.
        assert [name.rstrip(" ⚑") for name in column(app, "#nodes")] == ["gpu-node01", "gpu-node02", "gpu-node03"]
        await pilot.press("f")
        assert len(column(app, "#nodes")) == 4


@pytest.mark.asyncio
async def test_enter_drills_into_a_node_with_its_gpus_history_and_ranks() -> None:
    app, _ = replay_app(30)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("down", "down", "enter")
        await pilot.pause()
        assert isinstance(app.screen, NodeScreen) and app.screen.host == "gpu-node03"
        gpus = table_rows(app, "#gpus")
        assert len(gpus) == 8
        assert gpus[5][0] == "5 ⚑" and gpus[5][6] == "1110/1980"
        history = text_of(app, "#history")
        assert history.count("util") == 8 and "GPU5 util" in history
        assert column(app, "#node-ranks") == [str(r) for r in range(16, 24)]
        await pilot.press("escape")
        assert isinstance(app.screen, OverviewScreen)


@pytest.mark.asyncio
async def test_a_straggler_gpu_is_flagged_on_its_node_and_in_the_job_view() -> None:
    app, _ = replay_app(6)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "0 stragglers" in text_of(app, "#summary")
        assert column(app, "#nodes")[2] == "gpu-node03"
        await pilot.press(*"n" * 12)  # GPU5 of node03 sagged at 8 s: now its whole 10-sample window has
        assert column(app, "#nodes")[2] == "gpu-node03 ⚑"
        assert "straggler: gpu-node03 GPU5: util% " in text_of(app, "#alerts")
        await pilot.press("j")
        await pilot.pause()
        assert isinstance(app.screen, JobScreen)
        ranks = table_rows(app, "#ranks")
        flagged = [r[0] for r in ranks if "⚑" in r[0]]
        assert flagged == ["21 ⚑"]  # rank 21 is local rank 5 on node03, the rank on that GPU
        assert "gpu-node03 GPU5" in text_of(app, "#stragglers")


@pytest.mark.asyncio
async def test_the_job_view_marks_a_rank_that_exited() -> None:
    app, _ = replay_app(36)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("j")
        await pilot.pause()
        ranks = {r[0].rstrip(" ⚑"): r for r in table_rows(app, "#ranks")}
        assert len(ranks) == 32
        assert ranks["31"][9] == "EXITED" and ranks["31"][2] == "gpu-node04"
        assert all(r[9] == "running" for key, r in ranks.items() if key != "31")
        assert "32 ranks in 1 job(s): 10.0.0.1:29500" in text_of(app, "#job-title")


@pytest.mark.asyncio
async def test_question_mark_opens_the_help_and_escape_closes_it() -> None:
    app, _ = replay_app(5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "faults only" in str(app.screen.query_one("#help", Static).render())
        await pilot.press("escape")
        assert isinstance(app.screen, OverviewScreen)


JOB_START = min(json.loads(line)["rx"] for line in JOB.read_text().splitlines()[1:])


def with_progress(tmp_path: Path, *progress: tuple[float, Progress]) -> Path:
    """The synthetic job's recording with the job's progress recorded at the given seconds."""
    lines = JOB.read_text().splitlines()
    header = json.loads(lines[0])
    start = JOB_START
    records = [json.dumps({"k": "progress", "rx": start + at, "p": p.to_record()}) for at, p in progress]
    out = tmp_path / "with-progress.jsonl"
    out.write_text("\n".join([json.dumps(dict(header, v=2)), *lines[1:], *records]) + "\n")
    return out


@pytest.mark.asyncio
async def test_the_jobs_own_progress_is_shown_above_the_nodes_with_the_age_of_its_last_step(tmp_path: Path) -> None:
    recording = with_progress(tmp_path, (2.0, Progress(step=41, loss=0.01234, step_time_s=0.05,
                                                       updated_at=JOB_START + 1.5)))
    source = ReplaySource(recording, speed=0)
    source.seek(source.start_time + 4.5)
    app = MonitorApp(source, Thresholds.for_interval(1.0), refresh_s=3600)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "job: step 41, loss 0.01234, 0.05 s/step, last step 3s ago" in text_of(app, "#summary")


@pytest.mark.asyncio
async def test_a_log_that_cannot_be_read_is_said_beside_the_last_progress_read(tmp_path: Path) -> None:
    """issue 19, M1: a log that cannot be read was shown as `job: no step yet`, with no error."""
    recording = with_progress(tmp_path, (2.0, Progress(step=41, error="cannot read /x/train.log: Permission denied")))
    source = ReplaySource(recording, speed=0)
    source.seek(source.start_time + 5)
    app = MonitorApp(source, Thresholds.for_interval(1.0), refresh_s=3600)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "job: cannot read /x/train.log: Permission denied (last read: step 41)" in text_of(app, "#summary")


@pytest.mark.asyncio
async def test_a_real_recording_shows_a_killed_agent_and_a_frozen_node_go_down_and_come_back() -> None:
    """Recorded by tests/cluster/test_monitor_tmux.py: 3 namespace nodes training with gloo through
    DeepSpeed's launcher; node2's agent killed at +1.7 s, node3 frozen from about +3 s to +12 s."""
    source = ReplaySource(CLUSTER, speed=0)
    app = MonitorApp(source, Thresholds.for_interval(1.0), refresh_s=3600)

    async def at(offset: float) -> dict[str, list[str]]:
        source.seek(source.start_time + offset)
        app.refresh_view(force=True)
        await pilot.pause()
        return {row[0]: row for row in table_rows(app, "#nodes")}

    async with app.run_test(size=SIZE) as pilot:
        rows = await at(1.0)
        assert [(name, row[1], row[13]) for name, row in rows.items()] == [
            ("node1", "up", "1"), ("node2", "up", "1"), ("node3", "up", "1")]
        assert (await at(2.0))["node2"][1] == "DOWN"
        assert "node2: down: the remote command exited -1" in text_of(app, "#alerts")
        assert (await at(3.2))["node2"][1] == "up"
        assert source.state.nodes["node2"].restarts == 1
        assert (await at(7.0))["node3"][1] == "stale"
        rows = await at(11.5)
        assert (rows["node3"][1], rows["node3"][14]) == ("DOWN", "9s")
        assert "no output for 8s (host frozen, overloaded or cut off?)" in text_of(app, "#alerts")
        assert (await at(12.4))["node3"][1] == "up"
        await pilot.press("j")
        await pilot.pause()
        assert [(row[0], row[2]) for row in table_rows(app, "#ranks")] == [("0", "node1"), ("1", "node2"),
                                                                           ("2", "node3")]


@pytest.mark.asyncio
async def test_a_job_whose_log_stops_moving_raises_a_stall_alert_and_t_is_the_stacks_hook(tmp_path: Path) -> None:
    recording = with_progress(tmp_path, (2.0, Progress(step=41, step_time_s=0.05, updated_at=JOB_START + 1.5)))
    source = ReplaySource(recording, speed=0)
    source.seek(source.start_time + 9.5)
    thresholds = dataclasses.replace(Thresholds.for_interval(1.0), job_stall_floor_s=5.0)
    app = MonitorApp(source, thresholds, refresh_s=3600)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "job: job stalled at step 41 for 8 s" in text_of(app, "#alerts").replace("CRIT  ", "")
        assert "job stalled at step 41 for 8 s (stall after 5 s)" in text_of(app, "#summary")
        await pilot.press("t")  # no stacks wired in yet: a notice, the view stays
        assert isinstance(app.screen, OverviewScreen)
    shown = MonitorApp(ReplaySource(recording, speed=0), thresholds, refresh_s=3600,
                       stacks=lambda: Text("ranks 0-31 in all_reduce (train.py:12)"))
    async with shown.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await shown.workers.wait_for_complete()
        await pilot.pause()
        assert "ranks 0-31 in all_reduce" in str(shown.screen.query_one("#stacks", Static).render())
