"""The monitor's live source over any Nodes: samples from every host's stream land in the state, and a host
whose stream ends is shown with what ended it; the monitor asks the Nodes for the sampler, nothing else."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from clusterkit.cluster import HostStream
from clusterkit.cluster.remote.stream import StreamState
from clusterkit.monitor.sources import LiveSource, stream_args
from clusterkit.node.collect.sampler import SAMPLE_MARKER
from tests.fake_nodes import FakeNodes, ScriptedChannel, hosts_named


def sample(seq: int) -> str:
    return SAMPLE_MARKER + json.dumps({"v": 1, "seq": seq, "t": 0})


def over(nodes: FakeNodes) -> LiveSource:
    def streams(on_line: Callable[[str, str, float], None], on_state: Callable[[StreamState], None]
                ) -> list[HostStream]:
        return nodes.agent_streams(stream_args(0.5, 3), on_line, on_state, stale_after_s=1.0, lost_after_s=3.0)

    return LiveSource(nodes.names, {}, streams, 0.5)


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_every_hosts_samples_reach_the_state_and_the_sampler_is_what_was_asked_for() -> None:
    nodes = FakeNodes(hosts_named("node1", "node2"),
                      on_stream=lambda host: ScriptedChannel([sample(1), sample(2)], ends=False))
    source = over(nodes)
    source.start()
    try:
        assert wait_for(lambda: all(source.state.nodes[h].last is not None for h in nodes.names))
    finally:
        source.stop()
    [call] = [c for c in nodes.calls if c.kind == "agent_streams"]
    assert call.detail == ["stream", "--interval", "0.5", "--slow-every", "3"]


def test_a_host_whose_stream_ends_is_shown_with_what_ended_it_while_the_others_stream_on() -> None:
    def script(host: str) -> ScriptedChannel:
        if host == "node2":
            return ScriptedChannel([], why="srun exited 3: no clusterkit agent at /tmp/x on node2")
        return ScriptedChannel([sample(1)], ends=False)

    nodes = FakeNodes(hosts_named("node1", "node2"), on_stream=script)
    source = over(nodes)
    source.start()
    try:
        def node2_said() -> bool:
            link = source.state.nodes["node2"].link
            return link is not None and "no clusterkit agent" in str(link.error)

        assert wait_for(node2_said)
        assert wait_for(lambda: source.state.nodes["node1"].last is not None)
    finally:
        source.stop()
