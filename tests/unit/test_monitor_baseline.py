"""The monitor against the run marked good: a GPU throttling for a reason it did not have then, with a
lower max clock or power limit than then, or clocking under load below what its peers reached then, is
an alert on that node and GPU; a GPU as it was then is none."""

from __future__ import annotations

from typing import Any

from clusterkit.core.saved_run import SavedRun
from clusterkit.monitor.baseline import baseline_from_run
from clusterkit.monitor.state import ClusterState
from clusterkit.ui.tui.thresholds import baseline_alerts
from tests.unit.test_run_diff import h100_node


def gpu(**values: Any) -> dict[str, Any]:
    """The recorded H100 as the sampler reports it: max SM clock 1980 MHz, power limit 700 W."""
    return {"i": 0, "name": "NVIDIA H100 80GB HBM3", "util": 95.0, "sm": 1980, "smmax": 1980, "plimit": 700.0,
            "reasons": [], **values}


def state_with(sample_gpu: dict[str, Any]) -> ClusterState:
    state = ClusterState(["node1", "node2"])
    run = SavedRun("doctor", hosts=["node1", "node2"], facts={h: h100_node(h) for h in ("node1", "node2")})
    state.baseline = baseline_from_run(run, "run good")
    for host in ("node1", "node2"):
        raw = {"v": 1, "seq": 1, "boot": "b", "t": 1.0, "cpu": 10.0, "ncpu": 4, "mem": [100, 40], "net": [5, 6],
               "gpus": [sample_gpu if host == "node2" else gpu()], "gpu_na": None, "xid": [], "xid_na": None,
               "ranks": []}
        state.apply_raw(host, raw, 1.0)
    return state


def alerts(sample_gpu: dict[str, Any]) -> list[tuple[str, int | None, str]]:
    return [(a.host, a.gpu, a.text) for a in baseline_alerts(state_with(sample_gpu))]


def test_a_gpu_as_it_was_in_the_saved_run_raises_nothing() -> None:
    assert alerts(gpu()) == []
    assert alerts(gpu(util=3.0, sm=345, reasons=["gpu_idle"])) == []  # idle clocks down by design


def test_throttling_the_gpu_never_had_is_flagged_on_its_node() -> None:
    assert alerts(gpu(reasons=["hw_slowdown"])) == [
        ("node2", 0, "throttling (hw_slowdown) it did not have in run good")]


def test_a_lower_max_clock_or_power_limit_than_then_is_flagged() -> None:
    assert [text for _, _, text in alerts(gpu(smmax=1755, sm=1755, plimit=500.0))] == [
        "max SM clock 1755 MHz, 1980 in run good", "power limit 500 W, 700 W in run good"]


def test_a_busy_gpu_clocking_below_its_peers_of_last_time_is_flagged() -> None:
    (found,) = alerts(gpu(sm=1200))
    assert found[:2] == ("node2", 0)
    assert found[2] == "SM clock 1200 MHz under load, below 80% of the 1980 MHz its peers could reach in run good"
